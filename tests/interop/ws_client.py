#!/usr/bin/env python3
"""An independent websocket client (Python `websockets`) for the hub's live feeds.

  ws_client.py collect URL TOKEN N [TIMEOUT]   read until N items arrived (or a cut_off frame,
                                               or TIMEOUT seconds); print what arrived
  ws_client.py slow URL TOKEN SECONDS          connect with a tiny receive buffer, read nothing
                                               for SECONDS, then read until the hub closes

Prints one JSON object: {"positions": [...], "types": [...], "cut_off": P or null,
"frames": n}. Exits 1 with a message on failure.
"""

import json
import socket
import sys
import time
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def open_ws(url, token, small_buffer=False):
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small_buffer:
        # A fixed, tiny receive buffer turns off autotuning: a client that does not read makes
        # the hub's socket writes block, which is what a slow consumer looks like.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    return connect(url, sock=sock, additional_headers={"Authorization": "Bearer " + token},
                   max_size=None, open_timeout=10)


def read(ws, want, deadline, out):
    while (want is None or len(out["positions"]) < want) and time.time() < deadline:
        try:
            raw = ws.recv(timeout=max(0.05, deadline - time.time()))
        except TimeoutError:
            break
        except ConnectionClosed:
            break
        frame = json.loads(raw)
        out["frames"] += 1
        if frame["type"] == "cut_off":
            out["cut_off"] = frame["position"]
            break
        if frame["type"] != "events":
            fail("unknown frame type")
        if frame["position"] != frame["items"][-1]["position"]:
            fail("frame position is not its last item's")
        for item in frame["items"]:
            if want is not None and len(out["positions"]) == want:
                break  # like a client that stops mid-frame and later resumes from its position
            out["positions"].append(item["position"])
            out["types"].append(item.get("event_type") or item.get("cause", {}).get("event_type"))


def main():
    mode = sys.argv[1]
    out = {"positions": [], "types": [], "cut_off": None, "frames": 0}
    if mode == "collect":
        url, token, want = sys.argv[2], sys.argv[3], int(sys.argv[4])
        timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
        with open_ws(url, token) as ws:
            read(ws, want, time.time() + timeout, out)
    elif mode == "slow":
        url, token, pause = sys.argv[2], sys.argv[3], float(sys.argv[4])
        with open_ws(url, token, small_buffer=True) as ws:
            time.sleep(pause)
            read(ws, None, time.time() + 60, out)
    else:
        fail("usage: ws_client.py collect URL TOKEN N [TIMEOUT] | slow URL TOKEN SECONDS")
    print(json.dumps(out))


def fail(message):
    print(f"ws_client: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line for the calling test
        fail(f"{type(e).__name__}: {e}")
