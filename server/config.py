"""Configuration: command-line flags beat PARLEY_* environment variables, which beat defaults."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from server.proxies import LOOPBACK, Network, parse_networks


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    public_url: str | None = None
    behind_proxy: bool = False
    trusted_proxies: str = ""
    reuse_port: bool = False
    backlog: int = 8192
    header_timeout: float = 10.0
    max_connections_per_address: int = 1000
    sse_keepalive: float = 15.0
    shutdown_grace: float = 10.0
    offline_chunk_delay: float = 0.02
    event_poll_interval: float = 0.1
    demo: bool = False
    log_level: str = "INFO"
    # The AI model. With no base URL the offline answerer answers; see server/ai/settings.py.
    ai_base_url: str | None = None
    ai_api_key: str | None = field(default=None, repr=False)  # never in a repr, so never in a log
    ai_model: str | None = None
    ai_temperature: float | None = None
    ai_max_tokens: int | None = None
    ai_system_prompt: str | None = None
    ai_connect_timeout: float = 5.0
    ai_first_token_timeout: float = 30.0
    ai_idle_timeout: float = 30.0
    ai_attempts: int = 3
    ai_backoff: float = 0.5
    ai_deadline: float = 20.0
    ai_max_answer_seconds: float = 120.0
    kb_allow_private: bool = False
    # Backends. The store URI may carry a password: never in a repr, so never in a log.
    store: str = field(default="sqlite", repr=False)
    blobs: str = "local"
    s3_endpoint_url: str | None = None
    s3_public_url: str | None = None
    cookie_secret: str | None = field(default=None, repr=False)
    session_idle_minutes: float = 720.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append("port is 0 to 65535")
        if self.backlog < 1:
            problems.append("backlog is at least 1")
        if self.max_connections_per_address < 0:
            problems.append("max_connections_per_address is 0 (no cap) or more")
        if self.header_timeout <= 0:
            problems.append("header_timeout is a positive number of seconds")
        if self.sse_keepalive < 0.01:
            problems.append("sse_keepalive is a positive number of seconds")
        if self.event_poll_interval < 0.01:
            problems.append("event_poll_interval is at least 0.01 s")
        if self.ai_deadline <= 0:
            problems.append("ai_deadline is a positive number of seconds")
        if self.ai_max_answer_seconds <= 0:
            problems.append("ai_max_answer_seconds is a positive number of seconds")
        if self.session_idle_minutes <= 0:
            problems.append("session_idle_minutes is a positive number")
        if self.shutdown_grace < 0:
            problems.append("shutdown_grace is not negative")
        if self.offline_chunk_delay < 0:
            problems.append("offline_chunk_delay is not negative")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            problems.append(f"trusted_proxies: {exc}")
        if self.store != "sqlite" and not self.store.startswith(("mongodb://", "mongodb+srv://")):
            problems.append("store is 'sqlite' or a mongodb:// or mongodb+srv:// URI")
        if self.blobs != "local" and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
                                                  self.blobs):
            problems.append("blobs is 'local' or s3://bucket/prefix")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def proxy_networks(self) -> tuple[Network, ...]:
        """Peers whose forwarding headers count; --behind-proxy is shorthand for loopback."""
        loopback = parse_networks(LOOPBACK) if self.behind_proxy else ()
        return loopback + parse_networks(self.trusted_proxies)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "parley.sqlite3"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"


# Each option: (flag, type, help). The environment variable is PARLEY_ + the upper-cased name.
OPTIONS: dict[str, tuple[type, str]] = {
    "host": (str, "address to listen on (default 127.0.0.1)"),
    "port": (int, "port to listen on (default 8080)"),
    "data_dir": (Path, "directory for the SQLite database and uploads (default ./data)"),
    "public_url": (str, "absolute base URL of this server as browsers see it, e.g. "
                        "https://chat.example.com (default: taken from each request)"),
    "behind_proxy": (bool, "a reverse proxy on this machine: trust forwarding headers from loopback "
                           "(same as adding 127.0.0.1 and ::1 to --trusted-proxies)"),
    "trusted_proxies": (str, "comma-separated addresses or CIDR networks of reverse proxies whose "
                             "X-Forwarded-For / X-Forwarded-Proto count (default: none)"),
    "reuse_port": (bool, "let several processes listen on one port (SO_REUSEPORT)"),
    "backlog": (int, "listen backlog; thousands of widgets may reconnect at once (default 8192)"),
    "header_timeout": (float, "seconds a client has to send its request headers, and the longest "
                              "an idle keep-alive connection stays open (default 10)"),
    "max_connections_per_address": (int, "connections one client address may hold open; more are "
                                         "answered 429 at once (trusted proxies are not capped; "
                                         "0: no cap) (default 1000)"),
    "sse_keepalive": (float, "seconds between ': keepalive' comments on a quiet stream (default 15)"),
    "shutdown_grace": (float, "on SIGTERM, seconds answers in progress get to finish before they are "
                              "cut (the widget then asks another process) (default 10)"),
    "offline_chunk_delay": (float, "pause between chunks of the offline answerer, seconds (default 0.02)"),
    "event_poll_interval": (float, "how often to read other processes' events while someone waits, "
                                   "at the latest: on SQLite a writing process rings the others at "
                                   "once (default 0.1 s)"),
    "demo": (bool, "create the demo site and its knowledge base on start if missing"),
    "log_level": (str, "DEBUG, INFO, WARNING or ERROR (default INFO)"),
    "ai_base_url": (str, "base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1; "
                         "setting it replaces the offline answerer"),
    "ai_api_key": (str, "API key for that endpoint (prefer the environment variable: flags show "
                        "in the process list)"),
    "ai_model": (str, "model name, e.g. gpt-4o-mini or llama3.1"),
    "ai_temperature": (float, "sampling temperature (default: the endpoint's)"),
    "ai_max_tokens": (int, "most tokens in one answer (default: the endpoint's)"),
    "ai_system_prompt": (str, "instructions for the model; {site_name} is replaced "
                              "(default: answer from the site's help pages, admit not knowing)"),
    "ai_connect_timeout": (float, "seconds to connect to the model (default 5)"),
    "ai_first_token_timeout": (float, "seconds to wait for the first token (default 30)"),
    "ai_idle_timeout": (float, "seconds to wait between tokens (default 30)"),
    "ai_attempts": (int, "tries before the first token, with backoff (default 3)"),
    "ai_backoff": (float, "first retry delay in seconds; doubles with jitter (default 0.5)"),
    "ai_deadline": (float, "seconds a visitor waits at most for the first token, across all tries; "
                           "then an error and an offer of a person (default 20)"),
    "ai_max_answer_seconds": (float, "seconds one answer may stream at most; a model that goes on "
                                     "longer is cut, and the visitor offered a person (default 120)"),
    "kb_allow_private": (bool, "let knowledge URLs point at loopback or private addresses"),
    "store": (str, "where conversations live: 'sqlite' (a file in the data directory, the default) "
                   "or a MongoDB URI, mongodb://host/dbname (database 'parley' when the path is empty)"),
    "blobs": (str, "where uploaded images live: 'local' (the data directory, the default) or "
                   "s3://bucket/prefix (credentials and region from the AWS_* variables)"),
    "s3_endpoint_url": (str, "endpoint of an S3-compatible server (MinIO, R2 ...); default AWS"),
    "s3_public_url": (str, "base URL where browsers fetch the bucket's objects (a CDN); default: "
                           "/uploads/<key> on this server redirects to a short-lived signed URL"),
    "cookie_secret": (str, "secret that signs dashboard cookies; the same for every process "
                           "(default: made on first start, kept in DATA_DIR/cookie_secret)"),
    "session_idle_minutes": (float, "sign a dashboard session out after this long without use "
                                    "(default 720)"),
}

def browser_host(host: str) -> str:
    """The address a browser on this machine uses for a server listening on `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


TRUE_WORDS = {"1", "true", "yes", "on"}


def env_name(option: str) -> str:
    return "PARLEY_" + option.upper()


def add_config_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Flags for `names` (all by default); unset flags stay absent so the environment can apply."""
    for name in names or tuple(OPTIONS):
        kind, help_text = OPTIONS[name]
        flag = "--" + name.replace("_", "-")
        help_text = f"{help_text} [env {env_name(name)}]"
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                                metavar=name.upper(), help=help_text)


def load_config(args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    args = args or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in fields(Config):
        name = option.name
        if name in args:
            values[name] = args[name]
            continue
        raw = environ.get(env_name(name))
        if raw is None or raw == "":
            continue
        kind = OPTIONS[name][0]
        try:
            values[name] = raw.strip().lower() in TRUE_WORDS if kind is bool else kind(raw)
        except ValueError:
            raise SystemExit(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from None
    try:
        return Config(**values)
    except ValueError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
