"""The agent clients: :class:`Client` (blocking, thread-safe) and :class:`AsyncClient`
(asyncio). Both send each op of :mod:`dpop_agent._exchange` over one connection, opened on
first use after the listener check of :mod:`dpop_agent.transport`, one request at a time.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from typing import Any, List, Optional, TypeVar, cast

from . import _exchange as ops
from ._exchange import MAX_LINE, Call, Exchange
from .errors import AgentError, AgentUnavailable, DPoPAgentError, ProtocolError
from .transport import check_peer, connect_unix, default_path
from .types import Hello, Key, Policy, Status

T = TypeVar("T")

#: How long a request may take by default, in seconds: a key with ``confirm`` waits up to 60 s
#: for the user, and wrong ``unlock`` passphrases are answered up to 10 s late, queued.
DEFAULT_TIMEOUT = 120.0


class AgentTimeout(AgentUnavailable):
    """The agent did not answer within the client's timeout (the connection is dropped)."""


class _Closed(Exception):
    """The agent closed the connection; ``partial``: after part of a reply."""

    def __init__(self, partial: bool) -> None:
        super().__init__()
        self.partial = partial


def _is_pipe(path: str) -> bool:
    return sys.platform == "win32" and path.replace("/", "\\").lower().startswith("\\\\.\\pipe\\")


