"""The parts of a Ray node's agent that need no cluster: its node home (never one someone
else made first), its API forwarder (bounded, and alive after a failed accept), and the
check `llmos up --ray` makes of where nodes reach the API."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from live import wait_for
from llmos.cli.daemon import _remote_nodes
from llmos.kernel.executors.ray.agent import ApiForwarder, _own_home
from llmos.kernel.resources import NodeCapacity, NodeInfo


def test_a_node_home_someone_else_made_first_is_refused(tmp_path):
    mine = tmp_path / "mine"
    _own_home(mine)
    assert (os.stat(mine).st_mode & 0o777) == 0o700
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(RuntimeError, match="not a folder owned by this agent's user"):
        _own_home(theirs)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(RuntimeError, match="not a folder owned"):
        _own_home(link)


@pytest.fixture
def upstream():
    """A TCP server that answers each connection with one line and closes it when the
    other side has (as an HTTP server does)."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"hello\n")
            while conn.recv(1024):
                pass

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def _connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(10)
    client.connect(str(path))
    return client


def test_the_forwarder_relays_and_refuses_connections_past_its_cap(tmp_path, upstream,
                                                                   monkeypatch):
    monkeypatch.setattr(ApiForwarder, "MAX_CONNECTIONS", 3)
    forwarder = ApiForwarder(tmp_path / "run" / "api.sock", upstream)
    forwarder.start()
    try:
        held = [_connect(forwarder.path) for _ in range(3)]
        assert all(c.recv(6) == b"hello\n" for c in held)
        extra = _connect(forwarder.path)
        assert extra.recv(6) == b""  # over the cap: closed at once, nothing relayed
        for c in held:
            c.close()
        # the slots come back: a job can connect again once its others closed
        assert wait_for(lambda: _connect(forwarder.path).recv(6) == b"hello\n",
                        timeout=10, what="a free slot")
    finally:
        forwarder.close()


def test_the_api_on_loopback_is_refused_only_for_nodes_on_other_machines():
    cap = NodeCapacity("n", (0,), 1024)
    here = NodeInfo(cap, address="127.0.0.1")
    far = NodeInfo(NodeCapacity("far", (0,), 1024), address="203.0.113.9")
    assert _remote_nodes([here], "http://127.0.0.1:8470") == []
    assert _remote_nodes([here, far], "http://127.0.0.1:8470") == ["far at 203.0.113.9"]
    assert _remote_nodes([here, far], "http://198.51.100.7:8470") == []
