#!/usr/bin/env python3
"""A minimal SSF receiver written independently of the hub (Python stdlib + jwcrypto).

It knows only an issuer URL and a bearer token, as a real gateway would:

  ssf_receiver.py setup  ISSUER TOKEN   discover, create a poll stream, verify it end to end
  ssf_receiver.py poll   ISSUER TOKEN STREAM_ID [N]   long-poll until N event SETs arrived,
                                                      validate and acknowledge them

Every SET is checked the way the SSF 1.0 / CAEP interop conformance rules ask: signature
against the transmitter's jwks_uri (refetched once on an unknown kid), typ secevent+jwt,
iss == discovered issuer, aud == the stream's aud, iat not in the future, no sub/exp,
exactly one event, sub_id present. Prints one JSON object; exits 1 with a message on failure.
"""

import json
import secrets
import sys
import time
import urllib.request
from urllib.parse import urlsplit

from jwcrypto import jwk, jws

SET_TYP = "secevent+jwt"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"


def call(method, url, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def discover(issuer):
    # RFC 8615 style: the well-known segment goes between host and path (SSF 7.2.1).
    parts = urlsplit(issuer.rstrip("/"))
    url = f"{parts.scheme}://{parts.netloc}/.well-known/ssf-configuration{parts.path}"
    status, meta = call("GET", url)
    if status != 200 or meta.get("issuer") != issuer:
        fail(f"discovery failed or issuer mismatch ({status})")
    return meta


class Keys:
    def __init__(self, jwks_uri):
        self.jwks_uri = jwks_uri
        self.refreshes = 0
        self.load()

    def load(self):
        with urllib.request.urlopen(self.jwks_uri, timeout=30) as resp:
            self.set = jwk.JWKSet.from_json(resp.read())

    def find(self, kid):
        key = self.set.get_key(kid)
        if key is None and self.refreshes < 1:
            self.refreshes += 1
            self.load()
            key = self.set.get_key(kid)
        return key


def validate(token, keys, issuer, aud):
    obj = jws.JWS()
    obj.deserialize(token)
    header = obj.jose_header
    if header.get("typ") != SET_TYP:
        fail("typ is not secevent+jwt")
    if header.get("alg") not in ("ES256", "RS256"):
        fail("unexpected alg")
    key = keys.find(header.get("kid"))
    if key is None:
        fail("kid not in the transmitter's JWKS")
    obj.verify(key, alg=header["alg"])
    claims = json.loads(obj.payload)
    if claims.get("iss") != issuer:
        fail("iss differs from the discovered issuer")
    if claims.get("aud") != aud:
        fail("aud differs from the stream's aud")
    if "sub" in claims or "exp" in claims:
        fail("sub or exp present")
    if claims["iat"] > time.time() + 5:
        fail("iat in the future")
    if len(claims.get("events", {})) != 1:
        fail("not exactly one event")
    if "sub_id" not in claims:
        fail("no sub_id")
    return header, claims


def setup(issuer, token):
    meta = discover(issuer)
    for field in ("configuration_endpoint", "verification_endpoint", "status_endpoint", "jwks_uri"):
        if field not in meta:
            fail(f"metadata lacks {field}")
    if "urn:ietf:rfc:8936" not in meta.get("delivery_methods_supported", []):
        fail("poll delivery not supported")
    status, stream = call("POST", meta["configuration_endpoint"], token, {
        "events_requested": ["https://schemas.openid.net/secevent/caep/event-type/session-revoked"],
        "description": "python interop receiver",
    })
    if status != 201 or stream.get("iss") != issuer:
        fail(f"create stream answered {status}")
    if stream["delivery"]["method"] != "urn:ietf:rfc:8936":
        fail("a stream without delivery must be poll")
    state = secrets.token_urlsafe(16)
    status, _ = call("POST", meta["verification_endpoint"], token,
                     {"stream_id": stream["stream_id"], "state": state})
    if status != 204:
        fail(f"verification request answered {status}")
    keys = Keys(meta["jwks_uri"])
    status, resp = call("POST", stream["delivery"]["endpoint_url"], token, {"maxEvents": 10})
    if status != 200 or len(resp["sets"]) != 1:
        fail(f"poll for the verification SET answered {status}")
    jti, token_text = next(iter(resp["sets"].items()))
    header, claims = validate(token_text, keys, issuer, stream["aud"])
    event = claims["events"].get(VERIFICATION)
    if event is None or event.get("state") != state:
        fail("verification state not echoed")
    if claims["sub_id"] != {"format": "opaque", "id": stream["stream_id"]}:
        fail("verification sub_id is not the stream id")
    status, resp = call("POST", stream["delivery"]["endpoint_url"], token,
                        {"ack": [jti], "maxEvents": 0, "returnImmediately": True})
    if status != 200 or resp["sets"]:
        fail("acknowledge-only request failed")
    status, st = call("GET", f"{meta['status_endpoint']}?stream_id={stream['stream_id']}", token)
    if status != 200 or st.get("status") != "enabled":
        fail("stream is not enabled")
    print(json.dumps({"stream_id": stream["stream_id"], "aud": stream["aud"],
                      "kid": header["kid"], "verified": True}))


def poll(issuer, token, stream_id, want):
    meta = discover(issuer)
    status, stream = call("GET", f"{meta['configuration_endpoint']}?stream_id={stream_id}", token)
    if status != 200:
        fail(f"read stream answered {status}")
    keys = Keys(meta["jwks_uri"])
    got, acks = [], []
    deadline = time.time() + 60
    while len(got) < want and time.time() < deadline:
        # Combined acknowledge-and-poll, long-polling (returnImmediately defaults to false).
        status, resp = call("POST", stream["delivery"]["endpoint_url"], token,
                            {"ack": acks, "maxEvents": 50})
        if status != 200:
            fail(f"poll answered {status}")
        acks = []
        for jti, text in resp["sets"].items():
            _, claims = validate(text, keys, issuer, stream["aud"])
            acks.append(jti)
            got.append({"jti": jti, "event": next(iter(claims["events"])), "sub_id": claims["sub_id"]})
    if acks:
        call("POST", stream["delivery"]["endpoint_url"], token,
             {"ack": acks, "maxEvents": 0, "returnImmediately": True})
    if len(got) < want:
        fail(f"only {len(got)} of {want} SETs arrived")
    print(json.dumps({"received": got, "jwks_refreshes": keys.refreshes}))


def fail(message):
    print(f"ssf_receiver: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    try:
        if len(sys.argv) >= 4 and sys.argv[1] == "setup":
            setup(sys.argv[2], sys.argv[3])
        elif len(sys.argv) >= 5 and sys.argv[1] == "poll":
            poll(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 1)
        else:
            fail("usage: ssf_receiver.py setup ISSUER TOKEN | poll ISSUER TOKEN STREAM_ID [N]")
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line for the calling test
        fail(f"{type(e).__name__}: {e}")