class _Connection:
    """One blocking connection: a Unix socket, or on Windows a named pipe."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        self._buffer = bytearray()
        self._sock: Optional[socket.socket] = None
        self._pipe: Any = None
        if _is_pipe(path):
            from . import _windows

            # Pipe reads block without a timeout (a ctypes overlapped read would be needed).
            self._pipe = _windows.open_pipe(path)
        else:
            self._sock = connect_unix(path, timeout)

    def send(self, data: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(data)
        else:
            view = memoryview(data)
            while view:
                view = view[self._pipe.write(view) :]

    def read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                if line.strip():
                    return line
                continue  # blank lines are ignored
            if len(self._buffer) >= MAX_LINE:
                raise ProtocolError(f"the agent's reply is over {MAX_LINE} bytes")
            if self._sock is not None:
                chunk = self._sock.recv(MAX_LINE)
            else:
                chunk = self._pipe.read(MAX_LINE)
            if not chunk:
                raise _Closed(partial=bool(self._buffer))
            self._buffer += chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._pipe is not None:
            self._pipe.close()


class Client:
    """A blocking client for dpop-agent; safe to share between threads (one request at a time).

    ``path``: the socket (or Windows pipe); default ``DPOP_AUTH_SOCK``, else the default path
    of docs/protocol.md. ``timeout``: seconds per request (``None``: wait for ever; not applied
    to Windows pipes). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: Optional[str] = None, *, timeout: Optional[float] = DEFAULT_TIMEOUT):
        self.path = path or default_path()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: Optional[_Connection] = None
        self._exchange = Exchange()

    def __repr__(self) -> str:
        return f"Client(path={self.path!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (the next request opens a new one)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, call: Call[T]) -> T:
        """Sends one request and reads its reply (the ops below are this with typed fields)."""
        with self._lock:
            # A reused connection may have been closed by the agent while idle (10 minutes):
            # then the request goes once more on a new one. The agent had not read it.
            for _attempt in range(2):
                fresh = self._conn is None
                if self._conn is None:
                    self._conn = _Connection(self.path, self.timeout)
                request_id, line = self._exchange.encode(call)
                try:
                    self._conn.send(line)
                    reply = self._conn.read_line()
                except socket.timeout:
                    self._drop()
                    raise AgentTimeout(
                        f"the agent did not answer {call.op} within {self.timeout} s"
                    ) from None
                except (_Closed, OSError) as e:
                    self._drop()
                    if fresh or (isinstance(e, _Closed) and e.partial):
                        raise AgentUnavailable(
                            f"the agent closed the connection during {call.op}"
                        ) from None
                    continue
                except BaseException:
                    self._drop()
                    raise
                try:
                    return Exchange.decode(request_id, reply, call)
                except AgentError as e:
                    if e.code == "busy":
                        self._drop()  # the agent closes a connection it answers busy
                    raise
                except DPoPAgentError:
                    self._drop()
                    raise
            raise AgentUnavailable(f"the agent closed the connection during {call.op}")

    def hello(self) -> Hello:
        """``hello``: protocol version, agent version, backends."""
        return self.call(ops.hello())

    def status(self) -> Status:
        """``status``: pid, backends, whether locked, how many keys."""
        return self.call(ops.status())

    def list_keys(self) -> List[Key]:
        """``list_keys``: every key, sorted by label."""
        return self.call(ops.list_keys())

    def generate_key(
        self,
        label: str,
        *,
        backend: Optional[str] = None,
        alg: Optional[str] = None,
        policy: Optional[Policy] = None,
    ) -> Key:
        """``generate_key``: a new key (software ES256 by default)."""
        return self.call(ops.generate_key(label, backend, alg, policy))

    def import_key(
        self,
        label: str,
        pem: str,
        *,
        backend: Optional[str] = None,
        alg: Optional[str] = None,
        policy: Optional[Policy] = None,
    ) -> Key:
        """``import_key``: a private key from PEM (PKCS#8, SEC1 or PKCS#1)."""
        return self.call(ops.import_key(label, pem, backend, alg, policy))

    def adopt_key(
        self,
        label: str,
        uri: str,
        *,
        backend: Optional[str] = None,
        alg: Optional[str] = None,
        policy: Optional[Policy] = None,
    ) -> Key:
        """``adopt_key``: serve a key a PKCS#11 token or the TPM holds already."""
        return self.call(ops.adopt_key(label, uri, backend, alg, policy))

    def delete_key(self, label: str) -> Key:
        """``delete_key``: the deleted key (adopted keys are only forgotten)."""
        return self.call(ops.delete_key(label))

    def sign_proof(
        self,
        key: str,
        htm: str,
        htu: str,
        *,
        access_token: Optional[str] = None,
        ath: Optional[str] = None,
        nonce: Optional[str] = None,
    ) -> str:
        """``sign_proof``: a DPoP proof (compact JWT) for ``htm htu``; with ``access_token``
        (or ``ath``) bound to the token; ``nonce`` defaults to the one reported for the URL's
        origin."""
        return self.call(ops.sign_proof(key, htm, htu, access_token, ath, nonce))

    def report_nonce(self, key: str, origin: str, nonce: str) -> None:
        """``report_nonce``: tells the agent a server's ``DPoP-Nonce`` for ``key``."""
        self.call(ops.report_nonce(key, origin, nonce))

    def set_policy(self, key: str, policy: Policy) -> Key:
        """``set_policy``: replaces the key's policy (``{}`` removes it)."""
        return self.call(ops.set_policy(key, policy))

    def lock(self, passphrase: str) -> None:
        """``lock``: the agent refuses to sign until :meth:`unlock` with this passphrase."""
        self.call(ops.lock(passphrase))

    def unlock(self, passphrase: str) -> None:
        """``unlock``: with the passphrase given to :meth:`lock`."""
        self.call(ops.unlock(passphrase))


class _AsyncConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> "_AsyncConnection":
        if sys.platform == "win32":
            raise AgentUnavailable("AsyncClient runs a blocking Client on Windows")
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        except OSError as e:
            raise AgentUnavailable(
                f"cannot connect to the agent at {path}: {e.strerror or e}"
            ) from None
        try:
            # Before a byte goes out, as in the blocking client.
            check_peer(cast(socket.socket, writer.get_extra_info("socket")), path)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def read_line(self) -> bytes:
        while True:
            try:
                line = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                raise _Closed(partial=bool(e.partial)) from None
            except asyncio.LimitOverrunError:
                raise ProtocolError(f"the agent's reply is over {MAX_LINE} bytes") from None
            if line.strip():
                return line

    def close(self) -> None:
        self.writer.close()


