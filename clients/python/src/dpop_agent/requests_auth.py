"""DPoP for ``requests`` (the extra ``requests``): :class:`DPoPAuth`.

Each request gets ``Authorization: DPoP <token>`` (when a token is given) and a fresh proof
from the agent for its method and URL. Every ``DPoP-Nonce`` a response carries is reported to
the agent, and a ``use_dpop_nonce`` answer is retried once with a fresh proof, unless the body
cannot be sent twice (a generator or a file). Redirects: requests would copy the ``DPoP``
header to the next URL (it strips only ``Authorization``, only across hosts); here a redirect
within the origin gets a fresh proof for its new method and URL, and one to another origin
gets neither token nor proof.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import requests
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar

from . import _http
from .client import Client

#: A token, or a function returning the current one (called for every request).
TokenSource = Union[str, Callable[[], str], None]


def _current(token: TokenSource) -> Optional[str]:
    return token() if callable(token) else token


def _replayable(body: Any) -> bool:
    return body is None or isinstance(body, (bytes, str))


class DPoPAuth(AuthBase):
    """``requests`` auth that signs with the agent's key ``key``.

    ``token``: the DPoP-bound access token (or a function returning it); ``None`` for requests
    that carry only a proof (a token endpoint). ``client``: the agent client (default: a new
    :class:`~dpop_agent.Client` on ``DPOP_AUTH_SOCK``).
    """

    def __init__(self, key: str, token: TokenSource = None, *, client: Optional[Client] = None):
        self.key = key
        self._token = token
        self.client = client if client is not None else Client()

    def __repr__(self) -> str:
        # Never the token.
        return f"DPoPAuth(key={self.key!r}, token={'set' if self._token else 'none'})"

    def _sign(self, request: requests.PreparedRequest, nonce: Optional[str] = None) -> None:
        method = str(request.method)
        url = str(request.url)
        token = _current(self._token)
        proof = self.client.sign_proof(
            self.key, method, _http.htu(url), access_token=token, nonce=nonce
        )
        request.headers["DPoP"] = proof
        if token is not None:
            request.headers["Authorization"] = f"DPoP {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self._sign(request)
        signed_origin = _http.origin(str(request.url))

        def on_response(response: requests.Response, **kwargs: Any) -> requests.Response:
            return self._on_response(
                response, signed_origin, retried=False, original=request, **kwargs
            )

        request.register_hook("response", on_response)  # type: ignore[no-untyped-call]
        return request

    def _on_response(
        self,
        response: requests.Response,
        signed_origin: str,
        *,
        retried: bool,
        original: requests.PreparedRequest,
        **kwargs: Any,
    ) -> requests.Response:
        request = response.request
        ours = "DPoP" in request.headers and _http.origin(str(request.url)) == signed_origin
        nonce = response.headers.get(_http.NONCE_HEADER)
        if ours and nonce:
            self.client.report_nonce(self.key, signed_origin, nonce)
        if (
            ours
            and nonce
            and not retried
            and _replayable(request.body)
            and _http.wants_nonce(
                response.status_code,
                [response.headers.get("WWW-Authenticate", "")],
                response.content if response.status_code == 400 else None,
            )
        ):
            retry = request.copy()
            self._sign(retry, nonce)
            response.content  # read it all, so the connection can be reused
            response.close()
            # Cookies the refusal set go with the retry, as requests' digest auth does.
            jar = getattr(retry, "_cookies", None)
            if jar is not None:
                extract_cookies_to_jar(jar, request, response.raw)  # type: ignore[no-untyped-call]
                retry.prepare_cookies(jar)
            assert response.connection is not None
            again: requests.Response = response.connection.send(retry, **kwargs)
            again.history.append(response)
            again.request = retry
            return self._on_response(
                again, signed_origin, retried=True, original=original, **kwargs
            )
        if ours and response.is_redirect:
            self._prepare_redirect(response, signed_origin)
            if original is not request:
                # requests copies the request it first sent, not our retry, for the redirect.
                for name in ("DPoP", "Authorization"):
                    original.headers.pop(name, None)
                    if name in request.headers:
                        original.headers[name] = request.headers[name]
        return response

    def _prepare_redirect(self, response: requests.Response, signed_origin: str) -> None:
        """Sets the headers requests copies to the redirected request: a proof for where it
        goes within the origin, nothing for another origin."""
        request = response.request
        for name in ("DPoP", "Authorization"):
            request.headers.pop(name, None)
        target = _http.redirect_target(str(request.url), response.headers["Location"])
        if _http.origin(target) != signed_origin:
            return
        hop = request.copy()
        hop.url = target
        hop.method = _http.redirect_method(response.status_code, str(request.method))
        self._sign(hop)
        for name in ("DPoP", "Authorization"):
            if name in hop.headers:
                request.headers[name] = hop.headers[name]
