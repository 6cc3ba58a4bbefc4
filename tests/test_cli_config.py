"""The command line and configuration, as an operator types them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import build_parser
from server.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_site_create_and_list_as_json(tmp_path):
    created = cli("site", "create", "--name", "Acme", "--origin", "https://Acme.example/shop",
                  "--json", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    site = json.loads(created.stdout)
    assert site["name"] == "Acme" and site["site_key"].startswith("sk_") and len(site["site_key"]) >= 27
    assert site["allowed_origins"] == ["https://acme.example"]
    listed = cli("site", "list", "--json", env={"PARLEY_DATA_DIR": str(tmp_path)})
    assert [s["site_key"] for s in json.loads(listed.stdout)] == [site["site_key"]]
    plain = cli("site", "list", "--data-dir", str(tmp_path))
    assert site["site_key"] in plain.stdout and "Acme" in plain.stdout


def test_site_create_prints_the_embed_line_for_the_port_given(tmp_path):
    created = cli("site", "create", "--name", "Acme", "--port", "8811", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    assert 'src="http://127.0.0.1:8811/widget/widget.js"' in created.stdout
    public = cli("site", "create", "--name", "Acme", "--public-url", "https://chat.acme.example/",
                 "--data-dir", str(tmp_path))
    assert 'src="https://chat.acme.example/widget/widget.js"' in public.stdout


def test_cli_errors_are_one_clear_line(tmp_path):
    bad_origin = cli("site", "create", "--name", "X", "--origin", "javascript:alert(1)", "--data-dir", str(tmp_path))
    assert bad_origin.returncode == 2 and "http(s) origin" in bad_origin.stderr
    unknown = cli("operator", "say", "--site", "sk_" + "q" * 30, "--session", "sess_" + "a" * 20, "hi",
                  "--data-dir", str(tmp_path))
    assert unknown.returncode == 2 and "No site has this site_key" in unknown.stderr
    bad_session = cli("operator", "takeover", "--site", "sk_x", "--session", "nope")
    assert bad_session.returncode == 2 and "sess_" in bad_session.stderr
    # A mistyped session is refused, not made into a conversation nobody is in.
    site = json.loads(cli("site", "create", "--name", "Y", "--json", "--data-dir", str(tmp_path)).stdout)
    for command in (["operator", "say", "hi"], ["operator", "takeover"], ["proactive", "send", "hi"]):
        typo = cli(*command[:2], "--site", site["site_key"], "--session", "sess_" + "b" * 20, *command[2:],
                   "--data-dir", str(tmp_path))
        assert typo.returncode == 2 and "no visitor with that session id" in typo.stderr, command


def test_kb_add_and_list(tmp_path):
    site = json.loads(cli("site", "create", "--name", "Docs", "--json", "--data-dir", str(tmp_path)).stdout)
    doc = tmp_path / "faq.md"
    doc.write_text("# Opening hours\n\nWe open at nine.", encoding="utf-8")
    added = cli("kb", "add", "--site", site["site_key"], str(doc), "--data-dir", str(tmp_path))
    assert added.returncode == 0, added.stderr
    listed = json.loads(cli("kb", "list", "--site", site["site_key"], "--json", "--data-dir", str(tmp_path)).stdout)
    assert [d["title"] for d in listed] == ["Opening hours"]
    ftp = cli("kb", "add", "--site", site["site_key"], "ftp://example.com/faq.txt", "--data-dir", str(tmp_path))
    assert ftp.returncode == 1
    assert "skipped ftp://example.com/faq.txt: only http(s) addresses and files on this machine" in ftp.stderr


def all_parsers(parser):
    yield parser
    for action in parser._actions:
        for sub in getattr(action, "choices", None).values() if isinstance(getattr(action, "choices", None), dict) else ():
            yield from all_parsers(sub)


def test_every_command_and_option_has_help():
    for parser in all_parsers(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{parser.prog} {action.option_strings} has no help"
    result = cli("--help")
    assert result.returncode == 0 and "--data-dir" in result.stdout and "PARLEY_PORT" in result.stdout


def test_flag_beats_environment_beats_default():
    assert load_config({}, {}).port == 8080
    assert load_config({}, {"PARLEY_PORT": "9001"}).port == 9001
    assert load_config({"port": 9002}, {"PARLEY_PORT": "9001"}).port == 9002
    config = load_config({}, {"PARLEY_HOST": "0.0.0.0", "PARLEY_DATA_DIR": "/srv/parley", "PARLEY_DEMO": "yes"})
    assert (config.host, str(config.data_dir), config.demo) == ("0.0.0.0", "/srv/parley", True)
    with pytest.raises(SystemExit, match="PARLEY_PORT"):
        load_config({}, {"PARLEY_PORT": "eighty"})


def test_proactive_rules_from_the_cli(tmp_path):
    site = json.loads(cli("site", "create", "--name", "Rules", "--json", "--data-dir", str(tmp_path)).stdout)
    added = cli("proactive", "rule", "add", "--site", site["site_key"], "--path", "/pricing", "--after", "20",
                "Questions", "about", "plans?", "--data-dir", str(tmp_path))
    assert added.returncode == 0, added.stderr
    rules = json.loads(cli("proactive", "rule", "list", "--site", site["site_key"], "--json",
                           "--data-dir", str(tmp_path)).stdout)
    assert [(r["path"], r["delay_seconds"], r["text"]) for r in rules] == [("/pricing", 20.0, "Questions about plans?")]
    removed = cli("proactive", "rule", "remove", "--site", site["site_key"], rules[0]["id"], "--data-dir", str(tmp_path))
    assert removed.returncode == 0
    bad = cli("proactive", "rule", "add", "--site", site["site_key"], "--path", "pricing", "x", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "starts with '/'" in bad.stderr


def test_nonsense_configuration_is_refused_at_start():
    for env in ({"PARLEY_PORT": "99999"}, {"PARLEY_SSE_KEEPALIVE": "0"}, {"PARLEY_EVENT_POLL_INTERVAL": "0"},
                {"PARLEY_BACKLOG": "-5"}):
        with pytest.raises(SystemExit, match="invalid configuration"):
            load_config({}, env)


def test_blocks_take_real_addresses(tmp_path):
    site = json.loads(cli("site", "create", "--name", "B", "--json", "--data-dir", str(tmp_path)).stdout)
    bad = cli("block", "--site", site["site_key"], "--ip", "999.1.1.1", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "not an IP address" in bad.stderr
    good = cli("block", "--site", site["site_key"], "--ip", "2001:DB8::1", "--data-dir", str(tmp_path))
    assert good.returncode == 0 and "2001:db8::1" in good.stdout.lower()


def test_a_wrong_option_is_reported_by_the_command_that_was_typed():
    result = cli("proactive", "rule", "add", "--site", "sk_x", "--path", "/p", "--delay", "3", "hi")
    assert result.returncode == 2
    assert "python -m server proactive rule add: error: unrecognized arguments: --delay" in result.stderr


def test_a_port_in_use_is_one_clear_line_not_a_traceback(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        result = cli("--port", str(taken.getsockname()[1]), "--host", "127.0.0.1",
                     "--data-dir", str(tmp_path))
    finally:
        taken.close()
    assert result.returncode == 2
    assert "error: cannot listen on 127.0.0.1:" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_retention_is_set_from_the_cli(tmp_path):
    site = json.loads(cli("site", "create", "--name", "R", "--json", "--data-dir", str(tmp_path)).stdout)
    common = ("site", "settings", "--site", site["site_key"], "--data-dir", str(tmp_path))
    assert "retention_days: null" in cli(*common).stdout
    kept = cli(*common, "--retention-days", "30")
    assert kept.returncode == 0 and "retention_days: 30" in kept.stdout and "for 30 days" in kept.stdout
    assert "retention_days: 30" in cli(*common).stdout
    assert "retention_days: null" in cli(*common, "--retention-days", "0").stdout
    refused = cli(*common, "--retention-days", "-1")
    assert refused.returncode == 2 and "Retention (days) is between 0 (keep) and 36500" in refused.stderr
