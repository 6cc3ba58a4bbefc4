"""Checks of the data directory before anything opens it, so a mistake reads as one sentence."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DATABASE_NAME = "parley.sqlite3"
HOW_TO_POINT = "point --data-dir (or PARLEY_DATA_DIR) at the server's data directory"


class DataDirProblem(Exception):
    """Something about the data directory stops Parley; the message says what and where."""


def check_data_dir(data_dir: Path, *, create: bool) -> None:
    """The directory (and its database) must be writable. With `create`, a missing directory is
    made; without, a missing database is an error and nothing is created (a command pointed at the
    wrong place must not leave an empty database behind)."""
    where = data_dir.absolute()
    database = where / DATABASE_NAME
    if not create and not database.exists():
        raise DataDirProblem(f"there is no Parley database in {where} ({DATABASE_NAME} is missing); "
                             f"{HOW_TO_POINT}, or, for servers on MongoDB, set PARLEY_STORE (or "
                             "--store) as they have it")
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirProblem(f"cannot create the data directory {where}: {exc.strerror or exc}") from None
    try:
        # A real write, not os.access(): that one says yes to root on a read-only mount.
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise DataDirProblem(f"the data directory {where} is not writable ({exc.strerror or exc}); "
                             "Parley keeps its database and uploads there") from None
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        raise DataDirProblem(f"the database {database} is not readable and writable by this user")
