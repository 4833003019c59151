#!/usr/bin/env python3
"""An independent SSF 1.0 transmitter for the hub's upstream tests.

Standard library HTTP server (one thread per request) and jwcrypto for JOSE,
so nothing is shared with the hub's Rust implementation. Its state (signing
key, streams, status, poll queues, undelivered pushes, counters) is kept in a
JSON file, so the test can kill it and start it again on the same port and
state, as a restarted transmitter.

    ssf_transmitter.py --port P --state FILE --token TOKEN --aud AUD
                       [--tenant /tenants/acme] [--mode MODE]
                       [--client-id ID --client-secret SECRET]

The issuer is http://127.0.0.1:P<tenant> (path-suffixed), its metadata at
/.well-known/ssf-configuration<tenant>. Prints "READY" once it listens.

SSF endpoints (Bearer TOKEN, or a token from /token, required except for
metadata, keys and /token):
  POST /token                                     OAuth 2.0 client credentials
                                                  (client_secret_basic)
  GET  /.well-known/ssf-configuration<tenant>     metadata
  GET  /jwks                                      public keys
  POST|GET|PATCH|PUT|DELETE /streams              stream management (SSF §8.1.1)
  GET|POST /status                                stream status (SSF §8.1.2)
  POST /verify                                    verification (SSF §8.1.4)
  POST /poll/<stream_id>                          RFC 8936 poll

Test hooks (no authentication; loopback only):
  POST /admin/emit   {"count": n, "email": "...", "aud": "..."}  one CAEP
                     session-revoked SET per count to every enabled stream
                     (push now, or queue); `aud` overrides the audience
  POST /admin/status {"status": "paused", "reason": "..."}  change every
                     stream's status and announce it with stream-updated
  POST /admin/mode   {"mode": "..."}  normal | bad_issuer | bad_aud |
                     no_events_delivered | poll_only | push_only | legacy |
                     ssrf (jwks_uri on a private address) | no_patch
                     (stream updates only by PUT) | wrong_state
                     (verification SETs echo another state)
                     (legacy: a pre-1.0 peer: metadata at
                     /.well-known/sse-configuration, no spec_version, RISC
                     delivery-method URIs, ID1 `delivery_method`/`url`
                     keys, SETs with typ JWT, old event URIs and the
                     subject inside the event with `subject_type`)
  POST /admin/backlog {"count": n}  queue n SETs on every poll stream at once
  GET  /admin/state  counters, streams, queue lengths, setErrs received
"""

import argparse
import itertools
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from jwcrypto import jwk, jws

PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
LEGACY_PUSH = "https://schemas.openid.net/secevent/risc/delivery-method/push"
LEGACY_POLL = "https://schemas.openid.net/secevent/risc/delivery-method/poll"
LEGACY_VERIFICATION = "https://schemas.openid.net/secevent/risc/event-type/verification"
LEGACY_STREAM_UPDATED = "https://schemas.openid.net/secevent/caep/event-type/stream-updated"
LEGACY_SESSION_REVOKED = "http://schemas.openid.net/secevent/caep/event-type/session-revoked"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
SUPPORTED = [
    SESSION_REVOKED,
    "https://schemas.openid.net/secevent/caep/event-type/credential-change",
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
]

LOCK = threading.RLock()
CHANGED = threading.Condition(LOCK)


