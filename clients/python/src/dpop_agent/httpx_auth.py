"""DPoP for ``httpx`` (the extra ``httpx``): :class:`DPoPAuth`, for ``httpx.Client`` and
``httpx.AsyncClient`` alike (the async flow talks to the agent through
:class:`~dpop_agent.AsyncClient`, so it never blocks the event loop).

Each request gets ``Authorization: DPoP <token>`` (when a token is given) and a fresh proof;
every ``DPoP-Nonce`` is reported to the agent, and a ``use_dpop_nonce`` answer is retried once
with a fresh proof, unless the body is a stream that cannot be sent twice.

Redirects: httpx follows none by default. With ``follow_redirects=True`` it would copy the
``DPoP`` header (and, from http to https, ``Authorization``) to the next URL, and an auth flow
does not see the hops: pass ``event_hooks=auth.event_hooks()`` (``auth.async_event_hooks()``
for ``AsyncClient``), which give a hop within the origin a fresh proof for its method and URL
and strip token and proof from a hop to another origin.
"""

from __future__ import annotations

import warnings
from typing import Any, AsyncGenerator, Callable, Dict, Generator, List, Optional, Union

import httpx

from . import _http
from .client import AsyncClient, Client

#: A token, or a function returning the current one (called for every request).
TokenSource = Union[str, Callable[[], str], None]

#: Where the auth records what it signed: (method, htu, origin).
_SIGNED = "dpop_agent.signed"


def _replayable(request: httpx.Request) -> bool:
    try:
        request.content
    except httpx.RequestNotRead:
        return False
    return True


def _warn_if_leaked(response: httpx.Response) -> None:
    """Says so when httpx followed a redirect to another origin with our proof (the client
    follows redirects without :meth:`DPoPAuth.event_hooks`): too late to stop, not silent."""
    for hop in [r.request for r in response.history[1:]] + (
        [response.request] if response.history else []
    ):
        signed = hop.extensions.get(_SIGNED)
        if signed and "DPoP" in hop.headers and _http.origin(str(hop.url)) != signed[2]:
            warnings.warn(
                f"httpx followed a redirect to {_http.origin(str(hop.url))} with the DPoP proof "
                f"for {signed[2]}: pass event_hooks=auth.event_hooks() (or async_event_hooks()) "
                "to a client that follows redirects",
                RuntimeWarning,
                stacklevel=2,
            )
            return


