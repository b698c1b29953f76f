"""The error the data readers raise."""


class DataError(ValueError):
    """A dataset is missing, unreadable or malformed; the message says which and why."""


class MissingSourceError(DataError):
    """The data source itself is absent or cannot be fetched: another one may do."""
