"""Run pipelines on Ray Data: ``run_pipeline(pipeline, address=None)``.

Nothing here imports Ray until a pipeline runs, so the base install (without the ``[ray]`` extra) can
import this package; running without Ray raises :class:`RayNotInstalledError` naming
``pip install 'dataflow-curate[ray]'``. See ``docs/ray.md``.
"""

from __future__ import annotations

from dataflow.engines.ray.options import OPTION_KEYS, RayStepOptions, check_options, parse_options

_LAZY = (
    "EngineError",
    "RayEngine",
    "RayNotInstalledError",
    "RayOptionsError",
    "require_ray",
    "run_config_pipeline",
    "run_pipeline",
    "strategy_of",
)
__all__ = ["OPTION_KEYS", "RayStepOptions", "check_options", "parse_options", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from dataflow.engines.ray import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
