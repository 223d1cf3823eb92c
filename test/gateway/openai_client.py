#!/usr/bin/env python3
"""The official openai Python client against mms-gateway, run by
test/pg/t_gateway.sh with the python of `tools/venv.sh gateway`. Prints
"ok: ..." / "FAILED: ..." lines like the other scripted tests.

Environment (set by t_gateway.sh): GW_URL (http://127.0.0.1:PORT), GW_DB (the
database, for psql; PGHOST/PGPORT/PGUSER reach it), K_ALICE (a key whose role
may use flan, short and long), K_BOB (a role without grants), K_QUOTA (a role
with requests_per_minute 2 on flan, already spent).

What it checks: completions with and without streaming (the stream's pieces
make the same text; include_usage puts usage on a last chunk without choices;
with a long generation the first chunk is in hand while the database is still
generating), chat completions with and without streaming, models.list and
models.retrieve, and that each error status maps to the client's exception
class with the gateway's error object as its body.
"""

import os
import subprocess
import sys

import openai
from openai import OpenAI

def ok(msg):
    print("ok: openai client: " + msg)


def bad(msg):
    print("FAILED: openai client: " + msg)


def active():
    """Gateway backends running a completion now."""
    q = ("SELECT count(*) FROM pg_stat_activity WHERE usename = 'regress_gw_login' "
         "AND state = 'active' AND query LIKE '%mms_api_completions%'")
    return subprocess.run(["psql", "-X", "-At", "-d", os.environ["GW_DB"], "-c", q],
                          capture_output=True, text=True).stdout.strip()


