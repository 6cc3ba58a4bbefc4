"""Which AI answers, and does it work: the start banner, and `python -m server ai check`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from server.ai.check import check_model
from server.ai.settings import ModelConfig
from tests.fake_openai import API_KEY, FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent


def model(fake: FakeOpenAI, name: str = "fake-model", key: str | None = API_KEY) -> ModelConfig:
    return ModelConfig(base_url=fake.base_url, model=name, api_key=key)


async def test_a_listed_model_with_a_good_key_passes(fake_openai: FakeOpenAI):
    fake_openai.required_key = API_KEY
    result = await check_model(model(fake_openai))
    assert result.ok and "fake-model" in result.message
    assert fake_openai.calls == []  # the models list settled it: no completion was paid for


async def test_a_wrong_key_is_named_and_never_shown(fake_openai: FakeOpenAI):
    fake_openai.required_key = API_KEY
    result = await check_model(model(fake_openai, key="sk-wrong-0123456789-KEY"))
    assert not result.ok and "API key was refused" in result.message and "401" in result.message
    assert "sk-wrong-0123456789-KEY" not in result.message


async def test_a_wrong_model_names_the_models_on_offer(fake_openai: FakeOpenAI):
    fake_openai.models = ["fake-model", "other-model"]
    result = await check_model(model(fake_openai, "gpt-typo"))
    assert not result.ok and "'gpt-typo'" in result.message
    assert "fake-model, other-model" in result.message


async def test_without_a_models_list_one_token_decides(fake_openai: FakeOpenAI):
    fake_openai.models = None
    assert (await check_model(model(fake_openai))).ok
    assert fake_openai.calls[0].body["max_tokens"] == 1 and fake_openai.calls[0].body["stream"] is False


async def test_an_unreachable_url_fails_clearly():
    from tornado.testing import bind_unused_port

    sock, port = bind_unused_port()
    sock.close()
    result = await check_model(ModelConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m"), timeout=5)
    assert not result.ok and "cannot reach" in result.message


async def run(*args: str, env: dict[str, str], until: str | None = None) -> tuple[int | None, str]:
    """The CLI in its own process (the fake upstream runs in this test's loop, so never block it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**{k: v for k, v in os.environ.items()
                                                  if not k.startswith("PARLEY_")}, **env})
    assert process.stdout is not None
    if until is None:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode, output.decode()
    seen = ""
    try:
        async with asyncio.timeout(60):
            while until not in seen:
                line = await process.stdout.readline()
                assert line, seen
                seen += line.decode()
    finally:
        process.terminate()
        await process.wait()
    return None, seen


async def test_ai_check_exits_zero_when_the_model_works_and_one_when_not(fake_openai: FakeOpenAI, tmp_path):
    fake_openai.required_key = API_KEY
    env = {"PARLEY_AI_BASE_URL": fake_openai.base_url, "PARLEY_AI_MODEL": "fake-model",
           "PARLEY_DATA_DIR": str(tmp_path)}
    code, output = await run("ai", "check", env={**env, "PARLEY_AI_API_KEY": API_KEY})
    assert code == 0 and f"AI (global): fake-model at {fake_openai.base_url}" in output and "ok:" in output
    code, output = await run("ai", "check", env={**env, "PARLEY_AI_API_KEY": "sk-bad-000000000000"})
    assert code == 1 and "FAILED: the API key was refused" in output


async def test_the_banner_names_the_model_and_warns_at_start_when_it_fails(fake_openai: FakeOpenAI, tmp_path):
    fake_openai.required_key = API_KEY
    env = {"PARLEY_AI_BASE_URL": fake_openai.base_url, "PARLEY_AI_MODEL": "fake-model",
           "PARLEY_AI_API_KEY": "sk-bad-000000000000", "PARLEY_DATA_DIR": str(tmp_path),
           "PARLEY_PORT": "0"}
    _, output = await run("serve", env=env, until="WARNING")
    assert f"AI:            fake-model at {fake_openai.base_url}" in output
    assert "WARNING: the AI model does not work: the API key was refused" in output
    _, output = await run("serve", env={"PARLEY_DATA_DIR": str(tmp_path), "PARLEY_PORT": "0"},
                          until="Stop with Ctrl-C")
    assert "AI:            offline answerer" in output
