"""Run a compiled pipeline's operator calls on Ray Data, step by step, with the local engine's cache.

Each call reads its input step (the input file, or the previous step's Parquet shards), runs as Ray Data
passes over slices of it, and is written as ``<prefix>_step<N>.parquet/`` with the same manifest (built
by ``step_manifest``, the one ``FileStorage`` uses: fields, thresholds, fingerprint chain) and rejected-rows
sidecar (``<prefix>_step<N>.rejected.jsonl``) as ``FileStorage`` writes, so auto-resume, ``FileStorage.read``
and ``dataflow inspect`` work unchanged and the two engines resume each other's steps.

How a call runs comes from what its operator declares, never from its name: ``execution = "rowwise"``
maps the operator's own ``run()`` over slices (:mod:`.rowwise`), ``"dedup"`` runs its public phases
distributed (:mod:`.dedup`), ``"table"`` runs it on the driver over the whole step; ``loads_model`` puts
its workers in an actor pool (the step's ``actors`` option overrides that).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import dataflow
from dataflow.core.operator import call_info
from dataflow.engines.ray import io as rio
from dataflow.engines.ray.options import RayStepOptions, options_for, uses_actors
from dataflow.engines.ray.rowwise import (
    SliceActor,
    SliceJob,
    StepContext,
    deserialize_schema,
    run_operator,
    slice_task,
    write_outputs,
)
from dataflow.log import get_logger
from dataflow.storage.file_storage import StorageError
from dataflow.storage.formats import read_table, write_table
from dataflow.storage.inputs import read_input
from dataflow.storage.lock import CacheLock
from dataflow.storage.manifest import check_accounting, step_manifest, write_manifest

logger = get_logger("dataflow.engines.ray")

MAX_SLICE_ROWS = 65_536
MIN_SLICE_ROWS = 64  # below this a task costs more to schedule than its rows take to process
STRATEGIES = {"rowwise": "rowwise", "dedup": "dedup", "table": "driver"}
DISTRIBUTED_SEARCHES = ("exact", "hamming", "cosine")  # the dedup searches :mod:`.dedup` distributes


class EngineError(Exception):
    """The Ray engine cannot run as asked (a user error: one clear message, no traceback needed)."""


class RayNotInstalledError(EngineError, ImportError):
    """The Ray engine was asked for but Ray is not installed."""


class RayOptionsError(EngineError, ValueError):
    """A step's ``ray:`` options are invalid."""


def require_ray():
    """``import ray`` (with Ray Data), or a clear error saying how to install it."""
    try:
        import ray

        importlib.import_module("ray.data")  # Ray Data is a separate part of Ray: it must import too
    except ImportError as exc:
        raise RayNotInstalledError(
            f"the Ray engine needs Ray Data: {dataflow.install_hint('ray')} (import failed: {exc})"
        ) from None
    return ray


def strategy_of(op: Any) -> str:
    """How an operator runs on Ray, from its declared ``execution``: ``rowwise`` | ``dedup`` | ``driver``."""
    execution = getattr(op, "execution", "table")
    if execution not in STRATEGIES:
        raise EngineError(f"{type(op).__name__}.execution must be one of {', '.join(STRATEGIES)}, got {execution!r}")
    if execution == "dedup" and getattr(op, "search", None) not in DISTRIBUTED_SEARCHES:
        return "driver"  # a search this engine has no distributed form of (verified pairs): the whole step at once
    return STRATEGIES[execution]


@dataclass
class StepInput:
    files: list[str]
    rows: int
    columns: list[str]
    malformed: list[dict]


