#!/usr/bin/env python3
"""Verifies a DPoP proof (RFC 9449) with jwcrypto, an implementation independent of dpop-jose.

Usage: verify_proof.py PROOF ALG HTM HTU JKT [ACCESS_TOKEN]

Checks the JWS signature with the public key in the header's `jwk`, `typ` and `alg`, that the
`jwk` holds no private members, the `htm`, `htu`, `iat` (within 60 s of now), `jti` and `ath`
claims, and that the RFC 7638 thumbprint jwcrypto computes equals JKT (the agent's).
Prints "ok" and exits 0 when every check passes; exits 1 naming the failed check otherwise,
and 2 when jwcrypto cannot be imported.
"""

import base64
import hashlib
import json
import sys
import time

try:
    from jwcrypto import jwk, jws
except ImportError as e:  # never skip: the interop test must fail without its verifier
    print(f"jwcrypto is not importable ({e}); install it with: pip install jwcrypto",
          file=sys.stderr)
    sys.exit(2)


def fail(check, detail):
    print(f"FAILED {check}: {detail}", file=sys.stderr)
    sys.exit(1)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def main(argv):
    if len(argv) not in (6, 7):
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    proof, alg, htm, htu, jkt = argv[1:6]
    access_token = argv[6] if len(argv) == 7 else None

    token = jws.JWS()
    try:
        token.deserialize(proof)
    except Exception as e:  # noqa: BLE001 - any parse error is a failed check
        fail("compact JWS", e)
    header = token.jose_header
    if header.get("typ") != "dpop+jwt":
        fail("typ", header.get("typ"))
    if header.get("alg") != alg:
        fail("alg", f"{header.get('alg')!r} != {alg!r}")
    if not isinstance(header.get("jwk"), dict):
        fail("jwk", "header has no jwk object")
    private = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(header["jwk"])
    if private:
        fail("jwk", f"private members {sorted(private)}")
    key = jwk.JWK(**header["jwk"])
    if key.has_private:
        fail("jwk", "jwcrypto sees a private key")
    try:
        token.allowed_algs = [alg]
        token.verify(key, alg=alg)
    except Exception as e:  # noqa: BLE001
        fail("signature", repr(e))

    claims = json.loads(token.payload)
    if claims.get("htm") != htm:
        fail("htm", f"{claims.get('htm')!r} != {htm!r}")
    if claims.get("htu") != htu:
        fail("htu", f"{claims.get('htu')!r} != {htu!r}")
    iat = claims.get("iat")
    now = int(time.time())
    if not isinstance(iat, int) or not now - 60 <= iat <= now + 5:
        fail("iat", f"{iat!r} not within 60 s of {now}")
    jti = claims.get("jti")
    if not isinstance(jti, str) or len(jti) < 16:
        fail("jti", repr(jti))
    if access_token is None:
        if "ath" in claims:
            fail("ath", "present without an access token")
    else:
        want = b64url(hashlib.sha256(access_token.encode("ascii")).digest())
        if claims.get("ath") != want:
            fail("ath", f"{claims.get('ath')!r} != {want!r}")

    thumbprint = key.thumbprint()  # RFC 7638, SHA-256
    if thumbprint != jkt:
        fail("jkt", f"jwcrypto thumbprint {thumbprint!r} != agent's {jkt!r}")
    print("ok")


if __name__ == "__main__":
    main(sys.argv)
