"""YAML pipeline configs: validate everything up front, then run as a PipelineABC.

Shape::

    storage: {first_entry_file_name: example_data/images.jsonl, cache_path: ./cache, cache_type: jsonl}
    steps:
      - operator: CaptionLengthEvaluator   # any registered operator, built-in or from ./operators
        params: {lowercase: true}          # __init__ arguments
        run: {input_text_key: caption}     # run() keys

``configs/`` holds one config per built-in operator family.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dataflow.core.pipeline import PipelineABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.log import get_logger
from dataflow.storage import FileStorage

logger = get_logger("dataflow.config")

TOP_LEVEL_KEYS = ("storage", "steps", "name", "description")
STEP_KEYS = ("operator", "params", "run", "name", "ray", "optional")  # ray: per-step options of --engine ray


class _SafeLoader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 booleans: only true/false, so ``on: bytes`` keeps its key ``on``."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.2 floats: `1e-3` and `2E+5` are numbers there (PyYAML's 1.1 rules want a dot and read a string).
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


class ConfigError(ValueError):
    """A config cannot run; ``problems`` lists every reason at once."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}:\n  - " + "\n  - ".join(problems))


def load_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"config file not found: {path}"])
    try:
        loader = _SafeLoader(path.read_text(encoding="utf-8"))
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the config must be a mapping with 'storage' and 'steps'"])
    return data


def build_pipeline(
    config: dict, source: str = "<config>", *, user_operators: bool = True, base_dir: str | os.PathLike | None = None
) -> ConfigPipeline:
    """Check the whole config and build its pipeline, or raise one ``ConfigError`` listing every problem.

    Relative storage paths (``first_entry_file_name``, ``cache_path``) are taken against ``base_dir``, the
    config file's folder for ``dataflow run``, so a config runs the same from any working directory;
    without ``base_dir``, against the working directory.
    """
    problems: list[str] = []
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown top-level key {key!r}{_suggest(key, TOP_LEVEL_KEYS)}")
    storage_cfg = config.get("storage")
    steps_cfg = config.get("steps")
    if not isinstance(storage_cfg, dict):
        problems.append("missing 'storage' mapping (first_entry_file_name, cache_path, file_name_prefix, cache_type)")
        storage_cfg = None
    if not isinstance(steps_cfg, list) or not steps_cfg:
        problems.append("missing 'steps': a list of {operator, params, run}")
        steps_cfg = []

    storage = _build_storage(storage_cfg, problems, base_dir) if storage_cfg is not None else None
    steps = []
    for i, step in enumerate(steps_cfg, start=1):
        built = _build_step(i, step, problems, user_operators)
        if built and not _left_out(i, step, *built, problems):
            steps.append(built)
    if problems:
        raise ConfigError(source, problems)
    return ConfigPipeline(storage, steps)


def missing_on_disk(operator, run_keys: dict) -> list[str]:
    """Why ``operator`` cannot run now from local disk alone (one line per model), [] when it can: what
    decides whether an optional stage runs, in a config or a pipeline script."""
    from dataflow.models.hub import local_only

    with local_only():
        return operator.missing_models(run_keys)


def _left_out(i: int, step: dict, operator, run_keys: dict, problems: list[str]) -> bool:
    """An ``optional: true`` step runs only when its models are on local disk now; else it is left out of the
    pipeline (before compile, so resume and step numbers follow the steps that run), with a line saying why."""
    optional = step.get("optional", False)
    if not isinstance(optional, bool):
        problems.append(f"step {i} {type(operator).__name__}: 'optional' must be true or false, got {optional!r}")
        return False
    if not optional:
        return False
    missing = missing_on_disk(operator, run_keys)
    for problem in missing:
        first_line = str(problem).strip().splitlines()[0]
        logger.warning("step %d %s left out (optional; not on local disk): %s", i, type(operator).__name__, first_line)
    return bool(missing)


STORAGE_PATH_KEYS = ("first_entry_file_name", "cache_path")


