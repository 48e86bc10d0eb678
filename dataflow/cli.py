"""The ``dataflow`` command: run | ops | inspect | dedup."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import dataflow
from dataflow.log import get_logger

# format_steps stays importable from here: docs_gen and the tests import dataflow.cli.format_steps.
from dataflow.storage.cache_folder import CacheFolderReadError, format_steps, load_manifests, only_prefix
from dataflow.storage.file_storage import dumps_row

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quiet or args.verbose:
        get_logger().setLevel(logging.WARNING if args.quiet else logging.DEBUG)  # after its first set-up
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted; finished steps are cached and the next run resumes after them", file=sys.stderr)
        return 130
    except _UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


class _UserError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dataflow", description="Curate image and image-text datasets with cached, resumable pipelines."
    )
    p.add_argument("--version", action="version", version=f"dataflow {dataflow.__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(title="commands")

    run = sub.add_parser("run", help="run a pipeline from a YAML config (resumes from cached steps)")
    run.add_argument("config", help="YAML file with 'storage' and 'steps'")
    run.add_argument("--resume-step", type=int, default=None, help="skip the first N steps (DataFlow style)")
    run.add_argument("--no-resume", action="store_true", help="rerun every step even if cached")
    run.add_argument(
        "--check",
        action="store_true",
        help="only validate the config and compile the pipeline (imports no user operator unless --load-operators)",
    )
    run.add_argument(
        "--load-operators",
        action="store_true",
        help="with --check: also import ./operators and DATAFLOW_OPERATORS_PATH (runs their code) to check them",
    )
    run.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="run in this process (local, default) or on Ray Data (ray; pip install 'dataflow-curate[ray]')",
    )
    run.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)",
    )
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.set_defaults(func=cmd_run)

    ops = sub.add_parser("ops", help="list registered operators")
    ops.add_argument("--category", choices=["filter", "eval", "generate", "refine", "other"])
    ops.add_argument("--json", action="store_true", help="machine-readable output")
    ops.add_argument("--lang", default="en", choices=["en", "zh"])
    ops.add_argument("--doc", metavar="NAME", help="print the documentation page of operator NAME (markdown)")
    ops.set_defaults(func=cmd_ops)

    ins = sub.add_parser("inspect", help="show the steps of a cache folder, or rows of one step")
    ins.add_argument("cache_dir")
    ins.add_argument("--prefix", help="file_name_prefix, when the folder holds several pipelines")
    ins.add_argument("--step", type=int, help="print rows of this step")
    ins.add_argument("--head", type=_head, default=5, help="how many rows to print, or 'all' (default 5)")
    ins.add_argument("--columns", help="comma-separated columns to print (default: all)")
    ins.add_argument("--rejected", action="store_true", help="print the step's rejected rows")
    ins.add_argument("--json", action="store_true", help="the step manifests (no --step) as one JSON list")
    ins.set_defaults(func=cmd_inspect)

    dd = sub.add_parser("dedup", help="near-duplicate removal of a folder in one line (like imagededup)")
    dd.add_argument("input", help="a folder of images, or a jsonl/json/csv/parquet file with an image column")
    dd.add_argument(
        "--method",
        default="phash",
        choices=_CommandMethods("dedup"),
        metavar="METHOD",
        help="one of %(choices)s (default phash): each is declared by an operator (cli_methods), user "
        "operators in ./operators included",
    )
    dd.add_argument("--max-distance", type=int, default=None, help="hash methods: Hamming distance, 0..64 (default 10)")
    dd.add_argument(
        "--keep",
        default=None,
        help="which image of a group stays: best (most pixels, then the larger file; the default for the "
        "hashes) | first | largest | a column, or a header fact / quality metric computed when not a column "
        "(highest wins)",
    )
    dd.add_argument(
        "--non-transitive", action="store_true", help="no chains: each kept image claims only its own direct neighbours"
    )
    dd.add_argument(
        "--no-recursive",
        action="store_true",
        help="a folder input: only the images directly in it, not those in subfolders (imagededup's default)",
    )
    dd.add_argument(
        "--json-out",
        metavar="FILE",
        help="also write imagededup's duplicates map (find_duplicates(..., scores=True, outfile=FILE)): "
        "{image: [[duplicate, score], ...]} for every readable image",
    )
    dd.add_argument("--out", default="./cache_dedup", help="cache folder (default ./cache_dedup)")
    dd.add_argument("--num-workers", type=int, default=None)
    dd.set_defaults(func=cmd_dedup)

    rep = sub.add_parser(
        "report",
        help="write one self-contained HTML report of a cache folder: steps, duplicate "
        "groups, score histograms with thresholds, rejected and unreadable rows",
    )
    rep.add_argument("cache_dir")
    rep.add_argument("-o", "--out", help="HTML file to write (default: CACHE_DIR/<prefix>_report.html)")
    rep.add_argument("--prefix", help="file_name_prefix, when the folder holds several pipelines")
    rep.add_argument("--max-thumbnails", type=int, default=400, help="most images embedded (default 400)")
    rep.set_defaults(func=cmd_report)

    exp = sub.add_parser(
        "export",
        help="write the kept rows of a step as an image folder (copies or links), WebDataset shards, "
        "a Hugging Face dataset or JSON lines",
    )
    exp.add_argument("cache_dir", help="the pipeline's cache folder")
    exp.add_argument(
        "--format",
        required=True,
        choices=["folder", "symlink", "hardlink", "webdataset", "hf", "jsonl"],
        help="folder: images + metadata.jsonl (HF imagefolder); symlink / hardlink: the same with links; "
        "webdataset: tar shards; hf: Parquet with an Image feature; jsonl: rows with absolute paths",
    )
    exp.add_argument("--out", required=True, help="folder to write (new or empty; see --overwrite)")
    exp.add_argument("--step", type=int, help="step to export (default: the last one written)")
    exp.add_argument("--prefix", help="file_name_prefix, when the folder holds several pipelines")
    exp.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (webdataset, hf; default 10000)")
    exp.add_argument("--image-key", help="image column (default: the pipeline's input_image_key, else image)")
    exp.add_argument("--text-key", help="caption column (default: the pipeline's text key, else caption/text/prompt)")
    exp.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    exp.add_argument(
        "--skip-missing", action="store_true", help="exit 0 when rows are left out because their image cannot be read"
    )
    exp.add_argument("--json", action="store_true", help="print the export manifest as JSON")
    exp.set_defaults(func=cmd_export)

    sc = sub.add_parser(
        "score-cache",
        help="show (or --clear) the score cache of a cache folder: per-image results of evaluators and dedup "
        "hashes that reruns serve instead of computing",
    )
    sc.add_argument("cache_dir", help="the pipeline's cache folder (or the folder given as score_cache=)")
    sc.add_argument("--clear", action="store_true", help="remove every entry")
    sc.add_argument("--json", action="store_true", help="print the figures as JSON")
    sc.set_defaults(func=cmd_score_cache)
    return p


# ---------------------------------------------------------------- run
def cmd_run(args) -> int:
    from dataflow.core.config import ConfigError, build_pipeline, load_config
    from dataflow.core.pipeline import PipelineCompileError, PipelineResumeError
    from dataflow.core.registry import OPERATOR_REGISTRY, OperatorImportError

    config_path = Path(args.config)
    # User operators are Python code: a run imports them; --check only when asked (--load-operators).
    user_operators = not args.check or args.load_operators
    try:
        if user_operators:
            OPERATOR_REGISTRY.load_user_operators(
                [config_path.resolve().parent.parent / "operators", config_path.resolve().parent / "operators"]
            )
        pipeline = build_pipeline(
            load_config(config_path),
            str(config_path),
            user_operators=user_operators,
            base_dir=config_path.resolve().parent,
        )
        pipeline.compile()
    except (ConfigError, PipelineCompileError, OperatorImportError) as exc:
        hint = "" if user_operators else "\n(--check imports no user operator: add --load-operators to check those too)"
        raise _UserError(str(exc) + hint) from None
    if args.check:
        print(f"{config_path}: OK, {len(pipeline.compiled_calls)} steps")
        return 0
    from dataflow.core.images import ImageColumnError
    from dataflow.serving.base import ServingError
    from dataflow.storage import CacheFolderError, CacheLockedError, StorageFormatError

    try:
        if args.engine == "ray":  # the same steps, manifests and resume on Ray Data (dataflow/engines/ray)
            from dataflow.engines.ray import EngineError, run_config_pipeline

            try:
                run_config_pipeline(
                    pipeline,
                    config_path,
                    address=args.address,
                    resume_step=args.resume_step,
                    resume=None if args.no_resume else "auto",
                )
            except EngineError as exc:
                raise _UserError(str(exc)) from None
        else:
            pipeline.forward(resume_step=args.resume_step, resume=None if args.no_resume else "auto")
    except (
        CacheLockedError,
        CacheFolderError,
        StorageFormatError,
        PipelineResumeError,
        ImageColumnError,
        ServingError,
    ) as exc:
        raise _UserError(str(exc)) from None
    print_run_summary(pipeline, as_json=args.json)
    return 0


def print_run_summary(pipeline, as_json: bool = False) -> None:
    """The step table of a finished pipeline and where its result and rejected rows are."""
    storage = pipeline.storage
    last = len(pipeline.compiled_calls)
    if as_json:
        manifests = load_manifests(Path(storage.cache_path), storage.file_name_prefix)
        steps = [
            {
                k: m.get(k)
                for k in (
                    "step",
                    "operator",
                    "rows_in",
                    "rows_out",
                    "rows_rejected",
                    "rejected_reasons",
                    "seconds",
                    "new_columns",
                    "file",
                    "rejected_file",
                )
            }
            for m in manifests.values()
            if m.get("step", 0) <= last
        ]
        print(
            json.dumps(
                {
                    "cache_path": str(Path(storage.cache_path).resolve()),
                    "steps": steps,
                    "result": str(Path(storage.step_path(last)).resolve()),
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    print(format_steps(storage.cache_path, storage.file_name_prefix, max_step=last))
    print(f"\nresult:   {Path(storage.step_path(last)).resolve()}")
    print(f"rejected: {Path(storage.cache_path).resolve()}/{storage.file_name_prefix}_step*.rejected.jsonl")
    print(f"look:     {dataflow_command()} inspect {storage.cache_path} --step {last} --head 5")


def dataflow_command() -> str:
    """How to call ``dataflow`` from here: the bare name when it is on PATH, else this environment's script
    (``make demo`` runs from a virtual environment nobody activated)."""
    script = Path(sys.executable).parent / "dataflow"
    on_path = shutil.which("dataflow")
    if on_path and (not script.exists() or Path(on_path).resolve() == script.resolve()):
        return "dataflow"
    return str(script) if script.exists() else f"{sys.executable} -m dataflow"


# ---------------------------------------------------------------- ops
def cmd_ops(args) -> int:
    from dataflow.core.registry import OPERATOR_REGISTRY, OperatorImportError

    try:
        ops = OPERATOR_REGISTRY.get_obj_map()
    except OperatorImportError as exc:
        raise _UserError(str(exc)) from None
    if args.doc:
        from dataflow.docs_gen import operator_doc

        try:
            print(operator_doc(args.doc), end="")
        except KeyError as exc:
            raise _UserError(exc.args[0]) from None
        return 0
    rows = [
        {"name": n, "category": c.category, "description": c.get_desc(args.lang), "module": c.__module__}
        for n, c in ops.items()
        if not args.category or c.category == args.category
    ]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=10)
    for cat in ("filter", "eval", "generate", "refine", "other"):
        group = [r for r in rows if r["category"] == cat]
        if group:
            print(f"{cat}:")
            for r in group:
                print(f"  {r['name']:<{width}}  {r['description']}")
    return 0


# ---------------------------------------------------------------- inspect
def cmd_inspect(args) -> int:
    cache = Path(args.cache_dir)
    if not cache.is_dir():
        raise _UserError(f"no such cache folder: {cache}")
    prefix = args.prefix or _only_prefix(cache)
    if args.step is None:
        if args.json:
            print(json.dumps(list(load_manifests(cache, prefix).values()), ensure_ascii=False, indent=2))
        else:
            print(format_steps(cache, prefix))
        return 0
    manifest = load_manifests(cache, prefix).get(args.step)
    if manifest is None:
        raise _UserError(f"no step {args.step} with prefix {prefix!r} in {cache}")
    from dataflow.storage.formats import read_table

    if args.rejected:
        path = cache / (manifest.get("rejected_file") or "")
        if not manifest.get("rejected_file") or not path.exists():
            print(f"step {args.step} rejected no rows")
            return 0
        df = read_table(path, "jsonl")[0]
    else:
        path = cache / str(manifest.get("file") or "")
        if not manifest.get("file") or not path.exists():
            raise _UserError(f"step {args.step}'s data file {path} is missing (deleted to save space?)")
        df = read_table(path, manifest["cache_type"])[0]
    if args.columns:
        wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise _UserError(
                f"no column {', '.join(map(repr, missing))} in step {args.step} "
                f"(columns: {', '.join(map(str, df.columns))})"
            )
        df = df[wanted]
    head = len(df) if args.head is None else args.head
    for row in df.head(head).to_dict("records"):
        print(dumps_row(row))
    print(f"({min(head, len(df))} of {len(df)} rows)", file=sys.stderr)
    return 0


def _head(value: str) -> int | None:
    """``--head N`` or ``--head all`` (None: every row)."""
    if value == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rows or 'all', got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of rows >= 0 or 'all', got {value!r}")
    return n


# ---------------------------------------------------------------- dedup
class _CommandMethods:
    """The ``--method`` names operators declare for a command, read from the registry only when argparse
    checks a value or writes the help (building the parser imports no operator). A name no imported
    operator declares is looked for in the user operator folders: asking for it is asking for their code."""

    def __init__(self, command: str):
        self.command = command

    def _methods(self, user_operators: bool = False) -> dict:
        from dataflow.core.registry import OPERATOR_REGISTRY, OperatorImportError

        try:
            return OPERATOR_REGISTRY.command_methods(self.command, user_operators=user_operators)
        except (KeyError, OperatorImportError) as exc:  # argparse prints it as a usage error, not a traceback
            raise argparse.ArgumentError(None, str(exc.args[0] if exc.args else exc)) from None

    def __contains__(self, method: object) -> bool:
        return method in self._methods() or method in self._methods(user_operators=True)

    def __iter__(self):
        return iter(sorted(self._methods()))


def cmd_dedup(args) -> int:
    """Near-duplicate removal by the operator that declares ``cli_command = "dedup"`` and ``--method``."""
    from dataflow.core.operator import run_keys
    from dataflow.core.registry import OPERATOR_REGISTRY
    from dataflow.storage import FileStorage

    if not Path(args.input).exists():
        raise _UserError(f"no such folder or file: {args.input}")
    if args.no_recursive and not Path(args.input).is_dir():
        raise _UserError(f"--no-recursive is for a folder of images; {args.input} is a file")
    try:
        cls = OPERATOR_REGISTRY.for_command("dedup", args.method, user_operators=True)
        op = cls.from_cli(args)
    except (KeyError, ValueError, TypeError) as exc:
        raise _UserError(str(exc.args[0] if exc.args else exc)) from None
    storage = FileStorage(
        args.input, cache_path=args.out, file_name_prefix="dedup", cache_type="jsonl", recursive=not args.no_recursive
    )
    # What compile() checks for a pipeline: every column the call reads (keep=<column> included) is there.
    try:
        run = getattr(type(op).run, "__wrapped_run__", type(op).run)
        _, keys = run_keys(run, op, (storage,), {"input_image_key": storage.image_key})
    except TypeError as exc:  # a user operator whose run takes no input_image_key
        raise _UserError(f"`dataflow dedup` calls run(storage, input_image_key=...): {exc}") from None
    columns = set(storage.read_columns(0))
    missing = [f"{what}={col!r}" for what, col in op.required_columns(keys).items() if col not in columns]
    if missing:
        raise _UserError(
            f"{cls.__name__}: {'; '.join(missing)} not a column of {args.input} (columns: {', '.join(sorted(columns))})"
        )
    from dataflow.storage.lock import CacheFolderError, CacheLock, CacheLockedError

    try:
        with CacheLock(args.out):  # one run per cache folder, as for pipelines
            op.run(storage.step(), input_image_key=storage.image_key)
    except (CacheLockedError, CacheFolderError) as exc:
        raise _UserError(str(exc)) from None
    _print_duplicates(op, storage)
    if args.json_out:
        _write_duplicates_map(op, args.json_out)
    return 0


def _print_duplicates(op, storage) -> None:
    """Each kept image with the images removed as its duplicates (score, and the chain link if any)."""
    from dataflow.storage.provenance import row_name  # rows by path, never by their image bytes

    rejected = storage.read_rejected(1)
    dups = rejected[rejected["reason"] == op.reason] if len(rejected) else rejected
    weight = op.weight_name if op.weight_name in dups.columns else None
    for kept, group in dups.groupby("duplicate_of", sort=False) if len(dups) else []:
        print(kept)
        images = group[storage.image_key] if storage.image_key in group.columns else group.index
        weights = group[weight] if weight else [None] * len(group)
        links = group["linked_by"] if "linked_by" in group.columns else [None] * len(group)
        for label, image, value, link in zip(group.index, images, weights, links):
            said = [f"{weight} {value:g}"] if weight else []
            said += [f"linked by {link}"] if isinstance(link, str) else []
            print(f"  {row_name(image, label)}" + (f"  ({', '.join(said)})" if said else ""))
    unreadable = rejected[rejected["reason"] != op.reason] if len(rejected) else rejected
    for label, image, reason in zip(
        unreadable.index, unreadable.get(storage.image_key, []), unreadable.get("reason", [])
    ):
        print(f"unreadable: {row_name(image, label)}  ({reason})", file=sys.stderr)
    meta = storage.manifest(1)
    print(
        f"\n{meta['rows_in']} images: {meta['rows_out']} kept, {len(dups)} near duplicates removed, "
        f"{len(unreadable)} unreadable"
    )
    print(f"kept:     {storage.step_path(1).resolve()}\nrejected: {storage.rejected_path(1).resolve()}")


def _write_duplicates_map(op, path: str) -> None:
    """imagededup's ``save_json``: the map as JSON, indent 2, keys sorted (pairs become 2-item lists)."""
    from dataflow.storage.atomic import atomic_path

    if not callable(getattr(op, "duplicates_map", None)):
        raise _UserError(f"{type(op).__name__} gives no duplicates map: --json-out is not available for it")
    try:
        mapping = op.duplicates_map()
    except RuntimeError as exc:
        raise _UserError(f"--json-out: {exc}") from None
    try:
        with atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(mapping, f, indent=2, sort_keys=True)
    except OSError as exc:
        raise _UserError(f"cannot write --json-out {path}: {exc.strerror or exc}") from None
    print(f"duplicates map: {Path(path).resolve()}")