class StepRun:
    """One operator call being executed: its slices, options and the Ray Data passes over them."""

    def __init__(self, engine: RayEngine, call, src: StepInput, ctx: StepContext, options: RayStepOptions):
        self.engine, self.call, self.src, self.ctx, self.options = engine, call, src, ctx, options
        self.op = call.operator
        self.keys = dict(call.keys)
        self.name = type(self.op).__name__
        self.rows = src.rows
        self.input_columns = src.columns
        auto = min(MAX_SLICE_ROWS, math.ceil(src.rows / (4 * engine.cpus)))
        per_slice = options.batch_size or max(MIN_SLICE_ROWS, auto)
        self.slices, _ = rio.plan_slices(src.files, per_slice)
        self.partitions = max(1, 4 * engine.cpus)
        self.actors = uses_actors(self.op, options)

    def log(self, message: str) -> None:
        logger.info("step %d %s: %s", self.call.step + 1, self.name, message)

    def hash_partitions(self, readable: int) -> int:
        """Partitions of the hash-key shuffle: a few per CPU, more only for very large inputs (each
        partition costs every hash ``1 + k`` shuffled rows per block, so fewer is cheaper)."""
        return int(max(4 * self.engine.cpus, min(4096, math.ceil(readable / 250_000))))

    def shuffle_partitions(self, rows: int) -> int:
        """Output partitions of a shuffle: enough for every CPU, about a million rows each."""
        return int(max(2 * self.engine.cpus, min(4096, math.ceil(rows / 1_000_000))))

    def vector_shard_rows(self, dim: int) -> int:
        from dataflow.engines.ray.dedup import shard_rows_for

        return self.options.batch_size * 4 if self.options.batch_size else shard_rows_for(dim)

    def _remote_args(self, actors: bool, num_cpus: float | None = None, num_gpus: float | None = None) -> dict:
        o = self.options
        args: dict = {"num_cpus": o.num_cpus if num_cpus is None else num_cpus}
        gpus = o.num_gpus if num_gpus is None else num_gpus
        if gpus:
            args["num_gpus"] = gpus
        if o.max_retries is not None:  # else Ray Data's defaults: retry system failures without limit
            if actors:
                args.update(max_restarts=o.max_retries, max_task_retries=o.max_retries)
            else:
                args["max_retries"] = o.max_retries
        return args

    def map_slices(
        self,
        kind: str,
        extra: dict,
        *,
        payloads: list[bytes] | None = None,
        actors: bool | None = None,
        num_gpus: float | None = None,
    ):
        """``map_batches`` of the operator over the slice descriptors (each with its payload, if any):
        tasks, or an actor pool when ``actors`` (default: the step's choice)."""
        ray = self.engine.ray
        job = SliceJob(kind, type(self.op), self.op.params, self.keys, self.ctx, extra)
        items = [sl.as_item() for sl in self.slices]
        if payloads is not None:
            items = [{**item, "payload": p} for item, p in zip(items, payloads)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        actors = self.actors if actors is None else actors
        common = {"batch_size": 1, "batch_format": "pandas"}
        if actors:
            n = self.options.concurrency or self.engine.default_actors(self.options, len(items))
            return _map_batches(
                ds,
                SliceActor,
                fn_constructor_kwargs={"job": job},
                compute=ray.data.ActorPoolStrategy(size=n),
                **common,
                **self._remote_args(True, num_gpus=num_gpus),
            )
        conc = {"concurrency": self.options.concurrency} if self.options.concurrency else {}
        return _map_batches(
            ds, slice_task, fn_kwargs={"job": job}, **conc, **common, **self._remote_args(False, num_gpus=num_gpus)
        )

    def map_items(
        self, items: list[dict], fn: Callable, fn_kwargs: dict, num_cpus: float = 1.0, num_gpus: float | None = None
    ):
        """``map_batches`` of a module-level function over arbitrary descriptor rows (one per task)."""
        ds = self.engine.ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        return _map_batches(
            ds,
            fn,
            fn_kwargs=fn_kwargs,
            batch_size=1,
            batch_format="pandas",
            **self._remote_args(False, num_cpus=num_cpus, num_gpus=num_gpus),
        )


def _map_batches(ds, fn, **kwargs):
    """``ds.map_batches``; retry settings still go through ``ray_remote_args`` (deprecated in Ray 2.60,
    with no named replacement yet), so that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return ds.map_batches(fn, **kwargs)


class RayEngine:
    """Runs compiled pipeline calls on Ray; see :func:`dataflow.engines.ray.run_pipeline`."""

    def __init__(self, ray, resources: dict | None = None):
        self.ray = ray
        self.resources = resources or {}
        cluster = ray.cluster_resources()
        self.cpus = max(1, int(cluster.get("CPU", 1)))
        self.gpus = float(cluster.get("GPU", 0))
        self._staged: dict[tuple, StepInput] = {}
        self._staged_files: list[Path] = []

    def default_actors(self, options: RayStepOptions, n_items: int) -> int:
        if options.num_gpus:
            fit = int(self.gpus // options.num_gpus) if self.gpus else 1
        else:
            fit = int(self.cpus // max(options.num_cpus, 1e-9))
        return max(1, min(fit, n_items))

    # ------------------------------------------------------------ inputs
    def step_input(self, storage, step: int) -> StepInput:
        if step > 0:
            path = storage.step_path(step)
            if not path.exists():
                raise StorageError(f"step {step} has not been written: {path} does not exist")
            files = rio.step_files(path)
            _, rows = rio.plan_slices(files, 1 << 62)
            meta = storage.manifest(step)
            columns = list(meta["columns"]) if meta and "columns" in meta else _schema_names(files)
            return StepInput(files, rows, columns, [])
        key = (storage.first_entry_file_name, storage.image_key, storage.skip_malformed_rows)
        if key in self._staged:
            return self._staged[key]
        kind = storage.input_kind
        if kind == "parquet" and not _embeds_images(storage.first_entry_file_name, storage.image_key):
            files = [os.fspath(Path(storage.first_entry_file_name).resolve())]
            _, rows = rio.plan_slices(files, 1 << 62)
            src = StepInput(files, rows, _schema_names(files), [])
        else:  # read as FileStorage reads it (shards, hf:, embedded images as references), then staged
            df, malformed = read_input(
                storage.first_entry_file_name, kind, storage.image_key, skip_malformed=storage.skip_malformed_rows
            )
            staged = rio.stage_input(df, Path(storage.cache_path).resolve(), f"{storage.file_name_prefix}_step0")
            self._staged_files.append(staged)
            src = StepInput([str(staged)], len(df), [str(c) for c in df.columns], list(malformed))
        self._staged[key] = src
        return src

    def cleanup(self) -> None:
        for path in self._staged_files:
            path.unlink(missing_ok=True)
        self._staged_files.clear()
        self._staged.clear()

    # ------------------------------------------------------------ one call
    def run_call(self, call) -> dict:
        storage, op = call.storage, call.operator
        name = type(op).__name__
        out_step = call.step + 1
        started = time.perf_counter()
        info = call_info(op, call.keys)
        info.started = started
        options = options_for(call.index + 1, op, self.resources)
        target = storage.step_path(out_step)
        Path(storage.cache_path).mkdir(parents=True, exist_ok=True)
        storage.manifest_path(out_step).unlink(missing_ok=True)  # unfinished from here until the new one lands
        rio.remove_stale_tmps(target)
        input_fp = storage.step_fingerprint(call.step) or ""  # as read: a change during the step reruns it
        src = self.step_input(storage, call.step)
        tmp = rio.new_step_tmp(target)
        try:
            (tmp / "_rejected").mkdir()
            work = rio.work_dir(tmp)
            ctx = StepContext(
                name=name,
                out_dir=str(tmp),
                work_dir=str(work),
                image_base=storage.image_base,
                image_key=storage.image_key,
                call=info,
            )
            strategy = strategy_of(op) if src.rows else "driver"
            run = StepRun(self, call, src, ctx, options)
            logger.info(
                "step %d %s: running on Ray (%s, %d rows in %d slice(s)%s)",
                out_step,
                name,
                strategy,
                src.rows,
                len(run.slices),
                ", actor pool" if run.actors and strategy != "driver" else "",
            )
            stats = self._execute(strategy, run)
            manifest = self._finish(call, info, src, stats, tmp, target, input_fp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info(
            "step %d %s: done on Ray in %.2fs (%d in, %d out, %d rejected)",
            out_step,
            name,
            manifest["seconds"],
            manifest["rows_in"],
            manifest["rows_out"],
            manifest["rows_rejected"],
        )
        return manifest

    def _execute(self, strategy: str, run: StepRun) -> pd.DataFrame:
        from dataflow.engines.ray import dedup

        if strategy == "rowwise":
            return run.map_slices("rowwise", {}).to_pandas()
        if strategy == "dedup":
            return dedup.run_dedup(run)
        return self._on_driver(run)

    def _on_driver(self, run: StepRun) -> pd.DataFrame:
        """An operator declaring ``execution = "table"`` runs on the driver over the whole step, as the
        local engine would; its output is still a sharded step."""
        if run.rows:
            why = (
                f"its search {run.op.search!r} has no distributed form"
                if getattr(run.op, "execution", None) == "dedup"
                else 'it declares execution = "table" (set execution = "rowwise" on the operator class if each '
                "row is decided on its own)"
            )
            warnings.warn(f"{run.name} runs on the driver over the whole step: {why}", RuntimeWarning, stacklevel=2)
        frames = [read_table(f, "parquet")[0] for f in run.src.files]
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        kept, rej = run_operator(run.op, df, run.keys, run.ctx)
        return pd.DataFrame([write_outputs(0, len(df), kept, [("a", rej)], run.ctx).as_row()])

    def _finish(self, call, info, src: StepInput, stats: pd.DataFrame, tmp: Path, target: Path, input_fp: str) -> dict:
        """Check the accounting, concatenate the rejected parts, swap the step into place, write the manifest
        (``info`` is the call's ``CallInfo``, its ``started`` the call's start)."""
        storage = call.storage
        out_step = call.step + 1
        stats = stats.sort_values("offset", kind="stable") if len(stats) else stats
        shards = [(s, deserialize_schema(b)) for s, b in zip(stats["shard"], stats["schema"]) if s]
        schemas = [deserialize_schema(b) for b in stats["schema"]] if len(stats) else []
        if shards:
            unified = rio.unify_schemas([sch for _, sch in shards])
            mismatched = [str(tmp / s) for s, sch in shards if not sch.equals(unified)]
            self._cast(mismatched, unified)
        else:
            unified = rio.unify_schemas(schemas) if schemas else _empty_schema(src)
            rio.empty_shard(tmp, unified)
        rows_out = int(stats["rows_out"].sum()) if len(stats) else 0
        rows_rejected = int(stats["rows_rejected"].sum()) if len(stats) else 0
        reasons: Counter = Counter()
        for blob in stats["reasons"] if len(stats) else []:
            reasons.update(json.loads(blob))
        parts = sorted((tmp / "_rejected").iterdir())
        if src.malformed:
            malformed = tmp / "_rejected" / "rej-z-malformed.jsonl"
            write_table(pd.DataFrame(src.malformed), malformed, "jsonl")
            parts.append(malformed)
            reasons.update(str(m["reason"]) for m in src.malformed)
            rows_rejected += len(src.malformed)
        rows_in = src.rows + len(src.malformed)
        if info.keeps_rows:
            check_accounting(info.operator, rows_in, rows_out, rows_rejected)
        rejected_path = storage.rejected_path(out_step)
        if parts:
            rio.concat_parts(parts, rejected_path)
        else:
            rejected_path.unlink(missing_ok=True)
        shutil.rmtree(tmp / "_rejected", ignore_errors=True)
        shutil.rmtree(tmp / rio.WORK_DIR, ignore_errors=True)
        rio.swap_into_place(tmp, target)
        manifest = step_manifest(
            info,
            step=out_step,
            rows_in=rows_in,
            rows_out=rows_out,
            rows_rejected=rows_rejected,
            rejected_reasons=dict(reasons.most_common()),
            input_fingerprint=input_fp,
            columns=list(unified.names),
            columns_in=src.columns,
            file=target.name,
            rejected_file=rejected_path.name if rows_rejected else None,
            cache_type="parquet",
            first_entry_file_name=storage.first_entry_file_name,
            image_base=storage.image_base,
        )
        found = storage.image_resolution()
        if found.is_fallback:  # the same record FileStorage writes: the images are under the working directory
            manifest["paths_resolved_against"] = found.against
        write_manifest(storage.manifest_path(out_step), manifest)
        return manifest

    def _cast(self, paths: list[str], schema) -> None:
        if not paths:
            return
        if len(paths) <= 2:
            for p in paths:
                rio.cast_shard(p, schema)
            return
        ds = self.ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
        ds.map_batches(_cast_task, fn_kwargs={"schema": schema}, batch_size=1, batch_format="pandas").materialize()


def _cast_task(batch: pd.DataFrame, schema) -> pd.DataFrame:
    for p in batch["path"].tolist():
        rio.cast_shard(p, schema)
    return pd.DataFrame({"done": [len(batch)]})


def _schema_names(files: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(files[0]).names) if files else []


def _empty_schema(src: StepInput):
    import pyarrow as pa

    return pa.schema([pa.field(c, pa.null()) for c in src.columns])


# ---------------------------------------------------------------- entry point
def _force_parquet(pipeline, calls) -> None:
    storages = {id(s): s for s in pipeline._storages()}
    storages.update({id(c.storage): c.storage for c in calls})
    odd = sorted({s.cache_type for s in storages.values() if s.cache_type != "parquet"})
    if odd:
        logger.warning(
            "the Ray engine writes every step as Parquet shards; cache_type %s is used as 'parquet' for this run",
            "/".join(map(repr, odd)),
        )
    for s in storages.values():
        s.cache_type = "parquet"


def _ship_user_modules(calls, ray) -> None:
    """Operator classes from user files (``operators/``) are not importable on workers: send them by value."""
    from ray import cloudpickle

    for call in calls:
        module = type(call.operator).__module__
        if not module.startswith("dataflow.") and module != "__main__" and module in sys.modules:
            with suppress(ValueError):
                cloudpickle.register_pickle_by_value(sys.modules[module])


@contextmanager
def _data_context(ray):
    ctx = ray.data.DataContext.get_current()
    saved_bars = ctx.enable_progress_bars
    saved_shuffle = getattr(ctx, "shuffle_strategy", None)
    try:
        from ray.data.context import ShuffleStrategy
    except ImportError:  # older Ray Data: its default shuffle is the sort-based one already
        ShuffleStrategy = None
    if ShuffleStrategy is not None:
        # Sort-based shuffles start no aggregator actors: the cheaper choice at the partition counts used here.
        ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    flag = os.environ.get("DATAFLOW_PROGRESS")
    ctx.enable_progress_bars = (flag != "0") if flag is not None else sys.stderr.isatty()
    try:
        yield ctx
    finally:
        ctx.enable_progress_bars = saved_bars
        if ShuffleStrategy is not None:
            ctx.shuffle_strategy = saved_shuffle


def _connect(ray, address: str | None, init_kwargs: dict | None) -> bool:
    """Start a local Ray (no address) or join a cluster; returns whether this call started it."""
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, **(init_kwargs or {})}
    if address:
        kwargs["address"] = address
        # Ship this dataflow package to the cluster's workers, so their code matches the driver's.
        kwargs.setdefault("runtime_env", {"py_modules": [os.path.dirname(dataflow.__file__)]})
    ray.init(**kwargs)
    return True


def run_pipeline(
    pipeline,
    address: str | None = None,
    *,
    resume: str | None = "auto",
    resume_step: int | None = None,
    resources: dict | None = None,
    ray_init: dict | None = None,
    shutdown: bool | None = None,
) -> list[dict]:
    """Run a ``PipelineABC`` pipeline's calls on Ray Data; returns one entry per call.

    ``address``: None starts a local Ray (or uses the one already initialised in this process); an
    address (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``) joins that cluster. ``resume``:
    ``"auto"`` skips every leading step whose manifest fingerprint matches and whose data exists, as
    ``forward()`` does; ``resume_step=N`` skips the first N by hand. ``resources``: per-step options
    (``RayStepOptions`` or their dict) keyed by step number (1-based) or operator class name.
    ``ray_init``: extra ``ray.init`` arguments. ``shutdown``: whether to stop a Ray this call started
    (default True). Every cache folder is locked for the run, as with the local engine.
    """
    ray = require_ray()
    if not getattr(pipeline, "_compiled_calls", None):
        pipeline.compile()
    calls = pipeline.compiled_calls
    _force_parquet(pipeline, calls)
    results: list[dict] = []
    with ExitStack() as stack:
        for folder in sorted({str(c.storage.cache_path) for c in calls}):
            stack.enter_context(CacheLock(folder))
        for storage in {id(c.storage): c.storage for c in calls}.values():  # left by a killed run
            for stale in Path(storage.cache_path).glob(f".{storage.file_name_prefix}_step0.staged-*"):
                stale.unlink(missing_ok=True)
        if resume_step is not None:
            skip = pipeline.check_resume_step(int(resume_step))
        elif resume == "auto":
            skip = pipeline.resumable_steps()
        else:
            skip = 0
        if skip:
            logger.info("resuming: %d leading step(s) already cached", skip)
        for call in calls[:skip]:
            name = type(call.operator).__name__
            logger.info("step %d %s: unchanged since the cached run, skipped", call.step + 1, name)
            results.append({"step": call.step + 1, "operator": name, "status": "skipped"})
        if skip >= len(calls):
            return results  # nothing to run: no need to start or join Ray
        if _connect(ray, address, ray_init) and shutdown is not False:
            stack.callback(ray.shutdown)
        _ship_user_modules(calls, ray)
        engine = RayEngine(ray, resources)
        stack.callback(engine.cleanup)
        stack.enter_context(_data_context(ray))
        for call in calls[skip:]:
            manifest = engine.run_call(call)
            results.append(
                {"step": call.step + 1, "operator": type(call.operator).__name__, "status": "ran", "manifest": manifest}
            )
    return results


def _embeds_images(path, image_key: str) -> bool:
    import pyarrow.parquet as pq

    from dataflow.storage.embedded import embeds_images

    schema = pq.read_schema(path)
    return image_key in schema.names and embeds_images(schema.field(image_key))


def run_config_pipeline(
    pipeline, config_path, *, address: str | None = None, resume_step: int | None = None, resume: str | None = "auto"
) -> list[dict]:
    """``dataflow run CONFIG --engine ray``: the config's pipeline with each step's ``ray:`` options."""
    from dataflow.core.config import load_config
    from dataflow.engines.ray.options import check_options

    steps = load_config(config_path).get("steps") or []
    resources, problems = {}, []
    for i, step in enumerate(steps, start=1):
        if isinstance(step, dict) and step.get("ray") is not None:
            found = check_options(step["ray"], f"step {i} {step.get('operator')}")
            problems += found
            if not found:
                resources[i] = step["ray"]
    if problems:
        raise RayOptionsError(f"{config_path}:\n  - " + "\n  - ".join(problems))
    return run_pipeline(pipeline, address, resume=resume, resume_step=resume_step, resources=resources)
