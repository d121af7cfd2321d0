"""The protocol without I/O: each op written once as a :class:`Call` (its request fields and how
its reply is read), and the framing of docs/protocol.md (one JSON object per line, at most 65536
bytes, ``id`` echoed). The blocking and asyncio clients only move the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, List, Optional, TypeVar

from .errors import ProtocolError, RequestTooLarge, error_for
from .types import JSON, Hello, Key, Policy, Status

T = TypeVar("T")

#: The longest line either side may send, the newline included.
MAX_LINE = 65536


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request: the op, its fields, and how its successful reply is read."""

    op: str
    fields: Dict[str, Any]
    parse: Callable[[JSON], T]

    def __repr__(self) -> str:
        # Fields may hold a token, a passphrase or a PEM: show only their names.
        return f"Call(op={self.op!r}, fields={sorted(self.fields)!r})"


class Exchange:
    """Numbers requests, encodes them, and checks and decodes the replies."""

    def __init__(self) -> None:
        self._next_id = 1

    def encode(self, call: "Call[Any]") -> "tuple[int, bytes]":
        """The request's id and its line; :class:`RequestTooLarge` above the protocol's limit."""
        request_id = self._next_id
        self._next_id += 1
        request = {"id": request_id, "op": call.op}
        request.update(call.fields)
        line = json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if len(line) > MAX_LINE:
            raise RequestTooLarge(
                f"the {call.op} request is {len(line)} bytes; the agent takes at most {MAX_LINE}"
            )
        return request_id, line

    @staticmethod
    def decode(request_id: int, line: bytes, call: "Call[T]") -> T:
        """Reads the reply to ``request_id``: its result, or the agent's error raised."""
        if len(line) > MAX_LINE:
            raise ProtocolError(f"the agent's reply is over {MAX_LINE} bytes")
        try:
            reply = json.loads(line)
        except ValueError:
            raise ProtocolError("the agent's reply is not JSON") from None
        if not isinstance(reply, dict):
            raise ProtocolError("the agent's reply is not a JSON object")
        reply_id = reply.get("id")
        ok = reply.get("ok")
        # `busy` and unparsable-request errors come with a null id: still the agent's answer.
        if ok is not True and reply_id in (request_id, None):
            error = reply.get("error")
            if not isinstance(error, dict):
                raise ProtocolError("the agent's error reply has no error object")
            raise error_for(str(error.get("code", "")), str(error.get("message", "")))
        if reply_id != request_id:
            raise ProtocolError(
                f"the agent answered request {reply_id!r} while {request_id} was expected"
            )
        try:
            return call.parse(reply)
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"the agent's {call.op} reply lacks or mistypes {e}") from None


def _nothing(_reply: JSON) -> None:
    return None


def _key(reply: JSON) -> Key:
    return Key.from_json(reply["key"])


def _fields(**fields: Any) -> Dict[str, Any]:
    """The fields that are set: optional ones left out rather than sent as null."""
    return {name: value for name, value in fields.items() if value is not None}


def hello() -> Call[Hello]:
    return Call("hello", {}, Hello.from_json)


def status() -> Call[Status]:
    return Call("status", {}, Status.from_json)


def list_keys() -> Call[List[Key]]:
    return Call("list_keys", {}, lambda reply: [Key.from_json(k) for k in reply["keys"]])


def generate_key(
    label: str, backend: Optional[str], alg: Optional[str], policy: Optional[Policy]
) -> Call[Key]:
    return Call(
        "generate_key", _fields(label=label, backend=backend, alg=alg, policy=policy), _key
    )


def import_key(
    label: str, pem: str, backend: Optional[str], alg: Optional[str], policy: Optional[Policy]
) -> Call[Key]:
    return Call(
        "import_key",
        _fields(label=label, pem=pem, backend=backend, alg=alg, policy=policy),
        _key,
    )


def adopt_key(
    label: str, uri: str, backend: Optional[str], alg: Optional[str], policy: Optional[Policy]
) -> Call[Key]:
    return Call(
        "adopt_key", _fields(label=label, uri=uri, backend=backend, alg=alg, policy=policy), _key
    )


def delete_key(label: str) -> Call[Key]:
    return Call("delete_key", {"label": label}, _key)


def sign_proof(
    key: str,
    htm: str,
    htu: str,
    access_token: Optional[str],
    ath: Optional[str],
    nonce: Optional[str],
) -> Call[str]:
    return Call(
        "sign_proof",
        _fields(key=key, htm=htm, htu=htu, access_token=access_token, ath=ath, nonce=nonce),
        lambda reply: str(reply["proof"]),
    )


def report_nonce(key: str, origin: str, nonce: str) -> Call[None]:
    return Call("report_nonce", {"key": key, "origin": origin, "nonce": nonce}, _nothing)


def set_policy(key: str, policy: Policy) -> Call[Key]:
    return Call("set_policy", {"key": key, "policy": policy}, _key)


def lock(passphrase: str) -> Call[None]:
    return Call("lock", {"passphrase": passphrase}, _nothing)


def unlock(passphrase: str) -> Call[None]:
    return Call("unlock", {"passphrase": passphrase}, _nothing)
