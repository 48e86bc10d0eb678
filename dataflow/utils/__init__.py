"""DataFlow-compatible import paths (``dataflow.utils.storage``, ``dataflow.utils.registry``, and
``from dataflow.utils import OPERATOR_REGISTRY`` as DataFlow exports it here)."""

__all__ = ["OPERATOR_REGISTRY"]


def __getattr__(name: str):
    # On first use, so that importing dataflow.utils.storage does not load the registry.
    if name == "OPERATOR_REGISTRY":
        from dataflow.core.registry import OPERATOR_REGISTRY

        return OPERATOR_REGISTRY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
