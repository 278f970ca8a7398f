"""Errors and warnings isthmus raises on purpose.

`IsthmusError` carries a message written for the user (the file, the field and the fix); the CLI
prints it without a traceback. Anything else escaping is a bug.
"""


class IsthmusError(Exception):
    """A user-facing error: bad input, bad file, bad configuration, diverged training."""


class IsthmusWarning(UserWarning):
    """A warning isthmus raises itself (tests turn these into errors)."""
