"""How an error reaches a person: one line, and the kind of error that was their input."""


class InputError(ValueError):
    """Input refused before any run started; the message names the problem and the way out."""


def one_line(error: BaseException, typed: bool = False) -> str:
    """The error's message on one line (its type's name when it has none), with
    ``typed``: ``Type: message``, for errors from code the reader did not write."""
    message = " ".join(str(error).split())
    if typed:
        return f"{type(error).__name__}: {message}"
    return message or type(error).__name__
