"""Schemathesis hooks for test/pg/t_gateway.sh (SCHEMATHESIS_HOOKS=this file).

Random model names all end in 404 before the request reaches a model: half of
the generated cases (chosen by a checksum of the case, so a seed reproduces a
run) name the model that exists, 'flan', in the body's "model" and in the
{ref} / {name} path parameters, so that fuzzed parameters reach mms_api_*, the
engine and the streaming path. DELETE keeps its random names: the run must not
delete the model it fuzzes.
"""

import zlib

import schemathesis

MODEL = "flan"


def _half(value):
    return zlib.crc32(repr(value).encode()) % 2 == 0


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    if context.operation.method.upper() != "DELETE" and _half(path_parameters):
        for name in ("ref", "name"):
            if name in path_parameters:
                path_parameters[name] = MODEL
    return path_parameters


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and "model" in body and _half(body):
        body["model"] = MODEL
    return body
