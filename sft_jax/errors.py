"""The one exception type for bad user input.

Anything a user can get wrong (a malformed data file, a missing field, an unknown config
key, a model directory without weights) raises `UserInputError` with a one-line message
that names the problem and where it is (file:line, config key, path). The CLI prints the
message and exits with status 2, no traceback. Bugs stay ordinary exceptions.
"""


class UserInputError(Exception):
    """Bad input from the user; `str(err)` is the whole one-line message."""

    def __init__(self, message: str):
        if "\n" in message:
            message = " ".join(message.split())
        super().__init__(message)
