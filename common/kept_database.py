"""Migrated, empty SQLite databases kept per library version, for new stores to start from.

Prefect and MLflow create a new SQLite database by running every Alembic migration since
their first release: about 13 s of CPU for a Prefect server's, 2 s for an MLflow store's on
two cores, paid again in every new Prefect home and every new working directory (each test,
CI job and container has its own). The first new database of a version is migrated as before
and a copy kept in ``$TFNN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tfnn``, ``~/.cache/tfnn``);
later new databases start as a copy, which their library then finds at its newest migration.
A kept file that is not a whole SQLite database at some migration is not copied (and is
replaced by the next new database). Copies are written whole or not at all.
"""

import os
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path

CACHE_ENV = "TFNN_CACHE_DIR"
# A migrated empty database is about 1 MB; anything much larger is not one.
_MAX_BYTES = 64 * 1024 * 1024


def kept_path(library: str, version: str) -> Path:
    """Where the migrated empty database of ``library`` ``version`` is kept."""
    if os.environ.get(CACHE_ENV):
        cache = Path(os.environ[CACHE_ENV])
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfnn"
    return cache / f"{library}-{version}.db"


def is_migrated(path: Path) -> bool:
    """Whether ``path`` is a whole SQLite database (of a bounded size) that records its
    Alembic migration."""
    if not path.is_file() or path.stat().st_size > _MAX_BYTES:
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            if connection.execute("PRAGMA quick_check").fetchone() != ("ok",):
                return False
            version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            return version is not None
    except sqlite3.Error:
        return False


def copy_database(
    source: Path, target: Path, prepare: Callable[[sqlite3.Connection], None] | None = None
) -> None:
    """SQLite's online backup of ``source`` into ``target`` (then ``prepare`` on the copy),
    in rollback-journal mode: Prefect's WAL mode would make every reader write files beside
    a kept copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        with (
            closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as reading,
            closing(sqlite3.connect(partial)) as writing,
        ):
            reading.backup(writing)
            if prepare is not None:
                with writing:
                    prepare(writing)
            writing.execute("PRAGMA journal_mode=DELETE")
        os.replace(partial, target)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(partial)


def start_from_kept(database: Path, kept: Path) -> bool:
    """Make the new ``database`` a copy of ``kept`` if that is a migrated database; whether
    it did (on any failure ``database`` is left absent, for its library to create)."""
    with suppress(OSError, sqlite3.Error):
        if is_migrated(kept):
            copy_database(kept, database)
            return True
    return False


def keep(
    database: Path, kept: Path, prepare: Callable[[sqlite3.Connection], None] | None = None
) -> None:
    """Keep a copy of the freshly migrated ``database`` (``prepare``d) as ``kept``; a
    failure only means the next new database is migrated too."""
    with suppress(OSError, sqlite3.Error):
        copy_database(database, kept, prepare)
