"""requests with DPoPAuth against the example resource server (bound token, Redis replay,
nonces required), and against small servers for a token endpoint and redirects."""

from __future__ import annotations

from typing import Iterator

import pytest
import requests

from dpop_agent import Client
from dpop_agent.requests_auth import DPoPAuth

from conftest import ath, jwt_part
from httpfixtures import AS_NONCE, Recorder


@pytest.fixture
def servers() -> Iterator["tuple[Recorder, Recorder]"]:
    a, b = Recorder(), Recorder()
    a.other = b.base
    yield a, b
    a.stop()
    b.stop()


def test_get_and_post_reach_the_resource_server_with_the_nonce_retry(
    agent: Client, key: str, jkt: str, token: str, subject: str, rs: str
) -> None:
    auth = DPoPAuth(key, token, client=agent)
    with requests.Session() as session:
        # A nonce the server no longer takes: it answers use_dpop_nonce with a new one.
        agent.report_nonce(key, rs, "stale-nonce")
        response = session.get(rs + "/v1/items?page=1", auth=auth)
        assert response.status_code == 200, response.text
        assert [r.status_code for r in response.history] == [401]
        assert 'error="use_dpop_nonce"' in response.history[0].headers["WWW-Authenticate"]
        assert response.json() == {
            "method": "GET", "path": "/v1/items", "jkt": jkt, "alg": "ES256", "sub": subject,
        }
        proof = jwt_part(response.request.headers["DPoP"], 1)
        assert proof["htu"] == rs + "/v1/items" and proof["ath"] == ath(token)
        assert response.request.headers["Authorization"] == f"DPoP {token}"

        # The nonce was reported to the agent: the next request needs no retry.
        response = session.get(rs + "/v1/other", auth=auth)
        assert response.status_code == 200 and response.history == []

        agent.report_nonce(key, rs, "stale-again")
        body = b'{"name": "widget"}'
        response = session.post(rs + "/v1/items", data=body, auth=auth)
        assert response.status_code == 200, response.text
        assert [r.status_code for r in response.history] == [401]
        assert response.json()["method"] == "POST"
        assert response.request.body == body  # the retry sent the body again


def test_a_streamed_body_is_not_retried(agent: Client, key: str, token: str, rs: str) -> None:
    agent.report_nonce(key, rs, "stale-stream")
    chunks = (part for part in [b"one", b"two"])
    response = requests.post(rs + "/v1/upload", data=chunks, auth=DPoPAuth(key, token, client=agent))
    assert response.status_code == 401 and response.history == []
    assert 'error="use_dpop_nonce"' in response.headers["WWW-Authenticate"]
    # Its nonce was still reported: a replayable request now goes through at once.
    # (The token may also come from a function, asked for every request.)
    response = requests.post(rs + "/v1/upload", data=b"x", auth=DPoPAuth(key, lambda: token, client=agent))
    assert response.status_code == 200 and response.history == []


def test_a_token_endpoint_nonce_400_is_retried_once(
    agent: Client, key: str, servers: "tuple[Recorder, Recorder]"
) -> None:
    a, _ = servers
    response = requests.post(a.base + "/token", data={"grant_type": "x"}, auth=DPoPAuth(key, client=agent))
    assert response.status_code == 200, response.text
    assert [r.status_code for r in response.history] == [400]
    assert len(a.seen) == 2
    first, second = (jwt_part(seen[2]["dpop"], 1) for seen in a.seen)
    assert "nonce" not in first and second["nonce"] == AS_NONCE
    assert "ath" not in second and "authorization" not in a.seen[1][2]
    assert a.seen[1][3] == b"grant_type=x"
    assert a.seen[1][2].get("cookie") == "as=1"  # a cookie set on the 400 goes with the retry


def test_redirects_keep_token_and_proof_within_the_origin(
    agent: Client, key: str, token: str, servers: "tuple[Recorder, Recorder]"
) -> None:
    a, b = servers
    auth = DPoPAuth(key, token, client=agent)
    response = requests.get(a.base + "/away", auth=auth)
    assert response.status_code == 200 and response.url == b.base + "/landed"
    (landed,) = b.seen
    assert "dpop" not in landed[2] and "authorization" not in landed[2]

    response = requests.post(a.base + "/here", data=b"body", auth=auth)
    assert response.status_code == 200
    method, path, headers, body = a.seen[-1]
    assert (method, path, body) == ("POST", "/landed?after=redirect", b"body")
    proof = jwt_part(headers["dpop"], 1)
    assert proof["htm"] == "POST" and proof["htu"] == a.base + "/landed"
    assert headers["authorization"] == f"DPoP {token}"
    first = jwt_part(a.seen[-2][2]["dpop"], 1)
    assert first["htu"] == a.base + "/here" and first["jti"] != proof["jti"]


def test_the_auth_shows_no_token(agent: Client, key: str, token: str) -> None:
    auth = DPoPAuth(key, token, client=agent)
    assert token not in repr(auth) and token not in str(auth)
    assert key in repr(auth)
