"""The schedules' cron defaults and their check, without importing Prefect: ``tfnn schedule
--help`` and refusing a bad cron must not pay for it."""

import os

from croniter import croniter  # the library Prefect's CronSchedule vendors

TRAIN_CRON_ENV, RETRAIN_CRON_ENV = "TFNN_TRAIN_CRON", "TFNN_RETRAIN_CRON"
# Nightly training at 02:00 and a weekly retrain on Sunday at 03:00 (UTC).
DEFAULT_TRAIN_CRON, DEFAULT_RETRAIN_CRON = "0 2 * * *", "0 3 * * 0"


def default_crons() -> tuple[str, str]:
    """``(train, retrain)`` cron strings from ``$TFNN_TRAIN_CRON``/``$TFNN_RETRAIN_CRON``."""
    return (
        os.environ.get(TRAIN_CRON_ENV) or DEFAULT_TRAIN_CRON,
        os.environ.get(RETRAIN_CRON_ENV) or DEFAULT_RETRAIN_CRON,
    )


def is_valid_cron(text: str) -> bool:
    """Whether Prefect's ``CronSchedule`` accepts ``text``: croniter's rules, no R or H fields."""
    fields = text.split()
    return croniter.is_valid(text) and not any(f.casefold() in ("r", "h") for f in fields)
