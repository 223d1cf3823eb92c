#!/usr/bin/env python3
"""Evaluates a Python expression over a JSON document, for the gateway's shell
tests: `jx.py FILE EXPR [NAME=JSON ...]`. The document is `d`; each NAME=JSON
argument binds NAME to that JSON value (so SQL can hand over to_jsonb(...)
text without quoting trouble). Prints the result: strings as they are, other
values as JSON (so a comparison prints true or false). Prints nothing and exits
1 when FILE is not JSON or the expression fails (a missing key, say).
Standard library only.
"""

import json
import sys


def main():
    path, expr = sys.argv[1], sys.argv[2]
    env = {}
    for a in sys.argv[3:]:
        name, _, value = a.partition("=")
        env[name] = json.loads(value)
    try:
        with open(path, encoding="utf-8") as f:
            env["d"] = json.load(f)
        r = eval(expr, {"__builtins__": __builtins__}, env)
    except Exception:
        return 1
    print(r if isinstance(r, str) else json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
