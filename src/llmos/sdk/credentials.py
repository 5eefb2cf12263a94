"""Where the CLI and SDK find their API token: ``LLMOS_TOKEN``, else the credentials file
(``LLMOS_HOME/credentials.json`` or ``LLMOS_CREDENTIALS_FILE``), which holds one token per
daemon URL. ``llmos login`` writes it; the first ``llmos up`` saves the administrator's
token there. The file is created with mode 0600 and replaced atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llmos.config import Settings, get_settings


def _path(settings: Settings | None) -> Path:
    return (settings or get_settings()).credentials_path


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"daemons": {}}
    return data if isinstance(data.get("daemons"), dict) else {"daemons": {}}


def find_token(url: str, settings: Settings | None = None) -> str | None:
    """The token to present to the daemon at ``url``."""
    settings = settings or get_settings()
    if settings.token is not None:
        return settings.token.get_secret_value()
    entry = _read(_path(settings))["daemons"].get(url.rstrip("/"))
    return entry.get("token") if isinstance(entry, dict) else None


def save_token(url: str, token: str, user: str, settings: Settings | None = None) -> Path:
    """Remember ``token`` for ``url`` (replacing an earlier one)."""
    path = _path(settings)
    data = _read(path)
    data["daemons"][url.rstrip("/")] = {"token": token, "user": user, "saved_at": time.time()}
    _write_private(path, json.dumps(data, indent=2))
    return path


def forget_token(url: str, settings: Settings | None = None) -> bool:
    path = _path(settings)
    data = _read(path)
    if data["daemons"].pop(url.rstrip("/"), None) is None:
        return False
    _write_private(path, json.dumps(data, indent=2))
    return True


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
