#!/usr/bin/env python3
"""Independent JOSE helper for interop tests of the Shared Signals hub.

Built on jwcrypto and the standard library only, so that tokens produced
and checked here do not share any code with the Rust implementation.

Subcommands:

  keygen --alg ES256|RS256|PS256|EdDSA --kid KID --private OUT --jwks OUT
      Generate a signing key (EC P-256, RSA 2048 or Ed25519). Writes the
      private JWK (with kid, alg, use=sig) and a public JWKS {"keys": [...]}.

  sign --key JWK_OR_PEM [--kid KID] --alg ALG [--typ TYP | --no-typ]
       --claims FILE|-
      Print a compact JWS whose protected header is {alg, kid, typ}.
      kid comes from --kid, else from the JWK (omitted if neither).
      typ defaults to "secevent+jwt".

  verify --jwks FILE --token FILE|- [--alg ALG ...]
      Verify a compact JWS with the key matching the header's kid (or the
      only key in the set if the header has no kid), requiring the header
      alg to be in the allowed list (default: ES256 RS256 PS256 EdDSA).
      Prints {"header": {...}, "claims": {...}} as one JSON object.

Exit status is 0 on success and 1 on any failure, with a one-line message
on stderr.
"""

import argparse
import base64
import binascii
import json
import os
import sys

from jwcrypto import jwk, jws

PROG = "jose_tool"
DEFAULT_TYP = "secevent+jwt"
DEFAULT_ALLOWED_ALGS = ["ES256", "RS256", "PS256", "EdDSA"]

# alg -> jwcrypto JWK.generate() parameters
KEYGEN_PARAMS = {
    "ES256": {"kty": "EC", "crv": "P-256"},
    "RS256": {"kty": "RSA", "size": 2048, "public_exponent": 65537},
    "PS256": {"kty": "RSA", "size": 2048, "public_exponent": 65537},
    "EdDSA": {"kty": "OKP", "crv": "Ed25519"},
}


class ToolError(Exception):
    """A failure reported to the user as a one-line message."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that reports usage errors on one line with exit 1."""

    def error(self, message):
        raise ToolError(f"usage: {message}")


# ---------------------------------------------------------------- helpers


