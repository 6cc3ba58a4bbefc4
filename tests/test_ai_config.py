"""AI configuration: PARLEY_AI_* globally, `site ai-config` per site, keys never shown; the usage column."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from server.ai.settings import global_model_config
from server.config import load_config
from server.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-proj-abcdefghijklmnop-TOPSECRET"


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run([sys.executable, "-m", "server", *args, "--data-dir", str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)


def test_environment_configures_the_global_model():
    config = load_config({}, {"PARLEY_AI_BASE_URL": "https://api.example.com/v1/", "PARLEY_AI_API_KEY": KEY,
                              "PARLEY_AI_MODEL": "gpt-x", "PARLEY_AI_TEMPERATURE": "0.3",
                              "PARLEY_AI_MAX_TOKENS": "300", "PARLEY_AI_FIRST_TOKEN_TIMEOUT": "9"})
    model = global_model_config(config)
    assert model is not None
    assert (model.base_url, model.model, model.api_key) == ("https://api.example.com/v1", "gpt-x", KEY)
    assert (model.temperature, model.max_tokens, model.first_token_timeout) == (0.3, 300, 9.0)
    assert KEY not in repr(config) and KEY not in repr(model)
    assert global_model_config(load_config({}, {})) is None  # nothing set: the offline answerer


def test_site_ai_config_sets_shows_masked_and_clears(tmp_path: Path):
    site_key = json.loads(cli("site", "create", "--name", "Shop", "--json", data_dir=tmp_path).stdout)["site_key"]
    changed = cli("site", "ai-config", "--site", site_key, "--base-url", "https://llm.example.com/v1/",
                  "--api-key", KEY, "--model", "llama3.1", "--temperature", "0.2", "--max-tokens", "400",
                  "--redact-pii", "--handoff-when-unsure", "--handoff-phrase", "echte Person",
                  "--replies-per-session-hour", "5", "--replies-per-site-day", "-1", data_dir=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert KEY not in changed.stdout + changed.stderr
    shown = cli("site", "ai-config", "--site", site_key, "--show", "--json", data_dir=tmp_path)
    settings = json.loads(shown.stdout)
    assert KEY not in shown.stdout and settings["api_key"] == "…CRET"
    assert settings["base_url"] == "https://llm.example.com/v1" and settings["model"] == "llama3.1"
    assert settings["redact_pii"] is True and settings["handoff_when_unsure"] is True
    assert settings["handoff_phrases"] == ["echte Person"]
    assert settings["caps"] == {"replies_per_session_hour": 5, "replies_per_site_day": None}
    plain = cli("site", "ai-config", "--site", site_key, data_dir=tmp_path)
    assert "api_key" in plain.stdout and KEY not in plain.stdout
    unset = cli("site", "ai-config", "--site", site_key, "--api-key", "", "--no-redact-pii", "--show",
                "--json", data_dir=tmp_path)
    settings = json.loads(unset.stdout.split("\n", 1)[1])
    assert "api_key" not in settings and settings["redact_pii"] is False
    cleared = cli("site", "ai-config", "--site", site_key, "--clear", "--show", data_dir=tmp_path)
    assert "uses the global ones" in cleared.stdout
    assert cli("site", "ai-config", "--help", data_dir=tmp_path).returncode == 0


def test_site_ai_config_refuses_bad_values(tmp_path: Path):
    site_key = json.loads(cli("site", "create", "--name", "Shop", "--json", data_dir=tmp_path).stdout)["site_key"]
    bad_url = cli("site", "ai-config", "--site", site_key, "--base-url", "file:///etc", data_dir=tmp_path)
    assert bad_url.returncode == 2 and "http(s) URL" in bad_url.stderr
    bad_temperature = cli("site", "ai-config", "--site", site_key, "--temperature", "7", data_dir=tmp_path)
    assert bad_temperature.returncode == 2 and "between 0 and 2" in bad_temperature.stderr


async def test_an_older_database_gets_the_usage_and_relevance_columns(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id INTEGER NOT NULL,"
               " role TEXT NOT NULL, content TEXT NOT NULL, message_id TEXT, reply_to TEXT, image_key TEXT,"
               " operator_name TEXT, sources TEXT NOT NULL DEFAULT '[]',"
               " status TEXT NOT NULL DEFAULT 'complete', created_at TEXT NOT NULL)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        site = await store.create_site("sk_" + "a" * 30, "Old", [], {})
        conversation = await store.ensure_conversation(site.id, "sess_" + "b" * 20, {})
        message = await store.add_message(conversation.id, "ai", "hi", usage={"total_tokens": 7},
                                          relevance=0.25)
        assert message.usage == {"total_tokens": 7} and message.relevance == 0.25
    finally:
        await store.close()


async def test_no_public_endpoint_returns_a_site_key_for_the_model(parley):
    site = parley.site
    await parley.services.sites.update_settings(
        site.id, {**site.settings, "ai": {"api_key": KEY, "redact_pii": True}})
    events = await parley.ask("sess_keycheck000000001", "Do you ship to Canada?")
    assert events[-1]["type"] == "done"
    bodies = [
        (await parley.get("config", site_key=parley.site_key)).text,
        (await parley.get("history", **parley.ids("sess_keycheck000000001"))).text,
        json.dumps(events),
    ]
    assert all(KEY not in body for body in bodies)
