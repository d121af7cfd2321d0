"""Every op of docs/protocol.md through the blocking and asyncio clients, against the real
agent, and each refusal raised as its own exception class."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from typing import List

import pytest

import dpop_agent
from dpop_agent import AsyncClient, Client, Key
from dpop_agent import errors
from dpop_agent._exchange import Call

from conftest import ath, env, jwt_part

URL = "https://api.example.com/v1/items"


def test_hello_and_status(agent: Client) -> None:
    hello = agent.hello()
    assert hello.protocol == 1
    assert hello.agent.startswith("dpop-agent/")
    assert "software" in hello.backends
    assert "software" in hello.compiled_backends
    assert hello.software_persistent is True  # the world's agent has a passphrase
    status = agent.status()
    assert status.protocol == 1 and status.pid > 0
    assert status.locked is False
    assert status.keys >= 1


def test_list_keys_finds_the_world_key(agent: Client, key: str, jkt: str) -> None:
    keys = agent.list_keys()
    assert [k.label for k in keys] == sorted(k.label for k in keys)
    mine = next(k for k in keys if k.label == key)
    assert isinstance(mine, Key)
    assert mine.jkt == jkt
    assert mine.alg == "ES256" and mine.backend == "software" and mine.persistent
    assert mine.jwk["kty"] == "EC" and "d" not in mine.jwk


def test_sign_proof_claims(agent: Client, key: str, jkt: str, token: str) -> None:
    proof = agent.sign_proof(key, "POST", URL + "?page=2#top", access_token=token, nonce="n-1")
    header, claims = jwt_part(proof, 0), jwt_part(proof, 1)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert claims["htm"] == "POST"
    assert claims["htu"] == URL  # query and fragment dropped
    assert claims["ath"] == ath(token)
    assert claims["nonce"] == "n-1"
    assert abs(claims["iat"] - time.time()) < 60
    # ath given directly instead of the token.
    claims = jwt_part(agent.sign_proof(key, "GET", URL, ath=ath(token)), 1)
    assert claims["ath"] == ath(token) and "nonce" not in claims


def test_generate_sign_delete(agent: Client) -> None:
    made = agent.generate_key("py-generated", alg="ES384")
    assert made.label == "py-generated" and made.alg == "ES384"
    assert made.jwk["crv"] == "P-384"
    with pytest.raises(errors.KeyExists) as exists:
        agent.generate_key("py-generated")
    assert exists.value.code == "key_exists"
    proof = agent.sign_proof("py-generated", "GET", URL)
    assert jwt_part(proof, 0)["jwk"] == made.jwk
    deleted = agent.delete_key("py-generated")
    assert deleted.jkt == made.jkt
    with pytest.raises(errors.KeyNotFound):
        agent.delete_key("py-generated")


def test_import_key_from_openssl(agent: Client) -> None:
    pem = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    imported = agent.import_key("py-imported", pem)
    assert imported.alg == "ES256" and imported.jwk["crv"] == "P-256"
    assert jwt_part(agent.sign_proof("py-imported", "GET", URL), 0)["jwk"] == imported.jwk
    with pytest.raises(errors.InvalidKey) as bad:
        agent.import_key("py-bad-pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert "AAAA" not in str(bad.value)
    agent.delete_key("py-imported")


def test_adopt_key_without_a_token_backend_is_refused(agent: Client) -> None:
    with pytest.raises(errors.AgentError) as refused:
        agent.adopt_key("py-adopted", "pkcs11:token=none;object=none")
    assert type(refused.value) is errors.BackendNotConfigured, repr(refused.value)


def test_report_nonce_is_used_and_listed(agent: Client) -> None:
    agent.generate_key("py-nonces")
    try:
        agent.report_nonce("py-nonces", "https://API.example.com:443/ignored?x", "abc.DEF-1")
        assert jwt_part(agent.sign_proof("py-nonces", "GET", URL), 1)["nonce"] == "abc.DEF-1"
        listed = next(k for k in agent.list_keys() if k.label == "py-nonces")
        assert listed.nonce_origins == ["https://api.example.com"]
        # An explicit nonce wins; another origin gets none.
        assert jwt_part(agent.sign_proof("py-nonces", "GET", URL, nonce="x"), 1)["nonce"] == "x"
        other = jwt_part(agent.sign_proof("py-nonces", "GET", "https://other.example/"), 1)
        assert "nonce" not in other
        with pytest.raises(errors.InvalidNonce):
            agent.report_nonce("py-nonces", URL, "bad nonce with spaces")
        with pytest.raises(errors.KeyNotFound):
            agent.report_nonce("py-no-such-key", URL, "n")
        with pytest.raises(errors.InvalidUrl):
            agent.report_nonce("py-nonces", "ftp://example.com", "n")
    finally:
        agent.delete_key("py-nonces")


def test_set_policy_tightens_and_refuses_to_loosen_without_a_yes(agent: Client) -> None:
    label = f"py-policy-{os.getpid()}"
    agent.generate_key(label)  # left in the agent: deleting it would need a yes too
    changed = agent.set_policy(label, {"allow_origins": ["https://api.example.com"]})
    assert changed.policy == {"allow_origins": ["https://api.example.com"]}
    agent.sign_proof(label, "GET", URL)
    with pytest.raises(errors.OriginNotAllowed):
        agent.sign_proof(label, "GET", "https://elsewhere.example/")
    with pytest.raises(errors.ConfirmDenied):
        agent.set_policy(label, {})  # loosening needs the user's yes: no askpass here
    with pytest.raises(errors.InvalidPolicy):
        agent.set_policy(label, {"allow_origins": ["https://api.example.com/path"]})


def test_lock_and_unlock(agent: Client, key: str) -> None:
    agent.lock("py lock passphrase")
    try:
        assert agent.status().locked is True
        with pytest.raises(errors.Locked):
            agent.sign_proof(key, "GET", URL)
        with pytest.raises(errors.Locked):
            agent.lock("py lock passphrase")
        agent.list_keys()  # still answered while locked
        with pytest.raises(errors.WrongPassphrase) as wrong:
            agent.unlock("not the passphrase")
        assert "not the passphrase" not in str(wrong.value) + repr(wrong.value)
    finally:
        agent.unlock("py lock passphrase")
    assert agent.status().locked is False
    with pytest.raises(errors.NotLocked):
        agent.unlock("py lock passphrase")
    agent.sign_proof(key, "GET", URL)


def test_refusals_map_to_their_classes(agent: Client, key: str) -> None:
    cases = [
        (lambda: agent.sign_proof("py-no-such-key", "GET", URL), errors.KeyNotFound),
        (lambda: agent.sign_proof(key, "get", URL), errors.InvalidMethod),
        (lambda: agent.sign_proof(key, "GET", "not a url"), errors.InvalidUrl),
        (lambda: agent.generate_key("-bad label"), errors.InvalidLabel),
        (lambda: agent.generate_key("py-x", alg="HS256"), errors.BadRequest),
        (lambda: agent.generate_key("py-x", backend="tpm"), errors.BackendNotConfigured),
        (lambda: agent.sign_proof(key, "GET", URL, access_token="a b"), errors.InvalidAccessToken),
        (lambda: agent.generate_key("py-x", backend="floppy"), errors.UnknownBackend),
        (lambda: agent.call(Call("sign_proof", {"key": key, "typo": 1}, str)), errors.BadRequest),
        (lambda: agent.call(Call("no_such_op", {}, str)), errors.UnknownOp),
    ]
    for call, cls in cases:
        with pytest.raises(errors.AgentError) as refused:
            call()
        assert type(refused.value) is cls, repr(refused.value)
        assert refused.value.code == cls.CODE
        assert isinstance(refused.value, dpop_agent.DPoPAgentError)
    # A malformed token is refused without being shown.
    with pytest.raises(errors.InvalidAccessToken) as refused:
        agent.sign_proof(key, "GET", URL, access_token="secret-token-xyz with space")
    assert "secret-token-xyz" not in str(refused.value) + repr(refused.value)
    # The connection is still good after every refusal.
    assert agent.hello().protocol == 1


def test_every_code_has_a_class_and_unknown_codes_keep_theirs() -> None:
    assert len(errors.ERROR_CLASSES) == 33
    for code, cls in errors.ERROR_CLASSES.items():
        error = errors.error_for(code, "m")
        assert type(error) is cls and error.code == code
        assert hasattr(dpop_agent, cls.__name__)
    newer = errors.error_for("some_future_code", "a newer agent says no")
    assert type(newer) is errors.AgentError
    assert newer.code == "some_future_code"
    assert "some_future_code" in str(newer)


def test_a_request_over_the_line_limit_is_not_sent(agent: Client) -> None:
    with pytest.raises(dpop_agent.RequestTooLarge):
        agent.import_key("py-huge", "x" * 70_000)
    assert agent.hello().protocol == 1


def test_one_client_shared_by_threads(agent: Client, key: str) -> None:
    proofs: List[str] = []
    failures: List[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                proofs.append(agent.sign_proof(key, "GET", URL))
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len({jwt_part(p, 1)["jti"] for p in proofs}) == 160


def test_async_client_every_op_family(key: str, jkt: str, token: str) -> None:
    async def main() -> None:
        async with AsyncClient() as agent:
            assert (await agent.hello()).protocol == 1
            assert (await agent.status()).locked is False
            assert any(k.jkt == jkt for k in await agent.list_keys())
            proofs = await asyncio.gather(
                *(agent.sign_proof(key, "GET", URL, access_token=token) for _ in range(20))
            )
            assert len({jwt_part(p, 1)["jti"] for p in proofs}) == 20
            assert all(jwt_part(p, 1)["ath"] == ath(token) for p in proofs)
            made = await agent.generate_key("py-async")
            await agent.report_nonce("py-async", URL, "async-nonce")
            assert jwt_part(await agent.sign_proof("py-async", "GET", URL), 1)["nonce"] == "async-nonce"
            assert (await agent.delete_key("py-async")).jkt == made.jkt
            with pytest.raises(errors.KeyNotFound):
                await agent.sign_proof("py-async", "GET", URL)
            await agent.lock("async lock")
            with pytest.raises(errors.Locked):
                await agent.sign_proof(key, "GET", URL)
            await agent.unlock("async lock")
            with pytest.raises(errors.UnknownOp):
                await agent.call(Call("no_such_op", {}, str))

    asyncio.run(main())


def test_a_connection_the_agent_closed_while_idle_is_opened_again() -> None:
    # This agent closes connections idle for DPOP_TEST_IDLE_MS (ten minutes in production).
    idle = int(env("DPOP_TEST_IDLE_MS")) / 1000
    with Client(env("DPOP_TEST_IDLE_SOCK")) as agent:
        assert agent.hello().protocol == 1
        time.sleep(idle * 3)
        assert agent.list_keys() == []
        time.sleep(idle * 3)
        assert agent.hello().protocol == 1

    async def twice() -> None:
        client = AsyncClient(env("DPOP_TEST_IDLE_SOCK"))
        try:
            assert (await client.hello()).protocol == 1
            await asyncio.sleep(idle * 3)
            assert await client.list_keys() == []
        finally:
            await client.aclose()

    asyncio.run(twice())
