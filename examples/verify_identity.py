#!/usr/bin/env python3
"""Checks a Gatehouse identity token the way an upstream should.

    pip install pyjwt cryptography rfc8785
    python3 examples/verify_identity.py https://gatehouse.example urn:gatehouse:upstream:crm \\
        TOKEN TOOL '{"id": 42}'
    # A REST API behind an openapi upstream checks the request it got instead:
    python3 examples/verify_identity.py https://gatehouse.example urn:gatehouse:upstream:shop \\
        TOKEN --request POST 'https://api.example.com/items?dry_run=true' body.json

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


def b64_sha256(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def decode(issuer, audience, token, jwks=None):
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
    # Optional: remember `jti` until `exp` and refuse a second use.
    return claims


def verify(issuer, audience, token, tool, arguments, jwks=None):
    """For an MCP upstream: the token was issued for this tool call."""
    claims = decode(issuer, audience, token, jwks)
    if claims.get("method") != "tools/call" or claims["tool"] != tool:
        raise ValueError("issued for another request")
    if claims["args_sha256"] != b64_sha256(rfc8785.dumps(arguments)):
        raise ValueError("issued for other arguments")
    return claims


def verify_request(issuer, audience, token, method, url, body, jwks=None):
    """For a REST API: the token was issued for this HTTP request (`url` exactly as the
    client sent it, scheme and host included; `body` the raw bytes, b"" for none)."""
    claims = decode(issuer, audience, token, jwks)
    if claims.get("htm") != method or claims.get("htu") != url:
        raise ValueError("issued for another request")
    if claims.get("body_sha256") != b64_sha256(body):
        raise ValueError("issued for another body")
    return claims


if __name__ == "__main__":
    args = sys.argv[1:]
    try:
        if len(args) in (6, 7) and args[3] == "--request":
            issuer, audience, token, _, method, url = args[:6]
            body = open(args[6], "rb").read() if len(args) == 7 else b""
            claims = verify_request(issuer, audience, token, method, url, body)
        elif len(args) == 5:
            issuer, audience, token, tool, arguments = args
            claims = verify(issuer, audience, token, tool, json.loads(arguments))
        else:
            sys.exit(__doc__)
        print(json.dumps(claims, indent=2))
    except Exception as e:  # noqa: BLE001 - any failure means: refuse the call
        sys.exit(f"refused: {e}")
