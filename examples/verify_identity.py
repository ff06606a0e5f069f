#!/usr/bin/env python3
"""Checks a Gatehouse identity token the way an upstream should.

    pip install pyjwt cryptography rfc8785
    python3 examples/verify_identity.py https://gatehouse.example urn:gatehouse:upstream:crm \\
        TOKEN TOOL '{"id": 42}'

An upstream gets the token with every call: HTTP and REST upstreams in
`Authorization: Bearer` (or the configured `identity_header`), stdio upstreams in the
`tools/call` request's `params._meta["dev.gatehouse/identity"]`. Prints the claims, or
exits 1 saying why the call must be refused.
"""

import base64
import hashlib
import json
import sys

import jwt  # PyJWT
import rfc8785

TYP = "gatehouse-identity+jwt"


def verify(issuer, audience, token, tool, arguments, jwks=None):
    header = jwt.get_unverified_header(token)
    if header.get("typ") != TYP or header.get("alg") != "EdDSA":
        raise ValueError("not a Gatehouse identity token")
    # Gatehouse publishes its keys at <issuer>/jwks; cache them, refetch on an unknown kid.
    keys = jwks or jwt.PyJWKClient(issuer + "/jwks")
    key = keys.get_signing_key_from_jwt(token).key
    claims = jwt.decode(
        token,
        key,
        algorithms=["EdDSA"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "jti", "sub"]},
    )
    if claims["exp"] - claims["iat"] > 60:
        raise ValueError("lives longer than a minute")
    if claims.get("method") != "tools/call" or claims["tool"] != tool:
        raise ValueError("issued for another request")
    digest = base64.urlsafe_b64encode(hashlib.sha256(rfc8785.dumps(arguments)).digest())
    if claims["args_sha256"] != digest.rstrip(b"=").decode():
        raise ValueError("issued for other arguments")
    # Optional: remember `jti` until `exp` and refuse a second use.
    return claims


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    issuer, audience, token, tool, arguments = sys.argv[1:]
    try:
        print(json.dumps(verify(issuer, audience, token, tool, json.loads(arguments)), indent=2))
    except Exception as e:  # noqa: BLE001 - any failure means: refuse the call
        sys.exit(f"refused: {e}")