class Transmitter:
    def __init__(self, args):
        self.args = args
        self.base = f"http://127.0.0.1:{args.port}"
        self.issuer = self.base + args.tenant
        if os.path.exists(args.state):
            with open(args.state) as f:
                self.state = json.load(f)
        else:
            key = jwk.JWK.generate(kty="EC", crv="P-256", kid="tx-" + uuid.uuid4().hex[:8])
            self.state = {
                "key": json.loads(key.export_private()),
                "streams": {},
                "status": {},
                "queues": {},
                "undelivered": [],
                "creates": 0,
                "polls": 0,
                "verify_requests": 0,
                "pushed": 0,
                "set_errs": {},
                "mode": args.mode,
            }
        if args.mode != "normal":
            self.state["mode"] = args.mode
        self.key = jwk.JWK(**self.state["key"])
        # Access tokens handed out by /token (lost on restart, as a real AS's might be).
        self.issued = set()
        self.save()

    def save(self):
        if self.args.volatile:
            return
        tmp = self.args.state + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.args.state)

    # --- SETs -----------------------------------------------------------

    def legacy(self):
        return self.state["mode"] == "legacy"

    def sign(self, claims):
        token = jws.JWS(json.dumps(claims).encode())
        typ = "JWT" if self.legacy() else "secevent+jwt"
        header = {"alg": "ES256", "typ": typ, "kid": self.state["key"]["kid"]}
        token.add_signature(self.key, None, json.dumps(header))
        return token.serialize(compact=True)

    def make_set(self, stream, event, payload, sub_id, aud=None):
        jti = uuid.uuid4().hex
        claims = {
            "iss": self.issuer,
            "aud": aud or self.args.aud,
            "iat": int(time.time()),
            "jti": jti,
            "sub_id": sub_id,
            "events": {event: payload},
        }
        if self.legacy():
            # Pre-1.0 spellings (SSF digest §14.1).
            old = {
                VERIFICATION: LEGACY_VERIFICATION,
                STREAM_UPDATED: LEGACY_STREAM_UPDATED,
                SESSION_REVOKED: LEGACY_SESSION_REVOKED,
            }.get(event, event)
            subject = dict(sub_id)
            subject["subject_type"] = subject.pop("format")
            if event == SESSION_REVOKED:
                del claims["sub_id"]
                payload = dict(payload, subject=subject)
            claims["events"] = {old: payload}
        return jti, self.sign(claims)

    def deliver(self, stream_id, jti, token):
        """Push now (kept for retry when the receiver is down), or queue for poll."""
        stream = self.state["streams"].get(stream_id)
        if stream is None:
            return
        if stream["delivery"]["method"] in (POLL, LEGACY_POLL):
            # jti → SET, in insertion order: acknowledging one is O(1).
            self.state["queues"].setdefault(stream_id, {})[jti] = token
            CHANGED.notify_all()
        else:
            self.state["undelivered"].append([stream_id, jti, token])
        self.save()

    def push_pending(self):
        """Tries every undelivered push once; keeps the ones that failed."""
        with LOCK:
            pending = list(self.state["undelivered"])
        done = []
        for item in pending:
            stream_id, jti, token = item
            with LOCK:
                stream = self.state["streams"].get(stream_id)
            if stream is None:
                done.append(item)
                continue
            d = stream["delivery"]
            req = urllib.request.Request(d["endpoint_url"], data=token.encode(), method="POST")
            req.add_header("Content-Type", "application/secevent+jwt")
            req.add_header("Accept", "application/json")
            if d.get("authorization_header"):
                req.add_header("Authorization", d["authorization_header"])
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    ok = resp.status == 202
            except urllib.error.HTTPError as e:
                # A SET the receiver refused for good is not retried (RFC 8935 §2.3).
                ok = e.code == 400
                if ok:
                    with LOCK:
                        self.state["set_errs"][jti] = json.loads(e.read() or b"{}")
            except Exception:
                ok = False
            if ok:
                done.append(item)
        with LOCK:
            for item in done:
                if item in self.state["undelivered"]:
                    self.state["undelivered"].remove(item)
                    self.state["pushed"] += 1
            self.save()
        return len(done)

    def emit(self, body):
        count = int(body.get("count", 1))
        email = body.get("email", "user@example.com")
        jtis = []
        with LOCK:
            for stream_id, stream in self.state["streams"].items():
                if self.state["status"].get(stream_id, {}).get("status", "enabled") != "enabled":
                    continue
                for _ in range(count):
                    jti, token = self.make_set(
                        stream,
                        SESSION_REVOKED,
                        {"event_timestamp": int(time.time())},
                        {"format": "email", "email": email},
                        body.get("aud"),
                    )
                    self.deliver(stream_id, jti, token)
                    jtis.append(jti)
        self.push_pending()
        return {"jtis": jtis}

    def announce(self, stream_id, status, reason=None):
        payload = {"status": status}
        if reason:
            payload["reason"] = reason
        jti, token = self.make_set(
            self.state["streams"][stream_id],
            STREAM_UPDATED,
            payload,
            {"format": "opaque", "id": stream_id},
        )
        self.deliver(stream_id, jti, token)

    # --- stream answers -----------------------------------------------------

    def render(self, stream):
        out = json.loads(json.dumps(stream))
        mode = self.state["mode"]
        if mode == "bad_aud":
            out["aud"] = "https://someone-else.example"
        if mode == "no_events_delivered":
            out.pop("events_delivered", None)
        if mode == "legacy":
            d = out["delivery"]
            out["delivery"] = {"delivery_method": d["method"]}
            if "endpoint_url" in d:
                out["delivery"]["url"] = d["endpoint_url"]
        return out

    def metadata(self):
        mode = self.state["mode"]
        methods = [PUSH, POLL]
        if mode == "poll_only":
            methods = [POLL]
        if mode == "push_only":
            methods = [PUSH]
        if mode == "legacy":
            methods = [LEGACY_PUSH, LEGACY_POLL]
        meta = {
            "spec_version": "1_0",
            "issuer": self.issuer + ("/other" if mode == "bad_issuer" else ""),
            "jwks_uri": self.base + "/jwks",
            "delivery_methods_supported": methods,
            "configuration_endpoint": self.base + "/streams",
            "status_endpoint": self.base + "/status",
            "verification_endpoint": self.base + "/verify",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
        }
        if mode == "legacy":
            del meta["spec_version"]
        if mode == "ssrf":
            # Keys "hosted" on a private address: a receiver must not be led there.
            meta["jwks_uri"] = "http://10.0.0.1/jwks"
        return meta


