#!/usr/bin/env python3
"""An RFC 8935 push receiver served by hypercorn (an independent HTTP/1.1 + HTTP/2 server),
for the hub's HTTP/2 tests. For every POST it appends one JSON line to --out: the request path,
the HTTP version the server saw (`scope["http_version"]`: "1.1" or "2"), the client's source
port (one port = one connection), and the body (the SET); it answers 202.

    h2_receiver.py --port N --out FILE [--certfile F --keyfile K] [--no-h2]

With --certfile/--keyfile it serves TLS and offers `h2` and `http/1.1` by ALPN (only
`http/1.1` with --no-h2). Without them it serves cleartext HTTP/1.1 and also accepts HTTP/2 with
prior knowledge (h2c: hypercorn switches when it sees the HTTP/2 connection preface).
"""

import argparse
import asyncio
import json

from hypercorn.asyncio import serve
from hypercorn.config import Config


def make_app(out_path):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 405, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        record = {
            "path": scope["path"],
            "http_version": scope["http_version"],
            "client_port": (scope.get("client") or [None, None])[1],
            "set": body.decode("utf-8", "replace"),
        }
        # One line per request, written whole and flushed before answering: once the hub
        # sees the 202, the test can read the line.
        with open(out_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--certfile")
    p.add_argument("--keyfile")
    p.add_argument("--no-h2", action="store_true")
    args = p.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    # Idle connections stay up for the whole test: one connection is what the tests count.
    config.keep_alive_timeout = 120
    config.accesslog = None
    if args.certfile:
        config.certfile = args.certfile
        config.keyfile = args.keyfile
        config.alpn_protocols = ["http/1.1"] if args.no_h2 else ["h2", "http/1.1"]
    asyncio.run(serve(make_app(args.out), config))


if __name__ == "__main__":
    main()
