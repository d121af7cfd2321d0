"""The world the Rust e2e module (tests/tests/e2e/client_python.rs) starts: a real agent on
DPOP_AUTH_SOCK holding the key DPOP_TEST_KEY (thumbprint DPOP_TEST_JKT), and the example
resource server at DPOP_TEST_RESOURCE (Redis replay, nonces required) that accepts DPOP_TEST_TOKEN.
A missing variable fails the tests: they never skip."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any, Dict, Iterator

import pytest

from dpop_agent import Client


def env(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set: run these tests through tests/tests/e2e/client_python.rs"
    return value


def jwt_part(jwt: str, index: int) -> Dict[str, Any]:
    part = jwt.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def ath(token: str) -> str:
    digest = hashlib.sha256(token.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture(scope="session")
def key() -> str:
    return env("DPOP_TEST_KEY")


@pytest.fixture(scope="session")
def jkt() -> str:
    return env("DPOP_TEST_JKT")


@pytest.fixture(scope="session")
def token() -> str:
    return env("DPOP_TEST_TOKEN")


@pytest.fixture(scope="session")
def subject() -> str:
    return env("DPOP_TEST_SUB")


@pytest.fixture(scope="session")
def rs() -> str:
    return env("DPOP_TEST_RESOURCE")


@pytest.fixture(scope="session")
def socket_path() -> str:
    return env("DPOP_AUTH_SOCK")


@pytest.fixture
def agent(socket_path: str) -> Iterator[Client]:
    with Client() as client:
        yield client