# ---------------------------------------------------------------- report
def cmd_report(args) -> int:
    from dataflow.report import ReportError, build_report

    try:
        path = build_report(args.cache_dir, out=args.out, prefix=args.prefix, max_thumbnails=args.max_thumbnails)
    except ReportError as exc:
        raise _UserError(str(exc)) from None
    print(path)
    return 0


# ---------------------------------------------------------------- export
def cmd_export(args) -> int:
    """Export a step; exit 1 (one line on stderr) when rows were left out because their image is unreadable."""
    from dataflow.export import ExportError, MissingImagesError, export

    try:
        result = export(
            args.cache_dir,
            args.out,
            args.format,
            step=args.step,
            prefix=args.prefix,
            shard_size=args.shard_size,
            image_key=args.image_key,
            text_key=args.text_key,
            overwrite=args.overwrite,
            skip_missing=args.skip_missing,
        )
    except MissingImagesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ExportError as exc:
        raise _UserError(str(exc)) from None
    if args.json:
        print(result.manifest_path.read_text(encoding="utf-8"), end="")
        return 0
    size = f"{result.bytes_written / 1e6:.1f} MB" if result.bytes_written >= 1e5 else f"{result.bytes_written} bytes"
    how = ", ".join(f"{n} {what}" for what, n in result.images.items())
    print(
        f"exported {result.rows} rows of step {result.step} ({result.prefix}) as {result.format} to "
        f"{result.out_dir}: {size} written{f' ({how})' if how else ''}"
    )
    if result.failures:
        print(f"skipped {len(result.failures)} rows whose image cannot be read (see {result.manifest_path})")
    return 0


def cmd_score_cache(args) -> int:
    from dataflow.storage.score_cache import ENV, FILE_NAME, ScoreCache

    path = Path(args.cache_dir) / FILE_NAME
    if not path.is_file():
        raise _UserError(f"no score cache in {args.cache_dir} (no {FILE_NAME}; {ENV} may put it elsewhere)")
    cache = ScoreCache(path)
    if args.clear:
        cache.clear()
    figures = cache.stats()
    cache.close()
    if args.json:
        print(json.dumps(figures))
        return 0
    what = "cleared: " if args.clear else ""
    print(
        f"{what}{figures['path']}: {figures['entries']} results of {figures['files']} files, "
        f"{figures['bytes'] / 1e6:.1f} MB of at most {figures['limit'] / 1e6:.0f} MB"
    )
    return 0


def _only_prefix(cache: Path) -> str:
    """The one pipeline prefix in ``cache``; a folder without one, or with several, is a usage error."""
    try:
        return only_prefix(cache)
    except CacheFolderReadError as exc:
        raise _UserError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
