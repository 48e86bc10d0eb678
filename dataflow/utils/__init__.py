"""DataFlow-compatible import paths (``dataflow.utils.storage``, ``dataflow.utils.registry``)."""
