"""A migrated, empty Prefect database for the command's private server, kept per Prefect
version so that a new Prefect home starts from a copy instead of migrating its own.

Prefect creates a server's SQLite database by running every Alembic migration since its
first release: about 13 s of CPU on two cores, paid by the first run in each new
``PREFECT_HOME`` (each test, CI job and container with a home of its own). The first private
server of a Prefect version migrates its new database as before and then keeps a copy in
``$TFNN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tfnn``, ``~/.cache/tfnn``); later new homes
start from that copy, and Prefect's own start-up finds it at the newest migration. Only a
SQLite database that does not exist yet is touched; a copy that is not a whole SQLite
database at some migration is ignored. Runs inside the server process, holding the home's
start lock.
"""

import asyncio
import os
import sqlite3
import tempfile
from contextlib import closing, suppress
from pathlib import Path

CACHE_ENV = "TFNN_CACHE_DIR"
# A migrated empty database is about 1 MB; anything much larger is not one.
_MAX_TEMPLATE_BYTES = 64 * 1024 * 1024


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tfnn"


def template_path() -> Path:
    import prefect

    return cache_dir() / f"prefect-{prefect.__version__}.db"


def new_sqlite_database() -> Path | None:
    """The file of the configured Prefect database if it is SQLite and does not exist yet."""
    from prefect.settings import get_current_settings
    from sqlalchemy.engine import make_url

    url = get_current_settings().server.database.connection_url
    url = make_url(url.get_secret_value() if hasattr(url, "get_secret_value") else str(url))
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    database = Path(url.database)
    return None if database.exists() else database


def _is_migrated_database(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size > _MAX_TEMPLATE_BYTES:
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            if connection.execute("PRAGMA quick_check").fetchone() != ("ok",):
                return False
            version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            return version is not None
    except sqlite3.Error:
        return False


def _copy(source: Path, target: Path) -> None:
    """SQLite's online backup of ``source`` into ``target``, written whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        with (
            closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as reading,
            closing(sqlite3.connect(partial)) as writing,
        ):
            reading.backup(writing)
            # Prefect's databases are in WAL mode, whose readers write files beside them.
            writing.execute("PRAGMA journal_mode=DELETE")
        os.replace(partial, target)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(partial)


async def _migrate() -> None:
    from prefect.server.database import provide_database_interface

    database = provide_database_interface()
    await database.create_db()
    await (await database.engine()).dispose()


def prepare() -> None:
    """Give a new SQLite Prefect database its tables: a copy of the kept one, or migrated
    here and then kept. Any failure leaves the work to Prefect's own start-up."""
    database = new_sqlite_database()
    if database is None:
        return
    template = template_path()
    with suppress(OSError, sqlite3.Error):
        if _is_migrated_database(template):
            _copy(template, database)
            return
    asyncio.run(_migrate())
    with suppress(OSError, sqlite3.Error):
        _copy(database, template)
