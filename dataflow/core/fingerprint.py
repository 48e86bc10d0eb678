"""The code part of a step fingerprint: editing an operator's class reruns its cached steps."""

from __future__ import annotations

import functools
import hashlib
import inspect


@functools.cache
def code_fingerprint(cls: type) -> str:
    """Hash of the source of ``cls`` and of every operator base it inherits from (the framework's own
    ``OperatorABC`` aside). Where no source can be read (a class made in a REPL), its methods' bytecode."""
    digest = hashlib.sha256()
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "abc") or klass.__qualname__ == "OperatorABC":
            continue
        digest.update(f"{klass.__module__}.{klass.__qualname__}\0".encode())
        digest.update(_class_code(klass))
    return digest.hexdigest()[:32]


def _class_code(klass: type) -> bytes:
    try:
        return inspect.getsource(klass).encode()
    except (OSError, TypeError):
        parts = []
        for name, value in sorted(vars(klass).items()):
            fn = getattr(value, "__wrapped_run__", value)
            code = getattr(getattr(fn, "__wrapped__", fn), "__code__", None)
            if code is not None:
                parts.append(name.encode() + code.co_code + repr(code.co_consts).encode())
        return b"\0".join(parts)
