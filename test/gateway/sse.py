#!/usr/bin/env python3
"""Server-sent events of the gateway's streaming endpoints, read the way an
OpenAI client reads them. Standard library only (runs with the system python3).

    sse.py check < body
        Parses a whole streamed response body. Exits 1 with a message if the
        framing is not OpenAI's: events of exactly one `data: <json>` line
        followed by a blank line, the last one `data: [DONE]`, nothing after it.
        Else prints a JSON summary: chunks (number of JSON events), objects
        (their "object" values), ids (distinct "id" values), text (the pieces
        concatenated per choice index), finish (finish_reason per index),
        usage (of the last chunk that has one), usage_last (whether that chunk
        is the last JSON event and has "choices": []).

    sse.py probe URL KEY BODY [--check CMD] [--close]
        POSTs BODY to URL with the key and reads the stream incrementally. As
        soon as the first data event has arrived it runs the shell command CMD
        (if any) and keeps its output. With --close it then closes the socket
        at once (a client that goes away mid-generation); otherwise it reads to
        the end. Prints a JSON summary: status, content_type, check (CMD's
        output), events_before_check (1), events (data events read in all,
        [DONE] excluded), done (whether [DONE] came), closed_early.
"""

import http.client
import json
import socket
import subprocess
import sys
import urllib.parse


def parse(raw):
    if not raw.endswith("\n\n"):
        raise ValueError("the body does not end with a blank line")
    events = raw[:-2].split("\n\n")
    chunks = []
    for n, ev in enumerate(events):
        lines = ev.split("\n")
        if len(lines) != 1 or not lines[0].startswith("data: "):
            raise ValueError("event %d is not one 'data: ' line: %r" % (n, ev[:200]))
        payload = lines[0][len("data: "):]
        if payload == "[DONE]":
            if n != len(events) - 1:
                raise ValueError("data: [DONE] is event %d of %d" % (n, len(events)))
            return chunks
        try:
            chunks.append(json.loads(payload))
        except ValueError as e:
            raise ValueError("event %d is not JSON (%s): %r" % (n, e, payload[:200]))
    raise ValueError("no data: [DONE] at the end")


def summary(chunks):
    text, finish, usage, usage_at = {}, {}, None, None
    for i, c in enumerate(chunks):
        for ch in c.get("choices") or []:
            idx = ch.get("index", 0)
            piece = ch.get("text")
            if piece is None:
                piece = (ch.get("delta") or {}).get("content") or ""
            text[idx] = text.get(idx, "") + piece
            if ch.get("finish_reason") is not None:
                finish[idx] = ch["finish_reason"]
        if c.get("usage"):
            usage, usage_at = c["usage"], i
    last = chunks[-1] if chunks else {}
    return {
        "chunks": len(chunks),
        "objects": sorted({c.get("object") for c in chunks if c.get("object")}),
        "ids": sorted({c.get("id") for c in chunks if c.get("id")}),
        "text": [text[k] for k in sorted(text)],
        "finish": [finish.get(k) for k in sorted(text)],
        "usage": usage,
        "usage_last": usage_at == len(chunks) - 1 and last.get("choices") == [],
    }


def check():
    raw = sys.stdin.buffer.read().decode("utf-8")
    try:
        chunks = parse(raw)
    except ValueError as e:
        print("bad framing: %s" % e)
        return 1
    print(json.dumps(summary(chunks)))
    return 0


def probe(argv):
    url, key, body = argv[0], argv[1], argv[2]
    cmd = None
    close = "--close" in argv
    if "--check" in argv:
        cmd = argv[argv.index("--check") + 1]
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("POST", u.path, body=body.encode(),
                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    sock = conn.sock  # getresponse() may drop conn.sock when the server will close
    resp = conn.getresponse()
    out = {"status": resp.status, "content_type": resp.getheader("content-type"), "check": None,
           "events_before_check": 0, "events": 0, "done": False, "closed_early": False}
    if resp.status != 200:
        out["body"] = resp.read().decode("utf-8", "replace")[:500]
        print(json.dumps(out))
        return 0
    checked = False
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            out["done"] = True
            break
        out["events"] += 1
        if not checked:
            checked = True
            out["events_before_check"] = out["events"]
            if cmd:
                out["check"] = subprocess.run(cmd, shell=True, capture_output=True,
                                              text=True).stdout.strip()
            if close:
                # a client that goes away: no more reads, the connection dropped
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                out["closed_early"] = True
                break
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        sys.exit(check())
    if len(sys.argv) >= 5 and sys.argv[1] == "probe":
        sys.exit(probe(sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
