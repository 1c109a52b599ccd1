"""Errors that the CLI turns into one line on stderr and exit code 2."""


class UsageError(Exception):
    """A one-line problem with the user's input."""
