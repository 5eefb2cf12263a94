"""Fixtures every test folder can use: live daemons (see live.py), offline real models
(see offline_models.py)."""

from live import daemon, shared_daemon  # noqa: F401
from offline_models import smollm2_dir  # noqa: F401
