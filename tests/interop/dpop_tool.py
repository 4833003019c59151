#!/usr/bin/env python3
"""Independent DPoP (RFC 9449) helper for the hub's OAuth tests, on jwcrypto only.

Subcommands:

  jkt --key PRIVATE_JWK_JSON
      Print the key's RFC 7638 SHA-256 thumbprint (the `cnf.jkt` of a bound token).

  proof --key PRIVATE_JWK_JSON --alg ALG --htm METHOD --htu URL [--token TOKEN]
        [--iat N] [--jti ID] [--typ TYP]
      Print a DPoP proof: a compact JWS with header {typ: dpop+jwt, alg, jwk (public)} and
      claims {jti, htm, htu, iat, ath}. `ath` is the base64url SHA-256 of --token, if given.

Exit status is 0 on success and 1 on failure, with a one-line message on stderr.
"""

import argparse
import base64
import hashlib
import json
import sys
import time
import uuid

from jwcrypto import jwk, jws


def _key(path):
    with open(path, "r", encoding="utf-8") as fh:
        return jwk.JWK(**json.load(fh))


def cmd_jkt(args):
    print(_key(args.key).thumbprint())


def cmd_proof(args):
    key = _key(args.key)
    header = {
        "typ": args.typ,
        "alg": args.alg,
        "jwk": key.export_public(as_dict=True),
    }
    # Only the members RFC 7638 uses, so the proof's key carries no `kid`/`alg` noise.
    header["jwk"] = {
        k: v for k, v in header["jwk"].items() if k in ("kty", "crv", "x", "y", "n", "e")
    }
    claims = {
        "jti": args.jti or str(uuid.uuid4()),
        "htm": args.htm,
        "htu": args.htu,
        "iat": int(args.iat) if args.iat is not None else int(time.time()),
    }
    if args.token is not None:
        digest = hashlib.sha256(args.token.encode("ascii")).digest()
        claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    token = jws.JWS(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    token.add_signature(key, alg=args.alg, protected=json.dumps(header, separators=(",", ":")))
    print(token.serialize(compact=True))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dpop_tool")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("jkt")
    p.add_argument("--key", required=True)
    p.set_defaults(func=cmd_jkt)
    p = sub.add_parser("proof")
    p.add_argument("--key", required=True)
    p.add_argument("--alg", required=True)
    p.add_argument("--htm", required=True)
    p.add_argument("--htu", required=True)
    p.add_argument("--token")
    p.add_argument("--iat")
    p.add_argument("--jti")
    p.add_argument("--typ", default="dpop+jwt")
    p.set_defaults(func=cmd_proof)
    try:
        args = parser.parse_args(argv)
        args.func(args)
        return 0
    except Exception as exc:  # one line, exit 1
        sys.stderr.write(f"dpop_tool: error: {type(exc).__name__}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
