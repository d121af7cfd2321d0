"""httpx with DPoPAuth, sync (the blocking agent client) and async (the asyncio agent client),
against the example resource server and the small servers of httpfixtures."""

from __future__ import annotations

import asyncio
from typing import Iterator

import httpx
import pytest

from dpop_agent import AsyncClient, Client
from dpop_agent.httpx_auth import DPoPAuth

from conftest import ath, jwt_part
from httpfixtures import AS_NONCE, Recorder


@pytest.fixture
def servers() -> Iterator["tuple[Recorder, Recorder]"]:
    a, b = Recorder(), Recorder()
    a.other = b.base
    yield a, b
    a.stop()
    b.stop()


def test_sync_get_and_post_with_the_nonce_retry(
    agent: Client, key: str, jkt: str, token: str, subject: str, rs: str
) -> None:
    auth = DPoPAuth(key, token, client=agent)
    with httpx.Client(auth=auth) as http:
        agent.report_nonce(key, rs, "stale-httpx")
        response = http.get(rs + "/v1/items?page=1")
        assert response.status_code == 200, response.text
        assert response.json() == {
            "method": "GET", "path": "/v1/items", "jkt": jkt, "alg": "ES256", "sub": subject,
        }
        proof = jwt_part(response.request.headers["DPoP"], 1)
        assert proof["htu"] == rs + "/v1/items" and proof["ath"] == ath(token)
        assert "nonce" in proof and proof["nonce"] != "stale-httpx"  # the retry's proof

        response = http.get(rs + "/v1/again")
        assert response.status_code == 200
        assert jwt_part(response.request.headers["DPoP"], 1)["nonce"] == proof["nonce"]

        agent.report_nonce(key, rs, "stale-httpx-post")
        response = http.post(rs + "/v1/items", content=b'{"n": 1}')
        assert response.status_code == 200, response.text
        assert response.json()["method"] == "POST"
        assert response.request.content == b'{"n": 1}'

        # A streamed body is not sent twice: the 401 comes back.
        agent.report_nonce(key, rs, "stale-httpx-stream")

        def chunks() -> Iterator[bytes]:
            yield b"one"

        response = http.post(rs + "/v1/upload", content=chunks())
        assert response.status_code == 401
        assert 'error="use_dpop_nonce"' in response.headers["WWW-Authenticate"]


def test_async_get_and_post_with_the_nonce_retry(
    agent: Client, key: str, jkt: str, token: str, rs: str
) -> None:
    agent.report_nonce(key, rs, "stale-async")

    async def main() -> None:
        async with AsyncClient() as async_agent:
            auth = DPoPAuth(key, token, async_client=async_agent)
            async with httpx.AsyncClient(auth=auth) as http:
                responses = await asyncio.gather(
                    http.get(rs + "/v1/a"), http.post(rs + "/v1/b", content=b"data")
                )
                for response in responses:
                    assert response.status_code == 200, response.text
                    assert response.json()["jkt"] == jkt
                assert [r.json()["method"] for r in responses] == ["GET", "POST"]
            # The auth made its own asyncio agent client when none is given.
            async with httpx.AsyncClient(auth=DPoPAuth(key, token)) as http:
                response = await http.get(rs + "/v1/c")
                assert response.status_code == 200

    asyncio.run(main())
    assert agent.hello().protocol == 1  # the blocking client was not disturbed


def test_token_endpoint_nonce_sync_and_async(
    agent: Client, key: str, servers: "tuple[Recorder, Recorder]"
) -> None:
    a, _ = servers
    with httpx.Client(auth=DPoPAuth(key, client=agent)) as http:
        response = http.post(a.base + "/token", data={"grant_type": "x"})
    assert response.status_code == 200, response.text
    assert len(a.seen) == 2 and a.seen[1][3] == b"grant_type=x"
    assert jwt_part(a.seen[1][2]["dpop"], 1)["nonce"] == AS_NONCE

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(auth=DPoPAuth(key)) as http:
            return await http.post(a.base + "/token", data={"grant_type": "y"})

    assert asyncio.run(main()).status_code == 200
    assert len(a.seen) == 3  # the agent had the nonce from the sync request: no retry


def test_redirects_with_the_event_hooks(
    agent: Client, key: str, token: str, servers: "tuple[Recorder, Recorder]"
) -> None:
    a, b = servers
    auth = DPoPAuth(key, token, client=agent)
    with httpx.Client(auth=auth, follow_redirects=True, event_hooks=auth.event_hooks()) as http:
        assert http.get(a.base + "/away").status_code == 200
        response = http.post(a.base + "/here", content=b"body")
    (landed,) = b.seen
    assert "dpop" not in landed[2] and "authorization" not in landed[2]
    assert response.status_code == 200
    method, path, headers, body = a.seen[-1]
    assert (method, path, body) == ("POST", "/landed?after=redirect", b"body")
    proof = jwt_part(headers["dpop"], 1)
    assert proof["htu"] == a.base + "/landed" and proof["htm"] == "POST"
    assert headers["authorization"] == f"DPoP {token}"

    async def main() -> None:
        auth = DPoPAuth(key, token)
        async with httpx.AsyncClient(
            auth=auth, follow_redirects=True, event_hooks=auth.async_event_hooks()
        ) as http:
            assert (await http.get(a.base + "/away")).status_code == 200
            assert (await http.get(a.base + "/here")).status_code == 200

    asyncio.run(main())
    assert len(b.seen) == 2 and "dpop" not in b.seen[1][2]
    assert jwt_part(a.seen[-1][2]["dpop"], 1)["htu"] == a.base + "/landed"


def test_following_redirects_without_the_hooks_is_reported(
    agent: Client, key: str, token: str, servers: "tuple[Recorder, Recorder]"
) -> None:
    a, b = servers
    auth = DPoPAuth(key, token, client=agent)
    with httpx.Client(auth=auth, follow_redirects=True) as http:
        with pytest.warns(RuntimeWarning, match="event_hooks"):
            assert http.get(a.base + "/away").status_code == 200
    # httpx itself dropped Authorization across origins, but not the proof.
    assert "authorization" not in b.seen[0][2] and "dpop" in b.seen[0][2]


def test_the_auth_shows_no_token(key: str, token: str) -> None:
    auth = DPoPAuth(key, token)
    assert token not in repr(auth) and token not in str(auth)