def check(what, fn):
    """Runs one check; an exception is a failure, not the end of the script."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report whatever went wrong
        bad("%s: %s: %s" % (what, type(e).__name__, e))


base = os.environ["GW_URL"] + "/v1"
# max_retries=0: the client would otherwise retry 429 and 5xx by itself
alice = OpenAI(base_url=base, api_key=os.environ["K_ALICE"], max_retries=0, timeout=120)
fox = "The quick brown fox"


def completions():
    r = alice.completions.create(model="flan", prompt=fox, max_tokens=8, temperature=0,
                                 extra_body={"min_tokens": 8})
    c = r.choices[0]
    if (r.object == "text_completion" and isinstance(c.text, str) and c.finish_reason == "length"
            and r.usage.completion_tokens == 8
            and r.usage.total_tokens == r.usage.prompt_tokens + 8):
        ok("completions.create: text_completion, 8 tokens, finish_reason length")
    else:
        bad("completions.create: %r" % r)
    s = alice.completions.create(model="flan", prompt=fox, max_tokens=8, temperature=0,
                                 extra_body={"min_tokens": 8}, stream=True,
                                 stream_options={"include_usage": True})
    chunks = list(s)
    text = "".join(ch.text for k in chunks for ch in k.choices)
    last = chunks[-1]
    if text == c.text and last.choices == [] and last.usage == r.usage and len(chunks) >= 3:
        ok("completions.create(stream=True): %d chunks make the same text; include_usage: "
           "a last chunk without choices carries the same usage" % len(chunks))
    else:
        bad("stream: %r vs %r, last chunk %r" % (text, c.text, last))
    r2 = alice.completions.create(model="flan", prompt=["one", "two words"], max_tokens=5,
                                  temperature=0)
    if [ch.index for ch in r2.choices] == [0, 1]:
        ok("completions.create with a list prompt: choices 0 and 1")
    else:
        bad("list prompt: %r" % r2)


def before_the_end():
    s = alice.completions.create(model="long", prompt="normalize date: March 3rd, 2021",
                                 max_tokens=1000, temperature=0, stream=True,
                                 extra_body={"min_tokens": 1000})
    n, during = 0, None
    for _ in s:
        n += 1
        if n == 1:
            during = active()
    if during == "1" and n > 1:
        ok("stream: the first chunk was iterated while the gateway's statement still ran "
           "(%d chunks in all)" % n)
    else:
        bad("stream before the end: %s statements active at the first chunk, %d chunks" % (during, n))


def chat():
    r = alice.chat.completions.create(model="flan", max_tokens=4,
                                      messages=[{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hello"}])
    m = r.choices[0].message
    if r.object == "chat.completion" and m.role == "assistant" and isinstance(m.content, str):
        ok("chat.completions.create: an assistant message")
    else:
        bad("chat: %r" % r)
    s = alice.chat.completions.create(model="flan", max_tokens=4, stream=True,
                                      messages=[{"role": "user", "content": "hello"}])
    chunks = list(s)
    text = "".join(ch.delta.content or "" for k in chunks for ch in k.choices)
    if all(k.object == "chat.completion.chunk" for k in chunks) and isinstance(text, str) and chunks:
        ok("chat.completions.create(stream=True): %d chat.completion.chunk" % len(chunks))
    else:
        bad("chat stream: %r" % chunks)


def models():
    ids = sorted(m.id for m in alice.models.list())
    if ids == ["flan", "long", "short"]:
        ok("models.list: flan, long, short")
    else:
        bad("models.list: %r" % ids)
    m = alice.models.retrieve("flan")
    if m.id == "flan":
        ok("models.retrieve('flan')")
    else:
        bad("models.retrieve: %r" % m)


def expect_error(what, cls, fn, status):
    try:
        fn()
    except cls as e:
        body = e.body if isinstance(e.body, dict) else {}
        if e.status_code == status and body.get("message") and "sqlstate" in body:
            ok("%s: %s (%d, type %s, sqlstate %s)" % (what, cls.__name__, status,
                                                      body.get("type"), body.get("sqlstate")))
        else:
            bad("%s: %s with status %s, body %r" % (what, cls.__name__, e.status_code, e.body))
        return e
    except Exception as e:  # noqa: BLE001
        bad("%s: %s instead of %s: %s" % (what, type(e).__name__, cls.__name__, e))
        return None
    bad("%s: no error" % what)
    return None


def errors():
    wrong = OpenAI(base_url=base, api_key="mms-" + "0" * 64, max_retries=0)
    expect_error("an unknown key", openai.AuthenticationError,
                 lambda: wrong.models.list(), 401)
    expect_error("models.delete with a key that is not admin", openai.PermissionDeniedError,
                 lambda: alice.models.delete("flan"), 403)
    # a model the role may not use does not exist for it
    bob = OpenAI(base_url=base, api_key=os.environ["K_BOB"], max_retries=0)
    expect_error("a model not granted", openai.NotFoundError,
                 lambda: bob.completions.create(model="flan", prompt="x", max_tokens=2), 404)
    expect_error("an unknown model", openai.NotFoundError,
                 lambda: alice.completions.create(model="nosuch", prompt="x"), 404)
    expect_error("an unknown parameter", openai.BadRequestError,
                 lambda: alice.completions.create(model="flan", prompt="x",
                                                  extra_body={"bogus": 1}), 400)
    expect_error("a negative temperature", openai.BadRequestError,
                 lambda: alice.completions.create(model="flan", prompt="x", temperature=-1), 400)
    quota = OpenAI(base_url=base, api_key=os.environ["K_QUOTA"], max_retries=0)

    def spend():
        # the bucket refills 2 a minute: at most 2 more calls can pass before a 429
        for _ in range(3):
            quota.completions.create(model="flan", prompt="x", max_tokens=2)
    e = expect_error("a spent requests_per_minute quota", openai.RateLimitError, spend, 429)
    if e is not None:
        ra = e.response.headers.get("retry-after")
        if ra and ra.isdigit():
            ok("RateLimitError's response has Retry-After: %s" % ra)
        else:
            bad("RateLimitError without Retry-After: %r" % dict(e.response.headers))


def raw_headers():
    r = alice.completions.with_raw_response.create(model="flan", prompt="x", max_tokens=2,
                                                   extra_headers={"x-request-id": "regress-openai-7"})
    if r.headers.get("x-request-id") == "regress-openai-7" and r.parse().choices:
        ok("with_raw_response: x-request-id echoed")
    else:
        bad("raw response headers: %r" % dict(r.headers))


check("completions", completions)
check("stream before the end", before_the_end)
check("chat", chat)
check("models", models)
check("errors", errors)
check("raw headers", raw_headers)
sys.exit(0)