def _read_text(path, what):
    """Read a whole file, or stdin when path is '-'."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, "r", encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ToolError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ToolError(f"{what} {path!r} is not valid UTF-8") from exc


def _write_text(path, text, private=False):
    """Write text to a file (mode 0600 for private material)."""
    try:
        if private:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
    except OSError as exc:
        raise ToolError(f"cannot write {path!r}: {exc.strerror or exc}") from exc


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _parse_json(text, what):
    """Strict JSON parse: duplicate members and NaN/Infinity are rejected."""

    def _bad_constant(name):
        raise ValueError(f"invalid constant {name}")

    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_bad_constant
        )
    except ValueError as exc:
        raise ToolError(f"{what} is not valid JSON: {exc}") from exc


def _json_compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _b64url_decode(segment, what):
    if not segment or any(
        c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for c in segment
    ):
        raise ToolError(f"token {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ToolError(f"token {what} is not base64url") from exc


def _load_signing_key(path):
    """Load a private key from a JWK JSON file or a PEM file.

    Returns (key, kid) where kid is the JWK's own "kid" member, or None.
    PEM keys have no kid (jwcrypto's thumbprint-derived kid is ignored).
    """
    data = _read_text(path, "key file")
    if data.lstrip().startswith("-----BEGIN"):
        try:
            key = jwk.JWK.from_pem(data.encode("utf-8"))
        except Exception as exc:  # jwcrypto/cryptography raise many types
            raise ToolError(f"cannot load PEM key {path!r}: {exc}") from exc
        file_kid = None
    else:
        obj = _parse_json(data, f"key file {path!r}")
        if not isinstance(obj, dict):
            raise ToolError(f"key file {path!r} is not a JWK object")
        if "keys" in obj:
            raise ToolError(f"key file {path!r} is a JWKS, expected a single JWK")
        try:
            key = jwk.JWK(**obj)
        except Exception as exc:
            raise ToolError(f"cannot load JWK {path!r}: {exc}") from exc
        file_kid = obj.get("kid")
    if not key.has_private:
        raise ToolError(f"key {path!r} has no private part")
    return key, file_kid


# alg prefix -> (kty, crv or None) a signing key must have
_ALG_KEY_TYPES = {
    "RS": ("RSA", None),
    "PS": ("RSA", None),
    "ES256K": ("EC", "secp256k1"),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
    "Ed25519": ("OKP", "Ed25519"),
    "Ed448": ("OKP", "Ed448"),
    "HS": ("oct", None),
}


def _check_key_alg(key, alg):
    """Give a clear message when the key cannot produce alg signatures."""
    for prefix in sorted(_ALG_KEY_TYPES, key=len, reverse=True):
        if alg == prefix or (len(prefix) == 2 and alg.startswith(prefix)):
            kty, crv = _ALG_KEY_TYPES[prefix]
            if key.get("kty") != kty or (crv and key.get("crv") != crv):
                have = key.get("kty") + (f"/{key.get('crv')}" if key.get("crv") else "")
                want = kty + (f"/{crv}" if crv else "")
                raise ToolError(f"alg {alg} needs a {want} key, got {have}")
            return


# ---------------------------------------------------------------- keygen


def cmd_keygen(args):
    params = dict(KEYGEN_PARAMS[args.alg])
    if not args.kid:
        raise ToolError("--kid must not be empty")
    try:
        key = jwk.JWK.generate(kid=args.kid, alg=args.alg, use="sig", **params)
    except Exception as exc:
        raise ToolError(f"key generation failed: {exc}") from exc

    private = key.export_private(as_dict=True)
    public = key.export_public(as_dict=True)
    # Make sure the metadata is present regardless of jwcrypto behaviour.
    for obj in (private, public):
        obj["kid"] = args.kid
        obj["alg"] = args.alg
        obj["use"] = "sig"

    _write_text(args.private, json.dumps(private, indent=2) + "\n", private=True)
    _write_text(args.jwks, json.dumps({"keys": [public]}, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------- sign


def cmd_sign(args):
    key, file_kid = _load_signing_key(args.key)

    claims = _parse_json(_read_text(args.claims, "claims"), "claims")
    if not isinstance(claims, dict):
        raise ToolError("claims must be a JSON object")
    payload = _json_compact(claims).encode("utf-8")

    header = {"alg": args.alg}
    kid = args.kid if args.kid is not None else file_kid
    if kid is not None:
        header["kid"] = kid
    if not args.no_typ:
        header["typ"] = args.typ if args.typ is not None else DEFAULT_TYP

    _check_key_alg(key, args.alg)
    try:
        token = jws.JWS(payload)
        # Permit any algorithm jwcrypto knows: signing is under test control.
        token.allowed_algs = list(jws.default_allowed_algs) + (
            [args.alg] if args.alg not in jws.default_allowed_algs else []
        )
        token.add_signature(key, alg=args.alg, protected=_json_compact(header))
        compact = token.serialize(compact=True)
    except Exception as exc:
        raise ToolError(f"signing with {args.alg} failed: {exc}") from exc

    sys.stdout.write(compact + "\n")
    return 0


# ---------------------------------------------------------------- verify


def _load_jwks(path):
    data = _read_text(path, "JWKS file")
    obj = _parse_json(data, f"JWKS file {path!r}")
    if not isinstance(obj, dict) or not isinstance(obj.get("keys"), list):
        raise ToolError(f"JWKS file {path!r} has no \"keys\" array")
    keys = []
    for idx, entry in enumerate(obj["keys"]):
        if not isinstance(entry, dict):
            raise ToolError(f"JWKS key #{idx} is not an object")
        try:
            keys.append((entry, jwk.JWK(**entry)))
        except Exception as exc:
            raise ToolError(f"JWKS key #{idx} is invalid: {exc}") from exc
    if not keys:
        raise ToolError(f"JWKS file {path!r} contains no keys")
    return keys


def _select_key(keys, header):
    kid = header.get("kid")
    if kid is not None:
        if not isinstance(kid, str):
            raise ToolError("header kid is not a string")
        matches = [k for k in keys if k[0].get("kid") == kid]
        if not matches:
            raise ToolError(f"no key with kid {kid!r} in JWKS")
        if len(matches) > 1:
            raise ToolError(f"kid {kid!r} is ambiguous in JWKS")
        return matches[0]
    if len(keys) != 1:
        raise ToolError("token header has no kid and JWKS has more than one key")
    return keys[0]


def cmd_verify(args):
    allowed = args.alg if args.alg else list(DEFAULT_ALLOWED_ALGS)
    if "none" in allowed:
        raise ToolError("alg 'none' cannot be allowed")

    raw = _read_text(args.token, "token").strip()
    parts = raw.split(".")
    if len(parts) != 3:
        raise ToolError("token is not a compact JWS (expected 3 parts)")
    if not parts[2]:
        raise ToolError("token has an empty signature")

    try:
        header_text = _b64url_decode(parts[0], "header").decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise ToolError("token header is not valid UTF-8") from exc
    header = _parse_json(header_text, "token header")
    if not isinstance(header, dict):
        raise ToolError("token header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise ToolError("token header has no alg")
    if alg not in allowed:
        raise ToolError(f"alg {alg!r} is not allowed (allowed: {', '.join(allowed)})")

    entry, key = _select_key(_load_jwks(args.jwks), header)
    if entry.get("use") not in (None, "sig"):
        raise ToolError(f"selected key has use {entry.get('use')!r}, not 'sig'")
    if entry.get("alg") is not None and entry.get("alg") != alg:
        raise ToolError(
            f"selected key is for alg {entry.get('alg')!r}, token uses {alg!r}"
        )

    try:
        token = jws.JWS()
        token.allowed_algs = list(allowed)
        token.deserialize(raw)
        token.verify(key, alg=alg)
    except Exception as exc:
        msg = str(exc) or type(exc).__name__
        raise ToolError(f"signature verification failed: {msg}") from exc

    try:
        payload_text = token.payload.decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise ToolError("token payload is not valid UTF-8") from exc
    claims = _parse_json(payload_text, "token claims")
    if not isinstance(claims, dict):
        raise ToolError("token claims are not a JSON object")

    sys.stdout.write(_json_compact({"header": header, "claims": claims}) + "\n")
    return 0


# ---------------------------------------------------------------- main


def build_parser():
    parser = _Parser(prog=PROG, description="Independent JOSE tool for interop tests")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("keygen", help="generate a signing key")
    p.add_argument("--alg", required=True, choices=sorted(KEYGEN_PARAMS))
    p.add_argument("--kid", required=True)
    p.add_argument("--private", required=True, metavar="OUT_PRIVATE_JWK_JSON")
    p.add_argument("--jwks", required=True, metavar="OUT_PUBLIC_JWKS_JSON")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="sign claims as a compact JWS")
    p.add_argument("--key", required=True, metavar="PRIVATE_JWK_JSON_OR_PEM")
    p.add_argument("--kid")
    p.add_argument("--alg", required=True)
    typ = p.add_mutually_exclusive_group()
    typ.add_argument("--typ")
    typ.add_argument("--no-typ", action="store_true")
    p.add_argument("--claims", required=True, metavar="CLAIMS_JSON_FILE_OR_-")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("verify", help="verify a compact JWS against a JWKS")
    p.add_argument("--jwks", required=True, metavar="JWKS_FILE")
    p.add_argument("--token", required=True, metavar="TOKEN_FILE_OR_-")
    p.add_argument(
        "--alg",
        action="extend",
        nargs="+",
        metavar="ALG",
        help="allowed algorithm(s); repeatable (default: %s)"
        % " ".join(DEFAULT_ALLOWED_ALGS),
    )
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ToolError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return 1
    except Exception as exc:  # never leak a traceback: one line, exit 1
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
