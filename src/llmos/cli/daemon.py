"""`llmos up`: build the system (``llmos.system``) and serve the API over it; the
scheduler and job supervision run in this process."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from llmos.cli.errors import UsageError
from llmos.config import get_settings


def serve(port: int | None, host: str | None, console: Console,
          tls_cert: Path | None = None, tls_key: Path | None = None,
          ray_address: str | None = None, advertise_url: str | None = None) -> None:
    from llmos.monitor.alert_rules import AlertRulesError, load_rules_file

    try:  # before the heavy imports below: a malformed alert rules file refuses at once
        load_rules_file(get_settings())
    except AlertRulesError as e:
        Console(stderr=True).print(f"[red]error:[/] llmos will not start: {escape(str(e))}")
        raise SystemExit(1) from None
    import uvicorn

    from llmos.api import create_app
    from llmos.security.crypto import CryptoError
    from llmos.system import System

    settings = get_settings()
    updates = {k: v for k, v in {"port": port, "host": host, "tls_cert": tls_cert,
                                 "tls_key": tls_key, "ray_address": ray_address,
                                 "advertise_url": advertise_url}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    settings = _cluster_settings(settings)
    _check_tls(settings.tls_cert, settings.tls_key)
    _check_port(settings.host, settings.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request the gateway forwards at INFO: request logs stay off.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    scheme = "https" if settings.tls_cert else "http"
    url = f"{scheme}://{settings.host}:{settings.port}"
    client_url = settings.client_url

    def first_start(boot) -> None:
        from llmos.sdk.credentials import save_token

        saved = save_token(client_url, boot.token, boot.user, settings)
        # Shown on a terminal only: a daemon whose output goes to a log file must not write
        # a secret there (the token is in the credentials file either way).
        shown = (f"Administrator token (shown this once; llmos keeps only its hash):\n\n"
                 f"  [bold]{boot.token}[/]\n\n" if console.is_terminal else
                 "The administrator's token is not printed (output is not a terminal).\n")
        console.print(Panel(
            f"First start: created the administrator [bold]{boot.user}[/] and the team "
            f"[bold]{boot.team}[/].\n\n{shown}Saved for {client_url} in {saved} (mode 0600), "
            "so `llmos` commands on this machine use it. Elsewhere: `llmos login`.",
            title="llmos", expand=False))

    console.print(f"llmos daemon on [bold]{url}[/]  home {settings.home_dir}  "
                  f"store {_safe_url(settings.db_url)}")
    api_url = settings.advertise_url or (client_url if settings.url else url)
    if settings.ray_address and not settings.advertise_url and settings.host in ("0.0.0.0", "::"):
        api_url = f"{scheme}://{socket.gethostbyname(socket.gethostname())}:{settings.port}"
    try:
        system = System(settings, api_url=api_url, on_bootstrap=first_start)
    except (CryptoError, AlertRulesError) as e:  # a wrong key, a bad rules file: refuse
        Console(stderr=True).print(f"[red]error:[/] llmos will not start: {escape(str(e))}")
        raise SystemExit(1) from None
    if settings.ray_address:
        _join_cluster(system, console, api_url)
    level, how = system.daemon.isolation()
    if level == "full":
        console.print(f"jobs: sandboxed ({how})")
    elif level == "partial":
        console.print(f"[yellow]jobs: partly isolated:[/] {escape(how)}")
    else:
        console.print(f"[bold red]warning: jobs are not isolated[/] from each other or from "
                      f"the daemon: {escape(how)}. Any job can read every team's data and "
                      f"the daemon's secrets. LLMOS_REQUIRE_ISOLATION="
                      f"{settings.require_isolation} (see README, Security).")
    app = create_app(system)
    tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)} \
        if settings.tls_cert else {}
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level="warning", timeout_graceful_shutdown=10,
                                           **tls))
    asyncio.run(_serve_with_socket(server, app, settings.api_socket))


async def _serve_with_socket(server, app, path: Path) -> None:
    """The API on its address and, for sandboxed jobs that have no network, on a Unix
    socket in LLMOS_HOME/run (bound into their sandboxes; tokens are checked as ever).
    The socket server ends with the main one."""
    import uvicorn

    path.parent.mkdir(mode=0o755, exist_ok=True)
    os.chmod(path.parent, 0o755)
    path.unlink(missing_ok=True)
    # lifespan off: the main server starts and stops the system, once
    local = uvicorn.Server(uvicorn.Config(app, uds=str(path), log_level="warning",
                                          lifespan="off", timeout_graceful_shutdown=10))
    local.install_signal_handlers = lambda: None  # the main server's handlers stop both
    task = asyncio.create_task(local.serve())
    while not local.started and not task.done():
        await asyncio.sleep(0.01)
    if local.started:
        os.chmod(path, 0o666)  # any job's user may connect; its token says who it is
    ender = asyncio.create_task(_end_streams_on_exit(server, app))
    try:
        await server.serve()
    finally:
        ender.cancel()
        local.should_exit = True
        await task
        path.unlink(missing_ok=True)


async def _end_streams_on_exit(server, app) -> None:
    """End the event streams (api/events.py) once the server begins to stop: uvicorn waits
    for open responses before the lifespan closes the system, and a stream never ends by
    itself (an open dashboard would hold ``llmos down`` for the whole grace period)."""
    while not server.should_exit:
        await asyncio.sleep(0.2)
    app.state.system.events.close()


def _cluster_settings(settings):
    """With a Ray address: jobs run through the Ray executor, the store must be one every
    part reaches (PostgreSQL), and nodes reach the API at the advertised URL."""
    if not settings.ray_address:
        return settings
    if not settings.db_url.startswith("postgresql"):
        raise UsageError("a multi-node llmos (--ray) needs its metadata on PostgreSQL: set "
                         "LLMOS_DATABASE_URL=postgresql+psycopg://USER@HOST/DB (SQLite is "
                         "for one machine)")
    return settings.model_copy(update={"executor": "ray"})


def _join_cluster(system, console: Console, api_url: str) -> None:
    """Connect to the Ray cluster now, so that an unreachable address or an unsupported
    Ray is one line and exit 1 within seconds, not a hang or a traceback later."""
    try:
        nodes = system.daemon.executor("ray").nodes()
    except Exception as e:  # noqa: BLE001 - ClusterError, or Ray's own: one line either way
        system.db.close()
        raise UsageError(f"cannot use the Ray cluster at {system.settings.ray_address}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    far = _remote_nodes(nodes, api_url)
    if far:
        system.db.close()
        raise UsageError(f"nodes on other machines ({', '.join(far[:3])}) cannot reach the API "
                         f"at {api_url}: listen on their network (--host 0.0.0.0) and say "
                         "where (--advertise-url http://THIS-HOST:PORT)")
    ready = sum(1 for n in nodes if n.state == "ready")
    console.print(f"cluster: Ray at {system.settings.ray_address}, {ready} node(s) ready; "
                  f"nodes reach the API at {api_url}")


def _remote_nodes(nodes, api_url: str) -> list[str]:
    """Nodes on other machines, when the API is advertised on a loopback address they
    cannot reach (a cluster on this one machine may use loopback)."""
    import ipaddress
    from urllib.parse import urlsplit

    import psutil

    host = urlsplit(api_url).hostname or ""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return []
    if not loopback:
        return []
    here = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    return [f"{n.name} at {n.address}" for n in nodes
            if n.state == "ready" and n.address and n.address not in here]


def _check_tls(cert: Path | None, key: Path | None) -> None:
    if (cert is None) != (key is None):
        raise UsageError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    for what, path in (("certificate", cert), ("key", key)):
        if path is not None and not Path(path).expanduser().is_file():
            raise UsageError(f"no TLS {what} file at {path}")
    if cert is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                Path(cert).expanduser(), Path(key).expanduser())
        except (ssl.SSLError, OSError) as e:
            raise UsageError(f"the TLS certificate and key do not load: {e}") from None


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
