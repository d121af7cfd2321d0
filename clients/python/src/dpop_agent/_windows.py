"""The Windows named pipe through ctypes (docs/windows.md, "The client's side"): opened at
identification level, and refused unless the process that created it runs as this user or
LocalSystem. Written from the documentation; CI has no Windows, so this is not tested.
"""

from __future__ import annotations

import ctypes
import os
import time
from ctypes import wintypes
from typing import Any

from .errors import AgentUnavailable, ForeignAgent

GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
OPEN_EXISTING = 3
SECURITY_SQOS_PRESENT = 0x00100000
SECURITY_IDENTIFICATION = 0x00010000
ERROR_PIPE_BUSY = 231
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1  # TokenUser
WIN_LOCAL_SYSTEM_SID = 22  # WELL_KNOWN_SID_TYPE WinLocalSystemSid
#: How long a client waits while every instance of the pipe is busy (as dpop-client does).
BUSY_WAIT_MS = 2000


def _dlls() -> Any:
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
    kernel32.CreateFileW.restype = wintypes.HANDLE
    kernel32.CreateFileW.argtypes = [
        wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, ctypes.c_void_p, wintypes.DWORD,
        wintypes.DWORD, wintypes.HANDLE,
    ]
    kernel32.WaitNamedPipeW.argtypes = [wintypes.LPCWSTR, wintypes.DWORD]
    kernel32.GetNamedPipeServerProcessId.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.ULONG)]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.LocalFree.argtypes = [ctypes.c_void_p]
    advapi32.OpenProcessToken.argtypes = [wintypes.HANDLE, wintypes.DWORD, ctypes.POINTER(wintypes.HANDLE)]
    advapi32.GetTokenInformation.argtypes = [
        wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, wintypes.DWORD, ctypes.POINTER(wintypes.DWORD),
    ]
    advapi32.EqualSid.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    advapi32.IsWellKnownSid.argtypes = [ctypes.c_void_p, ctypes.c_int]
    advapi32.ConvertSidToStringSidW.argtypes = [ctypes.c_void_p, ctypes.POINTER(wintypes.LPWSTR)]
    return kernel32, advapi32


def _error(what: str) -> OSError:
    code = ctypes.get_last_error()  # type: ignore[attr-defined,unused-ignore]
    return OSError(code, f"{what} failed (Windows error {code})")


class _UserSid:
    """The user SID of a process's token (a buffer holding a TOKEN_USER)."""

    def __init__(self, process: Any) -> None:
        kernel32, advapi32 = _dlls()
        token = wintypes.HANDLE()
        if not advapi32.OpenProcessToken(process, TOKEN_QUERY, ctypes.byref(token)):
            raise _error("OpenProcessToken")
        try:
            size = wintypes.DWORD()
            advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
            self._buffer = ctypes.create_string_buffer(size.value)
            if not advapi32.GetTokenInformation(
                token, TOKEN_USER_CLASS, self._buffer, size, ctypes.byref(size)
            ):
                raise _error("GetTokenInformation")
        finally:
            kernel32.CloseHandle(token)
        # TOKEN_USER starts with SID_AND_ATTRIBUTES, whose first member is the PSID.
        self.sid = ctypes.c_void_p.from_buffer(self._buffer).value

    def string(self) -> str:
        _kernel32, advapi32 = _dlls()
        text = wintypes.LPWSTR()
        if not advapi32.ConvertSidToStringSidW(self.sid, ctypes.byref(text)):
            raise _error("ConvertSidToStringSidW")
        try:
            return str(text.value)
        finally:
            _kernel32.LocalFree(text)


def default_pipe() -> str:
    """``\\\\.\\pipe\\dpop-agent-<SID>`` of the calling user."""
    kernel32, _advapi32 = _dlls()
    return r"\\.\pipe\dpop-agent-" + _UserSid(kernel32.GetCurrentProcess()).string()


def _check_server(handle: Any, path: str) -> None:
    kernel32, advapi32 = _dlls()
    pid = wintypes.ULONG()
    if not kernel32.GetNamedPipeServerProcessId(handle, ctypes.byref(pid)):
        raise _error("GetNamedPipeServerProcessId")
    process = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid.value)
    if not process:
        raise _error("OpenProcess of the pipe's server")
    try:
        server = _UserSid(process)
    finally:
        kernel32.CloseHandle(process)
    me = _UserSid(kernel32.GetCurrentProcess())
    if advapi32.EqualSid(server.sid, me.sid) or advapi32.IsWellKnownSid(
        server.sid, WIN_LOCAL_SYSTEM_SID
    ):
        return
    raise ForeignAgent(
        f"refusing the agent pipe {path}: its server process {pid.value} runs as "
        f"{server.string()}, not as this user or LocalSystem; nothing was sent",
        path=path,
    )


def open_pipe(path: str) -> Any:
    """Opens the pipe (waiting up to 2 s while every instance is busy), checks its server,
    and returns an unbuffered binary file on it."""
    import msvcrt

    kernel32, _advapi32 = _dlls()
    deadline = time.monotonic() + BUSY_WAIT_MS / 1000
    while True:
        handle = kernel32.CreateFileW(
            path,
            GENERIC_READ | GENERIC_WRITE,
            0,
            None,
            OPEN_EXISTING,
            SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            None,
        )
        if handle != INVALID_HANDLE_VALUE and handle is not None:
            break
        code = ctypes.get_last_error()  # type: ignore[attr-defined,unused-ignore]
        left = int((deadline - time.monotonic()) * 1000)
        if code != ERROR_PIPE_BUSY or left <= 0:
            raise AgentUnavailable(f"cannot open the agent pipe {path} (Windows error {code})")
        kernel32.WaitNamedPipeW(path, left)
    try:
        _check_server(handle, path)
    except BaseException:
        kernel32.CloseHandle(handle)
        raise
    fd = msvcrt.open_osfhandle(handle, os.O_RDWR | getattr(os, "O_BINARY", 0))  # type: ignore[attr-defined,unused-ignore]
    return os.fdopen(fd, "r+b", buffering=0)

