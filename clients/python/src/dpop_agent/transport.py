"""Where the agent is, and who listens there.

Any local user can listen on a path a client is pointed to (a ``DPOP_AUTH_SOCK`` set by a
script, a guessable directory), and the client sends access tokens and, for ``import_key``,
whole private keys. So before anything is sent, the listener must be the calling user or root
(LocalSystem on Windows), as ``dpop-client`` checks it:

- Linux: the socket's peer credentials (``SO_PEERCRED``: the uid of the process that called
  ``listen``).
- macOS and FreeBSD: ``LOCAL_PEERCRED`` (a ``struct xucred``; not tested in CI).
- Other Unix systems, where the standard library cannot read peer credentials: the socket file
  and its directory must be owned by the caller or root, and the directory writable by its
  owner only, so nobody else could have put a listener there (:func:`check_socket_file`).
- Windows: the named pipe is opened at identification level, and the process that created it
  (``GetNamedPipeServerProcessId``) must run as the caller's user or LocalSystem (written from
  docs/windows.md through ctypes; not tested in CI, which has no Windows).
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from typing import Optional

from .errors import AgentUnavailable, ForeignAgent

#: The environment variable naming the agent's socket (or pipe).
SOCKET_ENV = "DPOP_AUTH_SOCK"


def default_path() -> str:
    """``DPOP_AUTH_SOCK``, else the default: ``$XDG_RUNTIME_DIR/dpop-agent/agent.sock``, or on
    Windows the user's pipe ``\\\\.\\pipe\\dpop-agent-<SID>``."""
    path = os.environ.get(SOCKET_ENV)
    if path:
        return path
    if sys.platform == "win32":
        from . import _windows

        return _windows.default_pipe()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise AgentUnavailable(
            f"no agent socket: set {SOCKET_ENV} (XDG_RUNTIME_DIR is not set either)"
        )
    return os.path.join(runtime, "dpop-agent", "agent.sock")


def peer_uid(sock: "socket.socket") -> Optional[int]:
    """The uid of the process listening on the other end of a connected Unix socket, or
    ``None`` where the standard library cannot ask the kernel."""
    if sys.platform.startswith("linux"):
        # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
        _pid, uid, _gid = struct.unpack("iII", creds)
        return int(uid)
    if sys.platform == "darwin" or sys.platform.startswith("freebsd"):
        # getsockopt(SOL_LOCAL = 0, LOCAL_PEERCRED = 1): struct xucred { u_int cr_version;
        # uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; } (76 bytes).
        level, option = 0, getattr(socket, "LOCAL_PEERCRED", 1)
        xucred = sock.getsockopt(level, option, 76)
        _version, uid = struct.unpack("2I", xucred[:8])
        return int(uid)
    return None


def check_peer(sock: "socket.socket", path: str) -> None:
    """Raises :class:`ForeignAgent` unless the listener runs as our effective uid or root;
    checks the socket file and its directory where peer credentials cannot be read."""
    if sys.platform == "win32":
        raise AgentUnavailable("Unix sockets only: Windows uses the named pipe")
    euid = os.geteuid()
    uid = peer_uid(sock)
    if uid is None:
        check_socket_file(path)
        return
    if uid not in (euid, 0):
        raise ForeignAgent(
            f"refusing the agent socket {path}: it is served by uid {uid}, not by this user "
            f"({euid}) or root; nothing was sent",
            path=path,
            owner=uid,
        )


def check_socket_file(path: str) -> None:
    """The check for systems without peer credentials: the socket and its directory belong to
    the caller or root, and the directory is writable by its owner only (or is sticky, as
    /tmp, with the socket ours)."""
    if sys.platform == "win32":
        raise AgentUnavailable("Unix sockets only: Windows uses the named pipe")
    euid = os.geteuid()
    try:
        info = os.lstat(path)
        directory = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise AgentUnavailable(f"cannot look at the agent socket {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ForeignAgent(f"refusing {path}: it is not a socket", path=path, owner=info.st_uid)
    if info.st_uid not in (euid, 0):
        raise ForeignAgent(
            f"refusing the agent socket {path}: it belongs to uid {info.st_uid}, not to this "
            f"user ({euid}) or root; nothing was sent",
            path=path,
            owner=info.st_uid,
        )
    others_write = directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky = directory.st_mode & stat.S_ISVTX
    if directory.st_uid not in (euid, 0) or (others_write and not sticky):
        raise ForeignAgent(
            f"refusing the agent socket {path}: its directory belongs to uid {directory.st_uid} "
            f"with mode {stat.S_IMODE(directory.st_mode):o}, so another user could have put "
            "the socket there; nothing was sent",
            path=path,
            owner=directory.st_uid,
        )


def connect_unix(path: str, timeout: Optional[float]) -> "socket.socket":
    """Connects to the agent's socket and checks who listens (nothing is sent before)."""
    if sys.platform == "win32":
        raise AgentUnavailable("Unix sockets only: Windows uses the named pipe")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as e:
            raise AgentUnavailable(
                f"cannot connect to the agent at {path}: {e.strerror or e}"
            ) from None
        check_peer(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock
