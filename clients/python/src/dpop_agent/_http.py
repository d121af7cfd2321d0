"""What the HTTP integrations share, without I/O: ``htu`` and origin of a URL, the
``use_dpop_nonce`` challenge (RFC 9449 sections 8 and 9), and where a redirect goes."""

from __future__ import annotations

import json
import re
from typing import Dict, Iterable, List, Optional, Tuple
from urllib.parse import urljoin, urlsplit, urlunsplit

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_ITEM = re.compile(
    rf'\s*(?:({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN}=*)|({_TOKEN}=*))\s*,?'
)

#: The header a server puts its nonce in.
NONCE_HEADER = "DPoP-Nonce"


def htu(url: str) -> str:
    """The request URL without query and fragment (the agent normalises scheme, host, port)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, user info dropped, scheme and host lower-cased, the
    default port dropped (as the agent keys its nonces)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def challenges(values: Iterable[str]) -> List[Tuple[str, Dict[str, str]]]:
    """The challenges of ``WWW-Authenticate`` header values: (scheme lower-cased, params)."""
    found: List[Tuple[str, Dict[str, str]]] = []
    for value in values:
        for match in _ITEM.finditer(value):
            name, param, scheme = match.groups()
            if scheme is not None:
                found.append((scheme.lower(), {}))
            elif name is not None and found:
                if param.startswith('"'):
                    param = re.sub(r"\\(.)", r"\1", param[1:-1])
                found[-1][1][name.lower()] = param
    return found


def wants_nonce(status: int, www_authenticate: Iterable[str], body: Optional[bytes]) -> bool:
    """Whether a response asks for a proof with the server's nonce: a 401 with a ``DPoP``
    challenge ``error="use_dpop_nonce"`` (resource server), or a 400 whose JSON body has
    ``"error": "use_dpop_nonce"`` (authorization server's token endpoint)."""
    if status == 401:
        return any(
            scheme == "dpop" and params.get("error") == "use_dpop_nonce"
            for scheme, params in challenges(www_authenticate)
        )
    if status == 400 and body:
        try:
            parsed = json.loads(body)
        except ValueError:
            return False
        return isinstance(parsed, dict) and parsed.get("error") == "use_dpop_nonce"
    return False


def redirect_target(url: str, location: str) -> str:
    """The absolute URL a ``Location`` points to from ``url``."""
    return urljoin(url, location)


def redirect_method(status: int, method: str) -> str:
    """The method a redirect is followed with (what requests and httpx do: 303, and 302 but
    for HEAD, become GET; a POST answered 301 becomes GET)."""
    if status in (302, 303) and method != "HEAD":
        return "GET"
    if status == 301 and method == "POST":
        return "GET"
    return method
