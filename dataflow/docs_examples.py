"""Run the docs' code and show what it wrote: examples and code blocks in subprocesses, in a temporary
folder holding ``example_data/``, and their output rows as Markdown tables (used by ``docs_gen``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataflow.core.docs import EXAMPLE_CACHE, EXAMPLE_PREFIX, Example

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = REPO_ROOT / "example_data"
TIME = "x.xx"  # stands in for the seconds column of step tables
IMAGE_REASONS = {
    "missing": "the file does not exist (or the cell is empty)",
    "empty": "a zero-byte file",
    "truncated": "the file ends early (e.g. an interrupted download)",
    "not_an_image": "not a recognised image format",
    "too_large": "more pixels than `max_pixels` (decompression-bomb guard)",
    "unsupported": "an image Pillow cannot decode (format, mode or value type)",
    "error": "any other read failure; `detail` says which",
}


def md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------------ running code
class ExampleError(RuntimeError):
    """A docs code block exited with an error; ``args[0]`` is its last line of stderr."""


@contextlib.contextmanager
def example_folder() -> Iterator[Path]:
    """A temporary folder with ``example_data`` linked in (the current directory is left alone)."""
    with tempfile.TemporaryDirectory(prefix="dataflow_docs_") as tmp:
        if EXAMPLE_DATA.is_dir():
            (Path(tmp) / "example_data").symlink_to(EXAMPLE_DATA, target_is_directory=True)
        yield Path(tmp)


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run this Python with ``args`` in ``cwd``: this checkout's ``dataflow``, quiet logs, no user operators."""
    env = {k: v for k, v in os.environ.items() if k != "DATAFLOW_OPERATORS_PATH"}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        DATAFLOW_LOG_LEVEL="WARNING",
        DATAFLOW_PROGRESS="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="100",
    )
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL, capture_output=True, check=False
    )


def run_block(code: str, cwd: Path, where: str = "<docs>") -> str:
    """Run a docs code block as a script in ``cwd``; returns what it printed, raises ``ExampleError``."""
    done = _python(["-c", code], cwd)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or [f"exit code {done.returncode}"]
        raise ExampleError(lines[-1], f"{where} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``dataflow ARGV`` in ``cwd``; returns the exit code and stdout + stderr as one text, in order."""
    done = _python(
        [
            "-c",
            "import sys; sys.stderr = sys.stdout; from dataflow.cli import main; sys.exit(main(sys.argv[1:]))",
            *argv,
        ],
        cwd,
    )
    return done.returncode, done.stdout + done.stderr


def mask_seconds(text: str) -> str:
    """Replace the values of the ``seconds`` column of step tables in ``text`` by ``x.xx`` (same layout)."""
    lines, at = text.splitlines(), None
    for i, line in enumerate(lines):
        if re.match(r"step\s+operator\b", line) and "seconds" in line:
            at = line.index("seconds")
        elif at is not None and line.strip():
            m = re.match(r"\d+\.\d+", line[at:])
            if m:
                lines[i] = line[:at] + TIME.ljust(len(m.group())) + line[at + len(m.group()) :]
        else:
            at = None
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def steps_table(cache: Path, prefix: str) -> str:
    """``dataflow inspect`` 's step table with the seconds column replaced by ``x.xx``."""
    from dataflow.cli import format_steps

    return mask_seconds(format_steps(cache, prefix))


def scrubber(folder: Path):
    """Replace absolute paths of the temp folder and the repository with relative ones."""
    pairs = [(form, "example_data") for form in {str(EXAMPLE_DATA), os.path.realpath(EXAMPLE_DATA)}]
    for form in {str(folder), os.path.realpath(folder), str(REPO_ROOT), os.path.realpath(REPO_ROOT)}:
        pairs += [(form + os.sep, ""), (form, ".")]
    return lambda text: functools.reduce(lambda t, pair: t.replace(*pair), pairs, text)


@dataclass
class ExampleRun:
    error: str = ""
    stdout: str = ""
    steps_table: str = ""
    meta: dict = field(default_factory=dict)  # the manifest of the last step
    output: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)


