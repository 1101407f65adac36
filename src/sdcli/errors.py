"""The two kinds of error a user can meet; the command line shows either as one line and exits with its code."""


class SdcliError(Exception):
    """A problem the user can act on. The message names the problem and the fix, in one line."""

    exit_code = 1


class UsageError(SdcliError):
    """The command asks for something that cannot be done as asked: change the command (exit code 2)."""

    exit_code = 2


class Failure(SdcliError):
    """The command is fine but the run failed: a model that will not load, a folder that cannot be written (exit 1)."""

    exit_code = 1


def reason(error: BaseException) -> str:
    """The first line of an exception's message (or its type's name), to quote inside a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
