"""What the library raises for input it cannot use.

The message says what is wrong in the library's own words (a file, a value), never a flag's: the
entry points, which know the flags, print it as one line and exit with status 2.
"""


class InputError(ValueError):
    """Input the caller can fix: a missing or damaged file, a value out of range, settings that do not fit."""


class SettingError(InputError):
    """A setting's value that cannot be used; `name` is the setting (an entry point adds the dashes of its flag)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message
