"""Per-step Ray resources: ``ray: {num_cpus, num_gpus, batch_size, concurrency, max_retries}``.

In a YAML config they sit beside ``params`` and ``run``::

    - operator: MyEmbeddingEvaluator
      params: {model_name: openai/clip-vit-base-patch32}
      run: {input_image_key: image}
      ray: {num_gpus: 1, concurrency: 2, batch_size: 512}

From Python, ``run_pipeline(pipeline, resources={2: {...}, "MyEmbeddingEvaluator": {...}})`` keys them
by step number (1-based) or operator class name. The local engine ignores them. Whether a step runs in an
actor pool comes from the operator's own ``loads_model`` declaration unless ``actors`` says otherwise.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class RayStepOptions:
    """How one step runs on Ray.

    - ``num_cpus`` / ``num_gpus``: resources each task (or actor) reserves.
    - ``batch_size``: rows per task, each task handing its rows to the operator as one pandas batch
      (default: the step's rows spread over about 4 tasks per cluster CPU, 64 to 65,536 rows).
    - ``concurrency``: actors in the pool of an actor step (default 1 per ``num_gpus``-sized slot, i.e.
      as many as fit); for other steps, at most this many tasks at once.
    - ``max_retries``: how often Ray reruns a task whose worker died (actors are restarted as often);
      default: Ray Data's own, which retries system failures (a dead worker or node) without limit and
      never retries an exception raised by the operator itself.
    - ``actors``: force (True) or forbid (False) an actor pool; default: operators declaring
      ``loads_model = True`` (each actor builds the operator, and loads its model, once).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = None
    concurrency: int | None = None
    max_retries: int | None = None
    actors: bool | None = None

    def merged(self, other: RayStepOptions | dict | None) -> RayStepOptions:
        if other is None:
            return self
        if isinstance(other, RayStepOptions):
            other = {f.name: getattr(other, f.name) for f in fields(other)}
        return replace(self, **other)


OPTION_KEYS = tuple(f.name for f in fields(RayStepOptions))


def check_options(value: Any, where: str) -> list[str]:
    """Every problem with one ``ray:`` mapping (empty when it is valid)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [f"{where}: 'ray' must be a mapping of {', '.join(OPTION_KEYS)}"]
    problems = []
    for key, v in value.items():
        if key not in OPTION_KEYS:
            close = difflib.get_close_matches(str(key), OPTION_KEYS, n=1)
            problems.append(
                f"{where}: ray: unknown option {key!r}"
                + (f"; did you mean {close[0]!r}?" if close else f" (options: {', '.join(OPTION_KEYS)})")
            )
        elif key in ("num_cpus", "num_gpus"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                problems.append(f"{where}: ray: {key} must be a number >= 0, got {v!r}")
        elif key in ("batch_size", "concurrency"):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                problems.append(f"{where}: ray: {key} must be a positive integer, got {v!r}")
        elif key == "max_retries":
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < -1):
                problems.append(f"{where}: ray: max_retries must be an integer >= -1 (-1: retry forever), got {v!r}")
        elif key == "actors" and v is not None and not isinstance(v, bool):
            problems.append(f"{where}: ray: actors must be true or false, got {v!r}")
    return problems


def parse_options(value: Any, where: str = "ray") -> RayStepOptions | None:
    problems = check_options(value, where)
    if problems:
        raise ValueError("; ".join(problems))
    return RayStepOptions().merged(value) if value else None


def options_for(step: int, operator: object, resources: dict | None) -> RayStepOptions:
    """The options of step ``step`` (1-based): by step number first, then by operator class name."""
    base = RayStepOptions()
    if not resources:
        return base
    name = type(operator).__name__
    for key in (name, step):
        if key in resources and resources[key] is not None:
            base = base.merged(
                resources[key]
                if isinstance(resources[key], RayStepOptions)
                else parse_options(resources[key], f"step {step} {name}")
            )
    return base


def uses_actors(operator: object, options: RayStepOptions) -> bool:
    """An actor pool when the options say so, else when the operator declares ``loads_model``."""
    if options.actors is not None:
        return options.actors
    return bool(getattr(operator, "loads_model", False))