def make_handler(tx):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def reply(self, status, body=None, headers=()):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # The receiver gave up on a long poll (it is stopping): nothing to answer.
                pass

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            return json.loads(raw) if raw else {}

        def authorized(self):
            presented = self.headers.get("Authorization") or ""
            if presented == "Bearer " + tx.args.token:
                return True
            if presented.startswith("Bearer ") and presented[7:] in tx.issued:
                return True
            self.reply(401, {"error": "unauthorized"}, [("WWW-Authenticate", "Bearer")])
            return False

        def route(self, method):
            url = urlparse(self.path)
            path, query = url.path, parse_qs(url.query)
            qid = query.get("stream_id", [None])[0]
            if path.startswith("/admin/"):
                return self.admin(method, path)
            # A pre-1.0 (SSE ID1) transmitter publishes its metadata under the old name only.
            name = "sse-configuration" if tx.state["mode"] == "legacy" else "ssf-configuration"
            if method == "GET" and path == "/.well-known/" + name + tx.args.tenant:
                with LOCK:
                    return self.reply(200, tx.metadata())
            if path.startswith("/.well-known/"):
                return self.reply(404, {"error": "not_found"})
            if method == "GET" and path == "/jwks":
                return self.reply(200, {"keys": [json.loads(tx.key.export_public())]})
            if method == "POST" and path == "/token":
                return self.token()
            if not self.authorized():
                return
            if path == "/streams":
                return self.streams(method, qid)
            if path == "/status":
                return self.status(method, qid)
            if path == "/verify" and method == "POST":
                return self.verify()
            if path.startswith("/poll/") and method == "POST":
                return self.poll(path[len("/poll/"):])
            self.reply(404, {"error": "not_found"})

        def token(self):
            """Client credentials grant (RFC 6749 §4.4) with client_secret_basic."""
            import base64
            n = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(n).decode())
            expected = "Basic " + base64.b64encode(
                f"{tx.args.client_id}:{tx.args.client_secret}".encode()).decode()
            if not tx.args.client_id or self.headers.get("Authorization") != expected:
                return self.reply(401, {"error": "invalid_client"})
            if form.get("grant_type") != ["client_credentials"]:
                return self.reply(400, {"error": "unsupported_grant_type"})
            token = uuid.uuid4().hex
            with LOCK:
                tx.issued.add(token)
                tx.state["tokens_issued"] = tx.state.get("tokens_issued", 0) + 1
                tx.state["last_scope"] = form.get("scope", [""])[0]
            return self.reply(200, {"access_token": token, "token_type": "Bearer",
                                    "expires_in": 3600})

        def streams(self, method, qid):
            streams = tx.state["streams"]
            if method == "GET":
                with LOCK:
                    if qid is None:
                        return self.reply(200, [tx.render(s) for s in streams.values()])
                    if qid not in streams:
                        return self.reply(404, {"error": "not_found"})
                    return self.reply(200, tx.render(streams[qid]))
            if method == "DELETE":
                with LOCK:
                    if streams.pop(qid, None) is None:
                        return self.reply(404, {"error": "not_found"})
                    tx.save()
                return self.reply(204)
            body = self.body()
            delivery = body.get("delivery") or {"method": POLL}
            allowed = [PUSH, POLL]
            mode = tx.state["mode"]
            if mode == "legacy":
                allowed = [LEGACY_PUSH, LEGACY_POLL]
            if mode == "poll_only":
                allowed = [POLL]
            if mode == "push_only":
                allowed = [PUSH]
            if delivery.get("method") not in allowed:
                return self.reply(400, {"error": "invalid_request", "description": "delivery method"})
            with LOCK:
                if method == "POST":
                    stream_id = uuid.uuid4().hex
                    tx.state["creates"] += 1
                    stream = {"stream_id": stream_id, "iss": tx.issuer, "aud": tx.args.aud,
                              "events_supported": SUPPORTED,
                              "min_verification_interval": tx.args.min_verification_interval}
                    streams[stream_id] = stream
                    tx.state["status"][stream_id] = {"status": "enabled"}
                    status = 201
                elif method in ("PATCH", "PUT"):
                    if method == "PATCH" and mode == "no_patch":
                        return self.reply(405, {"error": "method"})
                    stream_id = body.get("stream_id")
                    if stream_id not in streams:
                        return self.reply(404, {"error": "not_found"})
                    stream = streams[stream_id]
                    updates = tx.state.setdefault("updates", {})
                    updates[method] = updates.get(method, 0) + 1
                    status = 200
                else:
                    return self.reply(405, {"error": "method"})
                if method != "PATCH" or "events_requested" in body:
                    stream["events_requested"] = body.get("events_requested", [])
                if method != "PATCH" or "description" in body:
                    stream["description"] = body.get("description")
                if method != "PATCH" or "delivery" in body:
                    d = dict(delivery)
                    if d["method"] in (POLL, LEGACY_POLL):
                        d = {"method": d["method"], "endpoint_url": tx.base + "/poll/" + stream_id}
                    stream["delivery"] = d
                stream["events_delivered"] = [
                    e for e in stream.get("events_requested", []) if e in SUPPORTED
                ]
                tx.save()
                return self.reply(status, tx.render(stream))

        def status(self, method, qid):
            with LOCK:
                if method == "GET":
                    if qid not in tx.state["streams"]:
                        return self.reply(404, {"error": "not_found"})
                    st = dict(tx.state["status"].get(qid, {"status": "enabled"}))
                    st["stream_id"] = qid
                    return self.reply(200, st)
                body = self.body()
                sid = body.get("stream_id")
                if sid not in tx.state["streams"]:
                    return self.reply(404, {"error": "not_found"})
                tx.state["status"][sid] = {"status": body.get("status", "enabled")}
                tx.save()
                return self.reply(200, dict(tx.state["status"][sid], stream_id=sid))

        def verify(self):
            body = self.body()
            sid = body.get("stream_id")
            with LOCK:
                if sid not in tx.state["streams"]:
                    return self.reply(404, {"error": "not_found"})
                tx.state["verify_requests"] += 1
                payload = {"state": body["state"]} if "state" in body else {}
                if tx.state["mode"] == "wrong_state" and "state" in payload:
                    payload["state"] = "not-" + payload["state"]
                jti, token = tx.make_set(
                    tx.state["streams"][sid], VERIFICATION, payload, {"format": "opaque", "id": sid}
                )
                tx.deliver(sid, jti, token)
            self.reply(204)
            # Pushes go out after the answer, as a real transmitter's queue would send them.
            threading.Thread(target=tx.push_pending, daemon=True).start()

        def poll(self, sid):
            body = self.body()
            deadline = time.time() + tx.args.long_poll
            with LOCK:
                if sid not in tx.state["streams"]:
                    return self.reply(404, {"error": "not_found"})
                tx.state["polls"] += 1
                queue = tx.state["queues"].setdefault(sid, {})
                errs = body.get("setErrs") or {}
                tx.state["set_errs"].update(errs)
                for jti in list(body.get("ack") or []) + list(errs):
                    queue.pop(jti, None)
                tx.save()
                limit = body.get("maxEvents")
                if limit == 0:
                    return self.reply(200, {"sets": {}})
                while not queue and not body.get("returnImmediately") and time.time() < deadline:
                    CHANGED.wait(max(0.0, deadline - time.time()))
                    queue = tx.state["queues"].setdefault(sid, {})
                # Unacknowledged SETs are delivered again on every poll (RFC 8936 §2.3).
                chosen = list(itertools.islice(queue.items(), limit))
                sets = dict(chosen)
                more = len(queue) > len(chosen)
            if tx.args.poll_delay:
                # A slow transmitter, so a test can stop the receiver in the middle of a drain.
                time.sleep(tx.args.poll_delay)
            self.reply(200, {"sets": sets, "moreAvailable": more})

        def admin(self, method, path):
            if path == "/admin/state" and method == "GET":
                with LOCK:
                    s = tx.state
                    return self.reply(200, {
                        "creates": s["creates"],
                        "polls": s["polls"],
                        "pushed": s["pushed"],
                        "verify_requests": s["verify_requests"],
                        "streams": list(s["streams"].values()),
                        "status": s["status"],
                        "queued": {k: len(v) for k, v in s["queues"].items()},
                        "undelivered": len(s["undelivered"]),
                        "set_errs": s["set_errs"],
                        "mode": s["mode"],
                        "tokens_issued": s.get("tokens_issued", 0),
                        "updates": s.get("updates", {}),
                        "last_scope": s.get("last_scope"),
                    })
            body = self.body()
            if path == "/admin/emit":
                return self.reply(200, tx.emit(body))
            if path == "/admin/status":
                with LOCK:
                    for sid in tx.state["streams"]:
                        # Announced before the gate closes (SSF §8.1.5).
                        tx.announce(sid, body["status"], body.get("reason"))
                        tx.state["status"][sid] = {"status": body["status"]}
                        if body.get("reason"):
                            tx.state["status"][sid]["reason"] = body["reason"]
                    tx.save()
                tx.push_pending()
                return self.reply(200, {})
            if path == "/admin/mode":
                with LOCK:
                    tx.state["mode"] = body["mode"]
                    tx.save()
                return self.reply(200, {})
            if path == "/admin/backlog":
                # N SETs queued on every poll stream at once (the drain benchmark).
                n = int(body.get("count", 1))
                with LOCK:
                    for sid, stream in tx.state["streams"].items():
                        if stream["delivery"]["method"] not in (POLL, LEGACY_POLL):
                            continue
                        queue = tx.state["queues"].setdefault(sid, {})
                        for i in range(n):
                            jti, token = tx.make_set(
                                stream, SESSION_REVOKED, {"event_timestamp": int(time.time())},
                                {"format": "email", "email": f"user{i}@example.com"})
                            queue[jti] = token
                    tx.save()
                    CHANGED.notify_all()
                return self.reply(200, {})
            if path == "/admin/push":
                return self.reply(200, {"delivered": tx.push_pending()})
            self.reply(404, {"error": "not_found"})

        def do_GET(self):
            self.route("GET")

        def do_POST(self):
            self.route("POST")

        def do_PATCH(self):
            self.route("PATCH")

        def do_PUT(self):
            self.route("PUT")

        def do_DELETE(self):
            self.route("DELETE")

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--aud", required=True)
    p.add_argument("--tenant", default="/tenants/acme")
    p.add_argument("--mode", default="normal")
    p.add_argument("--long-poll", type=float, default=1.0)
    p.add_argument("--min-verification-interval", type=int, default=1)
    p.add_argument("--poll-delay", type=float, default=0.0)
    p.add_argument("--volatile", action="store_true",
                   help="keep state in memory only (the backlog benchmark)")
    p.add_argument("--client-id", default="")
    p.add_argument("--client-secret", default="")
    args = p.parse_args()
    tx = Transmitter(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(tx))
    server.daemon_threads = True

    def retry_pushes():
        # Undelivered pushes (the receiver was down) are retried in the background.
        while True:
            time.sleep(0.3)
            with LOCK:
                waiting = bool(tx.state["undelivered"])
            if waiting:
                tx.push_pending()

    threading.Thread(target=retry_pushes, daemon=True).start()
    print("READY", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
