"""Exceptions: one class per error code of docs/protocol.md, under one base.

Every failure of this package is a :class:`DPoPAgentError`. A refusal by the agent is an
:class:`AgentError` subclass chosen by its ``code`` (match on the class or on ``code``, never on
the message); a code this version does not know is an :class:`AgentError` itself, with the code
kept, so a newer agent's errors still reach the caller. Messages never hold a secret: the agent's
own messages carry none, and this package never puts a token, passphrase or key in one.
"""

from __future__ import annotations

from typing import Dict, Optional, Type


class DPoPAgentError(Exception):
    """The base of every error raised by this package."""


class AgentUnavailable(DPoPAgentError):
    """The agent could not be reached: no socket, connection refused, or closed mid-reply."""


class ForeignAgent(DPoPAgentError):
    """The socket or pipe is served by another user than the caller (or root / LocalSystem).

    Nothing was sent to it: a token or a private key must not reach another user's listener.
    """

    def __init__(self, message: str, *, path: str, owner: Optional[int] = None) -> None:
        super().__init__(message)
        self.path = path
        #: The uid that serves the socket, when known.
        self.owner = owner


class ProtocolError(DPoPAgentError):
    """The agent's reply broke the protocol (not JSON, another request's ``id``, too long)."""


class RequestTooLarge(DPoPAgentError):
    """The request line would exceed the protocol's 65536 bytes; nothing was sent."""


class AgentError(DPoPAgentError):
    """The agent refused a request: ``{"ok": false, "error": {"code", "message"}}``.

    ``code`` is the protocol's error code, also for codes without a class of their own here.
    """

    #: The code this class stands for (the base: any code this version does not know).
    CODE = ""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})" if message else code)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# One class per code of docs/protocol.md, written out so type checkers and readers see them.
class MalformedJson(AgentError):
    """``malformed_json``: the line is not a JSON object."""

    CODE = "malformed_json"


class LineTooLong(AgentError):
    """``line_too_long``: the request line was over 64 KiB."""

    CODE = "line_too_long"


class BadRequest(AgentError):
    """``bad_request``: a field is missing, unknown or of the wrong type."""

    CODE = "bad_request"


class UnknownOp(AgentError):
    """``unknown_op``: the agent does not know the op (it is older than this client)."""

    CODE = "unknown_op"


class InvalidLabel(AgentError):
    """``invalid_label``: labels are 1-64 of ``A-Z a-z 0-9 . _ -``, not starting with . or -."""

    CODE = "invalid_label"


class KeyNotFound(AgentError):
    """``key_not_found``: no key has this label (or a URI matches no single key)."""

    CODE = "key_not_found"


class KeyExists(AgentError):
    """``key_exists``: the label (or the adopted token object) is taken."""

    CODE = "key_exists"


class InvalidUrl(AgentError):
    """``invalid_url``: not an absolute http/https URL with a host and no user info."""

    CODE = "invalid_url"


class InvalidMethod(AgentError):
    """``invalid_method``: empty, lower-case or not an HTTP token."""

    CODE = "invalid_method"


class InvalidAccessToken(AgentError):
    """``invalid_access_token``: not an RFC 6750 token."""

    CODE = "invalid_access_token"


class InvalidNonce(AgentError):
    """``invalid_nonce``: outside the ``DPoP-Nonce`` syntax or over 1024 bytes."""

    CODE = "invalid_nonce"


class InvalidKey(AgentError):
    """``invalid_key``: the PEM or the token's key cannot be used."""

    CODE = "invalid_key"


class InvalidUri(AgentError):
    """``invalid_uri``: the PKCS#11 or ``tpm:`` URI cannot be used."""

    CODE = "invalid_uri"


class AmbiguousKey(AgentError):
    """``ambiguous_key``: reserved (older agents: a URI matched several keys)."""

    CODE = "ambiguous_key"


class UnsupportedAlgorithm(AgentError):
    """``unsupported_algorithm``: the backend or token does not do this algorithm."""

    CODE = "unsupported_algorithm"


class UnknownBackend(AgentError):
    """``unknown_backend``: no such backend."""

    CODE = "unknown_backend"


class BackendNotConfigured(AgentError):
    """``backend_not_configured``: the backend is not configured in this agent."""

    CODE = "backend_not_configured"


class Unsupported(AgentError):
    """``unsupported``: the operation is not supported."""

    CODE = "unsupported"


class PermissionDenied(AgentError):
    """``permission_denied``: another user's client, or an adoption the agent does not allow."""

    CODE = "permission_denied"


class WrongPassphrase(AgentError):
    """``wrong_passphrase``: a key file does not decrypt, or ``unlock`` with another passphrase."""

    CODE = "wrong_passphrase"


class PinIncorrect(AgentError):
    """``pin_incorrect``: the token (or TPM) refused the PIN or auth value."""

    CODE = "pin_incorrect"


class PinLocked(AgentError):
    """``pin_locked``: the token's PIN (or the TPM) is locked out."""

    CODE = "pin_locked"


class TokenNotPresent(AgentError):
    """``token_not_present``: the PKCS#11 token or the TPM cannot be reached."""

    CODE = "token_not_present"


class BackendError(AgentError):
    """``backend_error``: the backend failed."""

    CODE = "backend_error"


class Internal(AgentError):
    """``internal``: the agent failed."""

    CODE = "internal"


class Busy(AgentError):
    """``busy``: the agent serves as many connections as it allows; connect again later."""

    CODE = "busy"


class Locked(AgentError):
    """``locked``: the agent is locked (``lock``); signing and key changes wait for ``unlock``."""

    CODE = "locked"


class NotLocked(AgentError):
    """``not_locked``: ``unlock`` of an agent that is not locked."""

    CODE = "not_locked"


class OriginNotAllowed(AgentError):
    """``origin_not_allowed``: the key's policy does not allow this origin."""

    CODE = "origin_not_allowed"


class ClientNotAllowed(AgentError):
    """``client_not_allowed``: the key's policy does not allow this program."""

    CODE = "client_not_allowed"


class KeyExpired(AgentError):
    """``key_expired``: the key's lifetime is over."""

    CODE = "key_expired"


class ConfirmDenied(AgentError):
    """``confirm_denied``: the user said no, or nobody answered."""

    CODE = "confirm_denied"


class InvalidPolicy(AgentError):
    """``invalid_policy``: a policy that cannot be used."""

    CODE = "invalid_policy"


#: Every code of docs/protocol.md to its class.
ERROR_CLASSES: Dict[str, Type[AgentError]] = {
    cls.CODE: cls
    for cls in (
        MalformedJson, LineTooLong, BadRequest, UnknownOp, InvalidLabel, KeyNotFound, KeyExists,
        InvalidUrl, InvalidMethod, InvalidAccessToken, InvalidNonce, InvalidKey, InvalidUri,
        AmbiguousKey, UnsupportedAlgorithm, UnknownBackend, BackendNotConfigured, Unsupported,
        PermissionDenied, WrongPassphrase, PinIncorrect, PinLocked, TokenNotPresent,
        BackendError, Internal, Busy, Locked, NotLocked, OriginNotAllowed, ClientNotAllowed,
        KeyExpired, ConfirmDenied, InvalidPolicy,
    )
}


def error_for(code: str, message: str) -> AgentError:
    """The exception for an error reply: its code's class, or :class:`AgentError` itself."""
    return ERROR_CLASSES.get(code, AgentError)(code, message)
