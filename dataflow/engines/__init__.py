"""Scale-out engines: the same pipelines on an existing distributed engine.

``local`` is ``pipeline.forward()``; ``ray`` runs the compiled calls on Ray Data
(:func:`dataflow.engines.ray.run_pipeline`, ``dataflow run CONFIG --engine ray``). Ray is imported
only when the Ray engine runs (``pip install 'dataflow-curate[ray]'``).
"""

from __future__ import annotations

ENGINES = ("local", "ray")


def run_pipeline(pipeline, engine: str = "local", **kwargs):
    """Run ``pipeline`` on ``engine``: ``"local"`` calls ``forward()`` (kwargs: ``resume_step``, ``resume``),
    ``"ray"`` calls :func:`dataflow.engines.ray.run_pipeline` (kwargs: ``address``, ``resources``, ...)."""
    if engine == "local":
        if not getattr(pipeline, "_compiled_calls", None):
            pipeline.compile()
        return pipeline.forward(**kwargs)
    if engine == "ray":
        from dataflow.engines.ray import run_pipeline as run_on_ray

        return run_on_ray(pipeline, **kwargs)
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
