"""How an error is told in one line, and the kind of error that is a person's input."""


class InputError(ValueError):
    """Input refused before any run started; the message names the problem and the way out."""


def one_line(error: BaseException, typed: bool = True) -> str:
    """``Type: message`` on one line; without ``typed`` the message alone (the type's name
    when it has none), for errors whose message already says what went wrong."""
    message = " ".join(str(error).split())
    if typed:
        return f"{type(error).__name__}: {message}"
    return message or type(error).__name__
