async def test_stream_answers_from_the_knowledge_base(parley):
    events = await parley.ask("sess_aaaaaaaaaaaaaaaaaaaa", "Do you ship to Canada?")
    assert [e["type"] for e in events][-1] == "done"
    text = "".join(e["content"] for e in events if e["type"] == "chunk")
    assert "Canada" in text
