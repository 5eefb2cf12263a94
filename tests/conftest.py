"""Fixtures every test folder can use: live daemons (see live.py)."""

from live import daemon, shared_daemon  # noqa: F401
