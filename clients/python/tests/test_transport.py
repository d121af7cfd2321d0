"""Who the client talks to, and what it does when the other end misbehaves: the listener check
(a socket served by another uid is refused before a byte is sent), the socket-file check of
systems without peer credentials, reply ids, the line limit, timeouts and reconnecting."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import tempfile
import threading
from typing import Callable, Iterator, List, Optional

import pytest

import dpop_agent
from dpop_agent import Client, ForeignAgent, transport


def nobody() -> int:
    assert os.geteuid() == 0, "these tests act as another user: run them as root (CI does)"
    return pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory the other user can create a socket in."""
    with tempfile.TemporaryDirectory() as path:
        os.chmod(path, 0o777)
        yield path


def listen_as(uid: int, path: str) -> socket.socket:
    """A listening socket whose peer credentials are ``uid``'s (they are taken at listen)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.seteuid(uid)
    try:
        listener.bind(path)
        listener.listen(4)
    finally:
        os.seteuid(0)
    return listener


def test_a_socket_served_by_another_uid_is_refused_before_sending(shared_dir: str) -> None:
    other = nobody()
    path = os.path.join(shared_dir, "agent.sock")
    listener = listen_as(other, path)
    try:
        with Client(path) as client, pytest.raises(ForeignAgent) as refused:
            client.sign_proof("k", "GET", "https://rs.example/", access_token="secret-token-1")
        assert refused.value.owner == other
        assert f"uid {other}" in str(refused.value)
        assert "secret-token-1" not in str(refused.value) + repr(refused.value)
        # The listener got a connection and not one byte.
        listener.settimeout(2)
        conn, _ = listener.accept()
        conn.settimeout(2)
        assert conn.recv(1) == b""
        conn.close()
        # The asyncio client refuses it the same way.
        import asyncio

        async def main() -> None:
            await dpop_agent.AsyncClient(path).hello()

        with pytest.raises(ForeignAgent):
            asyncio.run(main())
    finally:
        listener.close()


def test_the_socket_file_check_for_systems_without_peer_credentials(shared_dir: str) -> None:
    other = nobody()
    with tempfile.TemporaryDirectory() as private:
        own = os.path.join(private, "agent.sock")
        mine = socket.socket(socket.AF_UNIX)
        mine.bind(own)
        transport.check_socket_file(own)  # ours, in a directory only we write: fine
        # A directory others may write: someone else could have put the socket there.
        os.chmod(private, 0o777)
        with pytest.raises(ForeignAgent, match="its directory"):
            transport.check_socket_file(own)
        os.chmod(private, 0o700)
        # A socket file of another user.
        os.chown(own, other, -1)
        with pytest.raises(ForeignAgent) as refused:
            transport.check_socket_file(own)
        assert refused.value.owner == other
        mine.close()
        # Not a socket at all.
        plain = os.path.join(private, "plain")
        open(plain, "w").close()
        with pytest.raises(ForeignAgent, match="not a socket"):
            transport.check_socket_file(plain)
        # This platform reads peer credentials, so connecting uses SO_PEERCRED instead.
        left, right = socket.socketpair()
        with left, right:
            assert transport.peer_uid(left) == os.geteuid()


class FakeAgent:
    """A misbehaving agent of our own uid: answers each request line with ``answer(request)``
    (``None``: close the connection)."""

    def __init__(self, path: str, answer: Callable[[dict, int], Optional[bytes]]) -> None:
        self.path = path
        self.answer = answer
        self.connections = 0
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                with conn, conn.makefile("rb") as lines:
                    for n, line in enumerate(lines):
                        reply = self.answer(json.loads(line), n)
                        if reply is None:
                            break
                        conn.sendall(reply)
            except OSError:
                pass  # the client hung up, as some tests make it

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake(tmp_path: "os.PathLike[str]") -> Iterator[Callable[..., FakeAgent]]:
    made: List[FakeAgent] = []

    def make(answer: Callable[[dict, int], Optional[bytes]]) -> FakeAgent:
        agent = FakeAgent(os.path.join(str(tmp_path), f"fake{len(made)}.sock"), answer)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


def hello_reply(request_id: object) -> bytes:
    return json.dumps(
        {"id": request_id, "ok": True, "protocol": 1, "agent": "fake/0", "backends": []}
    ).encode() + b"\n"


def test_a_reply_to_another_request_is_refused(fake: Callable[..., FakeAgent]) -> None:
    agent = fake(lambda request, n: hello_reply(request["id"] + 1))
    with Client(agent.path) as client, pytest.raises(dpop_agent.ProtocolError, match="answered"):
        client.hello()


def test_an_overlong_reply_is_refused(fake: Callable[..., FakeAgent]) -> None:
    agent = fake(lambda request, n: b'{"id":1,"ok":true,"pad":"' + b"x" * 70_000 + b'"}\n')
    with Client(agent.path) as client, pytest.raises(dpop_agent.ProtocolError, match="65536"):
        client.hello()


def test_a_silent_agent_times_out(fake: Callable[..., FakeAgent]) -> None:
    release = threading.Event()

    def never(request: dict, n: int) -> Optional[bytes]:
        release.wait(5)
        return None

    agent = fake(never)
    try:
        with Client(agent.path, timeout=0.3) as client, pytest.raises(dpop_agent.AgentTimeout):
            client.hello()
    finally:
        release.set()


def test_blank_lines_and_unknown_members_are_ignored(fake: Callable[..., FakeAgent]) -> None:
    def answer(request: dict, n: int) -> bytes:
        reply = json.loads(hello_reply(request["id"]))
        reply["added_by_a_newer_agent"] = {"x": 1}
        return b"\r\n\n" + json.dumps(reply).encode() + b"\r\n"

    agent = fake(answer)
    with Client(agent.path) as client:
        hello = client.hello()
    assert hello.agent == "fake/0"
    assert hello.raw["added_by_a_newer_agent"] == {"x": 1}


def test_a_connection_the_agent_closed_while_idle_is_opened_again(
    fake: Callable[..., FakeAgent],
) -> None:
    # Each connection answers one request and is then closed, as an idle one is.
    def one_per_connection(request: dict, n: int) -> Optional[bytes]:
        return hello_reply(request["id"]) if n == 0 else None

    agent = fake(one_per_connection)
    with Client(agent.path) as client:
        assert client.hello().agent == "fake/0"
        assert client.hello().agent == "fake/0"
    assert agent.connections == 2


def test_busy_and_null_id_errors_are_the_agents(fake: Callable[..., FakeAgent]) -> None:
    agent = fake(
        lambda request, n: b'{"id":null,"ok":false,"error":{"code":"busy","message":"full"}}\n'
    )
    with Client(agent.path) as client, pytest.raises(dpop_agent.Busy):
        client.hello()


def test_no_socket_is_agent_unavailable(tmp_path: "os.PathLike[str]") -> None:
    with pytest.raises(dpop_agent.AgentUnavailable):
        Client(os.path.join(str(tmp_path), "none.sock")).hello()


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPOP_AUTH_SOCK", "/somewhere/agent.sock")
    assert transport.default_path() == "/somewhere/agent.sock"
    monkeypatch.delenv("DPOP_AUTH_SOCK")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert transport.default_path() == "/run/user/1000/dpop-agent/agent.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    with pytest.raises(dpop_agent.AgentUnavailable, match="DPOP_AUTH_SOCK"):
        transport.default_path()


def test_reprs_hold_no_secret() -> None:
    from dpop_agent import _exchange

    call = _exchange.lock("the lock passphrase")
    assert "the lock passphrase" not in repr(call)
    call = _exchange.sign_proof("k", "GET", "https://rs.example/", "tok-123", None, None)
    assert "tok-123" not in repr(call)
    assert stat.S_ISDIR(os.stat(os.path.dirname(dpop_agent.__file__)).st_mode)
    assert os.path.exists(os.path.join(os.path.dirname(dpop_agent.__file__), "py.typed"))
