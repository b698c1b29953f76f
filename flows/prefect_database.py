"""The database of the command's private Prefect server in a new Prefect home: a copy of the
migrated one kept for this Prefect version (``common.kept_database``), or migrated here and
then kept. Runs inside the server process, holding the home's start lock, before Prefect's
own start-up (which then finds the database at its newest migration)."""

import asyncio
from pathlib import Path

from common.kept_database import keep, kept_path, start_from_kept


def database_url():
    """The configured Prefect database's URL (a SQLAlchemy ``URL``)."""
    from prefect.settings import get_current_settings
    from sqlalchemy.engine import make_url

    url = get_current_settings().server.database.connection_url
    return make_url(url.get_secret_value() if hasattr(url, "get_secret_value") else str(url))


def new_sqlite_database() -> Path | None:
    """The file of the configured Prefect database if it is SQLite and does not exist yet."""
    url = database_url()
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    database = Path(url.database)
    return None if database.exists() else database


async def _migrate() -> None:
    from prefect.server.database import provide_database_interface

    database = provide_database_interface()
    await database.create_db()
    await (await database.engine()).dispose()


def prepare() -> None:
    """Give a new SQLite Prefect database its tables, from the kept copy if there is one."""
    import prefect

    database = new_sqlite_database()
    if database is None:
        return
    kept = kept_path("prefect", prefect.__version__)
    if not start_from_kept(database, kept):
        asyncio.run(_migrate())
        keep(database, kept)
