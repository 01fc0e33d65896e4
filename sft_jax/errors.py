"""The one exception type for bad user input.

Anything a user can get wrong (a malformed data file, a missing field, an unknown config
key, a model directory without weights) raises `UserInputError` with a one-line message
that names the problem and where it is (file:line, config key, path). The CLI prints the
message and exits with status 2, no traceback. Bugs stay ordinary exceptions.
`flag_error` turns a command-line override error into such a line.
"""

import re


class UserInputError(Exception):
    """Bad input from the user; `str(err)` is the whole one-line message."""

    def __init__(self, message: str):
        if "\n" in message:
            message = " ".join(message.split())
        super().__init__(message)


def flag_error(exc: Exception, argv: list[str]) -> str:
    """One line for a flag or config-override error, naming the `--config.KEY` at fault.

    `exc` is what absl/ml_collections raised while parsing `argv` (the whole command line):
    an unknown key reads `--config.KEY: no such config key`, a value that does not parse
    `--config.KEY: bad value VALUE: <reason>`. Used by every CLI that takes overrides.
    """
    if isinstance(exc, UserInputError):
        return str(exc)
    text = str(exc).replace("\\'", "'").replace("\\n", " ")
    message = " ".join(text.split())
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
        message = message[1:-1]  # str(KeyError) quotes its message
    for arg in argv[1:]:
        if not (arg.startswith("--config.") and "=" in arg):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        if f"--config.{key}=" in message:  # absl: "flag --config.KEY=VALUE: reason"
            return f"--config.{key}: bad value {message.split(f'--config.{key}=', 1)[1]}"
        if isinstance(exc, KeyError | AttributeError) and any(
                f"'{part}'" in text for part in key.split(".")):
            hint = re.search(r'Did you mean "(\w+)"', text)
            return f"--config.{key}: no such config key" + (
                f" (did you mean '{hint.group(1)}'?)" if hint else "")
        if f"'{key.rsplit('.', 1)[-1]}'" in text or key in text:
            return f"--config.{key}: no such config key or bad value ({message})"
    return message


class NonFiniteError(Exception):
    """Training met a non-finite loss, gradient norm or parameter norm under
    `train.on_nonfinite=stop`; nothing of the diverged state was saved or exported.
    `str(err)` is one line naming the step and the last good checkpoint; the CLI prints it
    and exits with `exit_status`."""

    exit_status = 3