class DPoPAuth(httpx.Auth):
    """``httpx`` auth that signs with the agent's key ``key``.

    ``token``: the DPoP-bound access token (or a function returning it); ``None`` for
    proof-only requests. ``client``: the blocking agent client (default: one made on first
    use); ``async_client``: the asyncio one to share (default: a connection per request, as
    an auth object may serve several event loops). ``path``: the socket for those made here
    (default ``DPOP_AUTH_SOCK``).
    """

    def __init__(
        self,
        key: str,
        token: TokenSource = None,
        *,
        client: Optional[Client] = None,
        async_client: Optional[AsyncClient] = None,
        path: Optional[str] = None,
    ) -> None:
        self.key = key
        self._token = token
        self._path = path
        self._client = client
        self._given_async = async_client

    def __repr__(self) -> str:
        return f"DPoPAuth(key={self.key!r}, token={'set' if self._token else 'none'})"

    @property
    def client(self) -> Client:
        """The blocking agent client (for ``httpx.Client``)."""
        if self._client is None:
            self._client = Client(self._path)
        return self._client

    def _async_client(self) -> AsyncClient:
        """The asyncio agent client given, or a new one for this flow (closed at its end: a
        connection belongs to the event loop that opened it, and a flow to one loop)."""
        return self._given_async if self._given_async is not None else AsyncClient(self._path)

    def _token_now(self) -> Optional[str]:
        return self._token() if callable(self._token) else self._token

    def _apply(self, request: httpx.Request, proof: str, token: Optional[str]) -> None:
        request.headers["DPoP"] = proof
        if token is not None:
            request.headers["Authorization"] = f"DPoP {token}"
        url = str(request.url)
        request.extensions = {
            **request.extensions,
            _SIGNED: (request.method, _http.htu(url), _http.origin(url)),
        }

    def _sign(self, request: httpx.Request, nonce: Optional[str] = None) -> None:
        token = self._token_now()
        proof = self.client.sign_proof(
            self.key, request.method, _http.htu(str(request.url)), access_token=token, nonce=nonce
        )
        self._apply(request, proof, token)

    async def _sign_async(
        self, agent: AsyncClient, request: httpx.Request, nonce: Optional[str] = None
    ) -> None:
        token = self._token_now()
        proof = await agent.sign_proof(
            self.key, request.method, _http.htu(str(request.url)), access_token=token, nonce=nonce
        )
        self._apply(request, proof, token)

    @staticmethod
    def _nonce(request: httpx.Request, response: httpx.Response) -> Optional[str]:
        """The response's nonce when it answers a request we signed for its origin."""
        signed = response.request.extensions.get(_SIGNED)
        nonce = response.headers.get(_http.NONCE_HEADER)
        if nonce and signed and _http.origin(str(response.request.url)) == signed[2]:
            return str(nonce)
        return None

    @staticmethod
    def _retry(request: httpx.Request, response: httpx.Response) -> bool:
        # Only an answer to this very request (not to a redirect hop), and a body we still have.
        return (
            not response.history
            and _replayable(request)
            and _http.wants_nonce(
                response.status_code,
                response.headers.get_list("WWW-Authenticate"),
                response.content if response.status_code == 400 else None,
            )
        )

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._sign(request)
        response = yield request
        _warn_if_leaked(response)
        nonce = self._nonce(request, response)
        if nonce is None:
            return
        self.client.report_nonce(self.key, request.extensions[_SIGNED][2], nonce)
        if response.status_code == 400:
            response.read()
        if self._retry(request, response):
            self._sign(request, nonce)
            response = yield request
            nonce = self._nonce(request, response)
            if nonce is not None:
                self.client.report_nonce(self.key, request.extensions[_SIGNED][2], nonce)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        agent = self._async_client()
        try:
            await self._sign_async(agent, request)
            response = yield request
            _warn_if_leaked(response)
            nonce = self._nonce(request, response)
            if nonce is None:
                return
            await agent.report_nonce(self.key, request.extensions[_SIGNED][2], nonce)
            if response.status_code == 400:
                await response.aread()
            if self._retry(request, response):
                await self._sign_async(agent, request, nonce)
                response = yield request
                nonce = self._nonce(request, response)
                if nonce is not None:
                    await agent.report_nonce(self.key, request.extensions[_SIGNED][2], nonce)
        finally:
            if agent is not self._given_async:
                await agent.aclose()

    def _hop(self, request: httpx.Request) -> bool:
        """Strips token and proof from a redirect hop; True when it needs a fresh proof (a
        hop within the signed origin)."""
        signed = request.extensions.get(_SIGNED)
        if signed is None or "DPoP" not in request.headers:
            return False
        url = str(request.url)
        if (request.method, _http.htu(url)) == signed[:2]:
            return False  # the request the flow signed
        for name in ("DPoP", "Authorization"):
            request.headers.pop(name, None)
        if _http.origin(url) != signed[2]:
            request.extensions = {k: v for k, v in request.extensions.items() if k != _SIGNED}
            return False
        return True

    def event_hooks(self) -> Dict[str, List[Callable[[httpx.Request], Any]]]:
        """``event_hooks`` for an ``httpx.Client`` that follows redirects."""

        def on_request(request: httpx.Request) -> None:
            if self._hop(request):
                self._sign(request)

        return {"request": [on_request]}

    def async_event_hooks(self) -> Dict[str, List[Callable[[httpx.Request], Any]]]:
        """``event_hooks`` for an ``httpx.AsyncClient`` that follows redirects."""

        async def on_request(request: httpx.Request) -> None:
            if self._hop(request):
                agent = self._async_client()
                try:
                    await self._sign_async(agent, request)
                finally:
                    if agent is not self._given_async:
                        await agent.aclose()

        return {"request": [on_request]}
