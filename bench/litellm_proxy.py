"""The LiteLLM proxy (`litellm[proxy]`), installed by the benchmark into its own venv
(.bench-venv/, never Parley's requirements) and started offline: the local model cost map, a
master key, no database. It relays the same fake upstream as Parley does.

The version is pinned. LiteLLM's PyPI releases 1.82.7, 1.82.8 and 1.107.0 were compromised and
withdrawn; the pin is an earlier release that was not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

LITELLM = "litellm[proxy]==1.81.13"
VENV = ROOT / ".bench-venv"
MASTER_KEY = "sk-bench-0123456789"
STAMP = VENV / ".installed"


def ensure_litellm() -> tuple[Path | None, str]:
    """The `litellm` command, installing it on first use; (None, why) when that is not possible."""
    command = VENV / "bin" / "litellm"
    if command.exists() and STAMP.exists() and STAMP.read_text().strip() == LITELLM:
        return command, "already installed"
    print(f"stream: installing {LITELLM} into {VENV} (once; a few minutes) ...", flush=True)
    try:
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", LITELLM],
                       check=True, timeout=900, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"could not install {LITELLM}: {exc} {detail.decode(errors='replace')[-500:]}"
    STAMP.write_text(LITELLM + "\n")
    return command, "installed"


def litellm_command(command: Path, upstream_base: str, port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: fake\n"
        "    litellm_params:\n"
        "      model: openai/fake\n"
        f"      api_base: {upstream_base}\n"
        "      api_key: sk-fake-upstream\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=MASTER_KEY, LITELLM_LOG="ERROR",
               NO_DOCS="True", DISABLE_ADMIN_UI="True", PYTHONUNBUFFERED="1")
    args = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]
    return args, env


if __name__ == "__main__":  # install only: scripts/bench does this itself when needed
    path, why = ensure_litellm()
    print(path or why)
