"""Typed results of the agent's ops (docs/protocol.md, "Requests and replies").

Each keeps the reply's JSON object in ``raw``, so members a newer agent adds are not lost and a
client written for this version still reads newer replies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TypedDict

JSON = Dict[str, Any]


class Policy(TypedDict, total=False):
    """A key policy (docs/protocol.md, "Key policies"); every member is optional."""

    expires_at: int
    allow_origins: List[str]
    allow_clients: List[str]
    confirm: bool
    confirm_remember_secs: int


@dataclass(frozen=True)
class Key:
    """A key description: ``list_keys``, and the ``key`` of the ops that make or change keys."""

    label: str
    alg: str
    backend: str
    #: The public JWK.
    jwk: JSON
    #: The RFC 7638 thumbprint, what a token's ``cnf.jkt`` names.
    jkt: str
    persistent: bool
    location: Optional[str] = None
    sign_only: Optional[bool] = None
    other_uses: List[str] = field(default_factory=list)
    #: ``list_keys`` only: the origins the agent holds a server nonce for (never the value).
    nonce_origins: List[str] = field(default_factory=list)
    policy: Optional[Policy] = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, value: JSON) -> "Key":
        """Reads a key description; members this version does not know stay in ``raw``."""
        return cls(
            label=str(value["label"]),
            alg=str(value["alg"]),
            backend=str(value["backend"]),
            jwk=dict(value["jwk"]),
            jkt=str(value["jkt"]),
            persistent=bool(value.get("persistent", False)),
            location=value.get("location"),
            sign_only=value.get("sign_only"),
            other_uses=list(value.get("other_uses") or []),
            nonce_origins=list(value.get("nonce_origins") or []),
            policy=value.get("policy"),
            raw=value,
        )


@dataclass(frozen=True)
class Hello:
    """``hello``: who the agent is and what it can do."""

    protocol: int
    agent: str
    #: The configured backends.
    backends: List[str]
    #: The backends built into the agent (absent from older agents: empty).
    compiled_backends: List[str]
    software_persistent: bool
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, value: JSON) -> "Hello":
        """Reads a ``hello`` reply."""
        return cls(
            protocol=int(value["protocol"]),
            agent=str(value["agent"]),
            backends=list(value.get("backends") or []),
            compiled_backends=list(value.get("compiled_backends") or []),
            software_persistent=bool(value.get("software_persistent", False)),
            raw=value,
        )


@dataclass(frozen=True)
class Status:
    """``status``: the agent's state."""

    agent: str
    protocol: int
    pid: int
    backends: List[str]
    locked: bool
    #: How many keys the agent holds.
    keys: int
    software_persistent: bool
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, value: JSON) -> "Status":
        """Reads a ``status`` reply."""
        return cls(
            agent=str(value["agent"]),
            protocol=int(value["protocol"]),
            pid=int(value["pid"]),
            backends=list(value.get("backends") or []),
            locked=bool(value["locked"]),
            keys=int(value["keys"]),
            software_persistent=bool(value.get("software_persistent", False)),
            raw=value,
        )


__all__ = ["Hello", "JSON", "Key", "Policy", "Status"]
