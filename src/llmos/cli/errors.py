"""Errors in how the CLI was called (exit code 2)."""


class UsageError(Exception):
    pass