def _build_storage(cfg: dict, problems: list[str], base_dir: str | os.PathLike | None) -> FileStorage | None:
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    cfg = {k: _against(v, base) if k in STORAGE_PATH_KEYS else v for k, v in cfg.items()}
    sig = inspect.signature(FileStorage.__init__)
    allowed = [p for p in sig.parameters if p != "self"]
    bad = [k for k in cfg if k not in allowed]
    for k in bad:
        problems.append(f"storage: unknown key {k!r}{_suggest(k, allowed)}")
    if "first_entry_file_name" not in cfg:
        problems.append("storage: missing 'first_entry_file_name' (the input file or image folder)")
        return None
    from dataflow.storage.inputs import input_exists

    entry = Path(str(cfg["first_entry_file_name"]))
    if not input_exists(str(cfg["first_entry_file_name"])):
        problems.append(f"storage: input {str(entry)!r} does not exist (relative paths are taken against {base})")
    if bad:
        return None
    try:
        return FileStorage(**cfg)
    except (ValueError, TypeError) as exc:
        problems.append(f"storage: {exc}")
        return None


def _against(value: Any, base: Path) -> Any:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        return value  # not a path: FileStorage says what it wants (FileStorage("") is allowed)
    text = os.fspath(value)
    if text.startswith("hf:"):  # a dataset name stays a name; hf:./folder is a path like any other
        name, sep, rest = text[3:].partition(":")
        return "hf:" + _against(name, base) + sep + rest if name.startswith((".", "~")) else text
    path = Path(os.path.expanduser(text))
    return str(path if path.is_absolute() else base / path)


def _build_step(i: int, step: Any, problems: list[str], user_operators: bool = True):
    where = f"step {i}"
    if not isinstance(step, dict) or "operator" not in step:
        problems.append(f"{where}: each step needs 'operator' (and optional 'params', 'run')")
        return None
    for key in step:
        if key not in STEP_KEYS:
            problems.append(f"{where}: unknown key {key!r}{_suggest(key, STEP_KEYS)}")
    name = str(step["operator"])
    try:
        cls = OPERATOR_REGISTRY.get(name, user_operators=user_operators)
    except KeyError as exc:
        problems.append(f"{where}: {exc.args[0]}")
        return None
    from dataflow.engines.ray.options import check_options  # the `ray:` key (no Ray import needed)

    problems.extend(check_options(step.get("ray"), f"{where} {name}"))
    params, run_keys = step.get("params") or {}, step.get("run") or {}
    if not isinstance(params, dict) or not isinstance(run_keys, dict):
        problems.append(f"{where} {name}: 'params' and 'run' must be mappings")
        return None
    before = len(problems)
    _check_arguments(f"{where} {name}: params", cls.__init__, params, problems)
    run = getattr(cls.run, "__wrapped_run__", cls.run)
    _check_arguments(f"{where} {name}: run", run, run_keys, problems, skip=("storage",))
    if len(problems) > before:
        return None
    try:
        return cls(**params), run_keys
    except (ValueError, TypeError, FileNotFoundError) as exc:
        problems.append(f"{where} {name}: {exc}")
        return None


def _check_arguments(where: str, fn, given: dict, problems: list[str], skip: tuple = ()) -> None:
    target = getattr(fn, "__wrapped__", fn)
    sig = inspect.signature(target)
    params = {k: p for k, p in sig.parameters.items() if k != "self" and k not in skip}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks rather than refuse the config
        hints = {}
    for key, value in given.items():
        if key not in params:
            if not takes_any:
                problems.append(f"{where}: unknown parameter {key!r}{_suggest(key, list(params))}")
            continue
        if isinstance(value, float) and math.isnan(value):  # `.nan` compares false with everything
            problems.append(f"{where}: {key}=nan is not a usable value (every comparison with it is false)")
            continue
        hint = hints.get(key)
        if hint is not None and not _type_ok(value, hint):
            problems.append(f"{where}: {key}={value!r} should be {_type_name(hint)}, got {type(value).__name__}")
    for key, p in params.items():
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and key not in given:
            problems.append(f"{where}: missing required parameter {key!r}")


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint) or (hint is str and isinstance(value, os.PathLike))
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "")


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class ConfigPipeline(PipelineABC):
    """A pipeline whose steps come from a YAML config."""

    def __init__(self, storage: FileStorage, steps: list[tuple]):
        self.storage = storage
        self.steps = steps

    def forward(self):
        for operator, run_keys in self.steps:
            operator.run(self.storage.step(), **run_keys)
