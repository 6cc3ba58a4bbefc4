"""`scripts/server operator add|list|passwd|disable` against a running server's data directory."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.dashboard import browser, login_form
from tests.harness import Parley

ROOT = Path(__file__).resolve().parent.parent


async def cli(data_dir: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, "--data-dir", str(data_dir), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PARLEY_LOG_LEVEL": "WARNING"})
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_operator_accounts_from_the_command_line(parley: Parley):
    data_dir = parley.services.config.data_dir
    code, out, err = await cli(data_dir, "operator", "add", "--email", "Ana@Example.com", "--name", "Ana",
                               "--role", "agent", "--site", parley.site_key, "--password-stdin",
                               stdin="first password 1\n")
    assert code == 0, err
    assert "created agent ana@example.com" in out
    code, out, _ = await cli(data_dir, "operator", "list", "--json")
    [listed] = json.loads(out)
    assert listed["email"] == "ana@example.com" and listed["sites"] == [parley.site_key]
    code, _, err = await cli(data_dir, "operator", "add", "--email", "ana@example.com", "--name", "A",
                             "--role", "admin", "--password-stdin", stdin="another password\n")
    assert code == 2 and "already exists" in err
    code, _, err = await cli(data_dir, "operator", "add", "--email", "b@example.com", "--name", "B",
                             "--role", "admin", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 10" in err

    async with browser(parley) as client:
        assert (await login_form(client, "ana@example.com", "first password 1")).status_code == 302
        assert (await client.get("/dashboard/api/inbox")).status_code == 200
        code, out, err = await cli(data_dir, "operator", "passwd", "--email", "ana@example.com",
                                   "--password-stdin", stdin="second password 2\n")
        assert code == 0, err
        assert (await client.get("/dashboard/api/inbox")).status_code == 401  # the session ended
        assert (await login_form(client, "ana@example.com", "second password 2")).status_code == 302
        code, out, err = await cli(data_dir, "operator", "disable", "--email", "ana@example.com")
        assert code == 0 and "disabled" in out, err
        assert (await client.get("/dashboard/api/inbox")).status_code == 401
        assert (await login_form(client, "ana@example.com", "second password 2")).status_code == 401
    code, out, err = await cli(data_dir, "canned", "add", "--site", parley.site_key, "--shortcut", "refund",
                               "Refunds", "take", "5", "days.")
    assert code == 0, err
    assert [(c.shortcut, c.content) for c in await parley.services.store.list_canned_replies(
        parley.site.id)] == [("refund", "Refunds take 5 days.")]
    actions = [e.action for e in await parley.services.audit.entries()]
    assert {"operator_add", "password_change", "operator.disable"} <= set(actions)
