"""`llmos up`: run the API server, the scheduler and job supervision in this process."""

from __future__ import annotations

import logging
import socket

from rich.console import Console

from llmos.config import get_settings


class PortInUse(Exception):
    pass


def serve(port: int | None, host: str | None, console: Console) -> None:
    import uvicorn

    from llmos.api import create_app

    settings = get_settings()
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    if host is not None:
        settings = settings.model_copy(update={"host": host})
    _check_port(settings.host, settings.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    url = f"http://{settings.host}:{settings.port}"
    app = create_app(settings, api_url=settings.client_url if settings.url else url)
    console.print(f"llmos daemon on [bold]{url}[/]  home {settings.home_dir}  "
                  f"store {_safe_url(settings.db_url)}")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                timeout_graceful_shutdown=10)


def _check_port(host: str, port: int) -> None:
    from llmos.cli.errors import UsageError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