class AsyncClient:
    """The asyncio client: the same ops as :class:`Client`, as coroutines; one request at a
    time per client (an :class:`asyncio.Lock`). Unix sockets only natively; on Windows each
    request runs a blocking :class:`Client` in a worker thread, since asyncio has no public
    named-pipe client API."""

    def __init__(self, path: Optional[str] = None, *, timeout: Optional[float] = DEFAULT_TIMEOUT):
        self.path = path or default_path()
        self.timeout = timeout
        self._lock: Optional[asyncio.Lock] = None
        self._conn: Optional[_AsyncConnection] = None
        self._exchange = Exchange()
        self._blocking = Client(self.path, timeout=timeout) if _is_pipe(self.path) else None

    def __repr__(self) -> str:
        return f"AsyncClient(path={self.path!r})"

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection."""
        if self._blocking is not None:
            self._blocking.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await conn.writer.wait_closed()
            except OSError:
                pass

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def call(self, call: Call[T]) -> T:
        """Sends one request and reads its reply."""
        if self._blocking is not None:
            return await asyncio.to_thread(self._blocking.call, call)
        if self._lock is None:
            self._lock = asyncio.Lock()  # made in the running loop (Python 3.9 binds it)
        async with self._lock:
            try:
                return await asyncio.wait_for(self._call_locked(call), self.timeout)
            except asyncio.TimeoutError:
                self._drop()
                raise AgentTimeout(
                    f"the agent did not answer {call.op} within {self.timeout} s"
                ) from None

    async def _call_locked(self, call: Call[T]) -> T:
        for _attempt in range(2):
            fresh = self._conn is None
            if self._conn is None:
                self._conn = await _AsyncConnection.open(self.path)
            request_id, line = self._exchange.encode(call)
            try:
                self._conn.writer.write(line)
                await self._conn.writer.drain()
                reply = await self._conn.read_line()
            except (_Closed, OSError) as e:
                self._drop()
                if fresh or (isinstance(e, _Closed) and e.partial):
                    raise AgentUnavailable(
                        f"the agent closed the connection during {call.op}"
                    ) from None
                continue
            except BaseException:
                self._drop()
                raise
            try:
                return Exchange.decode(request_id, reply, call)
            except AgentError as e:
                if e.code == "busy":
                    self._drop()
                raise
            except DPoPAgentError:
                self._drop()
                raise
        raise AgentUnavailable(f"the agent closed the connection during {call.op}")

    async def hello(self) -> Hello:
        """``hello``."""
        return await self.call(ops.hello())

    async def status(self) -> Status:
        """``status``."""
        return await self.call(ops.status())

    async def list_keys(self) -> List[Key]:
        """``list_keys``."""
        return await self.call(ops.list_keys())

    async def generate_key(
        self,
        label: str,
        *,
        backend: Optional[str] = None,
        alg: Optional[str] = None,
        policy: Optional[Policy] = None,
    ) -> Key:
        """``generate_key``."""
        return await self.call(ops.generate_key(label, backend, alg, policy))

    async def import_key(
        self,
        label: str,
        pem: str,
        *,
        backend: Optional[str] = None,
        alg: Optional[str] = None,
        policy: Optional[Policy] = None,
    ) -> Key:
        """``import_key``."""
        return await self.call(ops.import_key(label, pem, backend, alg, policy))

    async def adopt_key(
        self,
        label: str,
        uri: str,
        *,
        backend: Optional[str] = None,
        alg: Optional[str] = None,
        policy: Optional[Policy] = None,
    ) -> Key:
        """``adopt_key``."""
        return await self.call(ops.adopt_key(label, uri, backend, alg, policy))

    async def delete_key(self, label: str) -> Key:
        """``delete_key``."""
        return await self.call(ops.delete_key(label))

    async def sign_proof(
        self,
        key: str,
        htm: str,
        htu: str,
        *,
        access_token: Optional[str] = None,
        ath: Optional[str] = None,
        nonce: Optional[str] = None,
    ) -> str:
        """``sign_proof``."""
        return await self.call(ops.sign_proof(key, htm, htu, access_token, ath, nonce))

    async def report_nonce(self, key: str, origin: str, nonce: str) -> None:
        """``report_nonce``."""
        await self.call(ops.report_nonce(key, origin, nonce))

    async def set_policy(self, key: str, policy: Policy) -> Key:
        """``set_policy``."""
        return await self.call(ops.set_policy(key, policy))

    async def lock(self, passphrase: str) -> None:
        """``lock``."""
        await self.call(ops.lock(passphrase))

    async def unlock(self, passphrase: str) -> None:
        """``unlock``."""
        await self.call(ops.unlock(passphrase))
