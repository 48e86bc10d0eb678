"""Model servings for generate operators, under DataFlow-MM's names and import paths.

``from dataflow.serving import APIVLMServing_openai`` (or ``dataflow.serving.api_vlm_serving_openai``) for
any OpenAI-compatible server; ``LocalModelVLMServing_transformers`` and ``LocalModelVLMServing_vllm``
(``dataflow.serving.local_model_vlm_serving``) for a model run in this process. A YAML config names a
serving as a mapping, ``{serving: APIVLMServing_openai, api_url: ..., model_name: ...}``, which
:func:`build_serving` turns into the object.
"""

from __future__ import annotations

from typing import Any

from dataflow.serving.base import (
    REQUEST_REASONS,
    LLMServingABC,
    ServingAuthError,
    ServingConnectionError,
    ServingError,
    VLMResult,
    VLMServingABC,
)

# The servings load on first use: an operator module that only names the base (imported by every
# `dataflow` command) does not load the client and local-model modules until a serving is built.
_LAZY = {
    "APILLMServing_request": "dataflow.serving.api_llm_serving_request",
    "APIVLMServing_openai": "dataflow.serving.api_vlm_serving_openai",
    "LocalModelVLMServing_transformers": "dataflow.serving.local_model_vlm_serving",
    "LocalModelVLMServing_vllm": "dataflow.serving.local_model_vlm_serving",
}

__all__ = [
    "APILLMServing_request",
    "APIVLMServing_openai",
    "LocalModelVLMServing_transformers",
    "LocalModelVLMServing_vllm",
    "LLMServingABC",
    "VLMServingABC",
    "VLMResult",
    "ServingError",
    "ServingAuthError",
    "ServingConnectionError",
    "REQUEST_REASONS",
    "build_serving",
    "serving_classes",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serving_classes() -> dict[str, type]:
    """Every concrete serving class by name: the built-ins and any subclass of ``VLMServingABC`` imported
    so far (a user's, defined in ``./operators``)."""
    import importlib

    for module in set(_LAZY.values()):
        importlib.import_module(module)
    found: dict[str, type] = {}
    todo = [VLMServingABC]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if not getattr(sub, "__abstractmethods__", None) and not sub.__name__.startswith("_"):
                found.setdefault(sub.__name__, sub)
    return found


def build_serving(spec: Any) -> VLMServingABC:
    """A serving from a config mapping ``{serving: <class name>, <its parameters>...}``; a serving is itself."""
    if isinstance(spec, VLMServingABC):
        return spec
    if not isinstance(spec, dict) or "serving" not in spec:
        raise ValueError(
            "a serving is an object, or a mapping naming its class and parameters: "
            f"{{serving: APIVLMServing_openai, api_url: http://127.0.0.1:8000/v1, model_name: ...}}; got {spec!r}"
        )
    params = dict(spec)
    name = str(params.pop("serving"))
    classes = serving_classes()
    if name not in classes:
        import difflib

        close = difflib.get_close_matches(name, list(classes), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(classes))})"
        raise ValueError(f"unknown serving {name!r}{hint}")
    try:
        return classes[name](**params)
    except TypeError as exc:
        raise TypeError(f"serving {name}: {exc}") from None