def execute_example(example: Example) -> ExampleRun:
    """Run ``example`` in a temp folder; read back its last step, its rejected rows and its step table."""
    from dataflow.storage.formats import read_table

    if not EXAMPLE_DATA.is_dir():
        return ExampleRun(f"not run: {EXAMPLE_DATA.name}/ is not beside the package")
    with example_folder() as folder:
        scrub, cache = scrubber(folder), folder / EXAMPLE_CACHE
        try:
            run = ExampleRun(stdout=scrub(run_block(example.code, folder)))
        except ExampleError as exc:
            return ExampleRun(scrub(exc.args[0]))
        steps = sorted(
            cache.glob(f"{EXAMPLE_PREFIX}_step*.meta.json"),
            key=lambda p: int(re.search(r"_step(\d+)\.", p.name).group(1)),
        )
        if not steps:
            return ExampleRun(f"the example wrote no step to {EXAMPLE_CACHE}")
        run.meta = meta = json.loads(steps[-1].read_text())
        rows = lambda name, kind: read_table(cache / name, kind)[0].to_dict("records") if name else []
        run.output, run.rejected = rows(meta["file"], meta["cache_type"]), rows(meta.get("rejected_file"), "jsonl")
        run.steps_table = scrub(steps_table(cache, EXAMPLE_PREFIX))
        for row in run.output + run.rejected:
            row.update({k: scrub(v) for k, v in row.items() if isinstance(v, str)})
    return run


# ------------------------------------------------------------------------------------------ values
def _fmt_float(v: float, digits: int) -> str:
    r = round(float(v), digits) if math.isfinite(v) else v
    return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(0.0 if r == 0 else r)


def fmt_value(v: Any, digits: int) -> str:
    import numpy as np

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _fmt_float(float(v), digits)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    if not isinstance(v, (list, tuple, np.ndarray)):
        return str(v)
    items = list(v)
    if len(items) <= 4:
        return "[" + ", ".join(fmt_value(x, digits) for x in items) + "]"
    norm = ""
    if all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) for x in items):
        norm = f", L2 norm {_fmt_float(float(np.linalg.norm(np.asarray(items, dtype=float))), 3)}"
    return f"[{', '.join(fmt_value(x, digits) for x in items[:3])}, …] ({len(items)} values{norm})"


def value_kind(values: list) -> str:
    import numpy as np

    kinds, lengths, nulls = set(), set(), 0
    types = (
        ((bool, np.bool_), "bool"),
        ((int, np.integer), "int"),
        ((float, np.floating), "float"),
        (str, "str"),
        (dict, "dict"),
    )
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            nulls += 1
        elif isinstance(v, (list, tuple, np.ndarray)):
            kinds.add(f"list[{' | '.join(sorted({value_kind([x]).split(',')[0] for x in list(v)[:8]} or {'?'}))}]")
            lengths.add(len(v))
        else:
            kinds.add(next((name for t, name in types if isinstance(v, t)), type(v).__name__))
    if {"int", "float"} <= kinds:
        kinds.discard("int")
    text = (" or ".join(sorted(kinds)) or "null") + (f" of {lengths.pop()} values" if len(lengths) == 1 else "")
    return text + (", null in some rows" if nulls and kinds else "")


def rows_table(rows: list[dict], columns: list[str], digits: int) -> str:
    columns = [c for c in columns if any(c in r for r in rows)]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(out + ["| " + " | ".join(md(fmt_value(r.get(c), digits)) for c in columns) + " |" for r in rows])


def pick_rows(rows: list[dict], wanted: list[str] | None, n: int = 3) -> list[dict]:
    by_image = {r.get("image"): r for r in rows}
    return [by_image[w] for w in wanted or () if w in by_image] or rows[:n]


def pick_rejected(rows: list[dict], wanted: list[str] | None = None, n: int = 3) -> list[dict]:
    """Up to ``n`` rejected rows in file order: those wanted, else the operator's own reasons first (one of
    each, then a second of each), then the image-loading ones."""
    if wanted:
        return sorted(pick_rows(rows, wanted, n), key=lambda r: next(i for i, x in enumerate(rows) if x is r))
    by_reason: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_reason.setdefault(str(r.get("reason")), []).append(i)
    own = [v for k, v in by_reason.items() if k not in IMAGE_REASONS]
    order = [g[0] for g in own] + [g[1] for g in own if len(g) > 1]
    order += [v[0] for k, v in by_reason.items() if k in IMAGE_REASONS]
    order += [i for i in range(len(rows)) if i not in order]
    return [rows[i] for i in sorted(order[:n])]
