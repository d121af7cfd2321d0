"""A client for dpop-agent: DPoP proofs (RFC 9449) signed by
keys the agent holds, over its Unix socket (a named pipe on Windows), with the standard
library only.

>>> from dpop_agent import Client
>>> agent = Client()                       # DPOP_AUTH_SOCK, or the default socket
>>> proof = agent.sign_proof("api", "GET", "https://api.example.com/items", access_token=tok)

``dpop_agent.requests_auth.DPoPAuth`` (extra ``requests``) and ``dpop_agent.httpx_auth.DPoPAuth``
(extra ``httpx``) add the token and a fresh proof to every request and handle server nonces.
"""

from .client import DEFAULT_TIMEOUT, AgentTimeout, AsyncClient, Client
from .errors import *  # noqa: F401,F403  (one class per error code)
from .errors import (
    ERROR_CLASSES,
    AgentError,
    AgentUnavailable,
    DPoPAgentError,
    ForeignAgent,
    ProtocolError,
    RequestTooLarge,
    error_for,
)
from .transport import default_path
from .types import Hello, Key, Policy, Status

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_CLASSES",
    "AgentError",
    "AgentTimeout",
    "AgentUnavailable",
    "AsyncClient",
    "Client",
    "DPoPAgentError",
    "ForeignAgent",
    "Hello",
    "Key",
    "Policy",
    "ProtocolError",
    "RequestTooLarge",
    "Status",
    "default_path",
    "error_for",
    *sorted(cls.__name__ for cls in ERROR_CLASSES.values()),
]
