"""Generate the docs from the code: docs/operators/<Name>.md per built-in operator, and docs/index.md.

    python -m dataflow.docs_gen            # rewrite docs/index.md and docs/operators/*.md
    python -m dataflow.docs_gen --check    # exit 1 naming the stale files instead

An operator page comes from its class alone: the docstring (overview; each parameter's meaning from its
``Parameters:`` section), its declarations (description, category, execution, loads_model, thresholds,
``required_columns`` / ``output_columns`` with the default keys, an optional ``doc_sections()``) and its
``example`` (:class:`dataflow.core.docs.Example`), run in a subprocess in a temporary folder holding
``example_data/`` so the page shows its real output. docs/index.md is ``docs/_templates/index.md`` with
its ``{{placeholders}}`` filled from the code and the outputs of the other files there.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataflow.core.docs import EXAMPLE_CACHE, Example
from dataflow.docs_examples import (
    IMAGE_REASONS,
    REPO_ROOT,
    TIME,
    ExampleRun,
    example_folder,
    execute_example,
    mask_seconds,
    md,
    pick_rejected,
    pick_rows,
    rows_table,
    run_block,
    run_cli,
    scrubber,
    steps_table,
    value_kind,
)

DOCS_DIR = REPO_ROOT / "docs"
TEMPLATES = DOCS_DIR / "_templates"
REGENERATE = "python -m dataflow.docs_gen"
CATEGORY_ORDER = ("eval", "filter", "generate", "refine", "other")
STORAGE_MEANING = "the `FileStorage` positioned at this step: pass `storage.step()`"
EXECUTION = {
    "rowwise": "each row is decided on its own, so an engine may run it on any slice of the table "
    "(Ray: slices in parallel tasks)",
    "table": "needs the whole table at once: an engine runs it over the whole step (Ray: on the driver)",
    "dedup": "the three phases of `DedupFilter`: keys per row, on any slice; candidate pairs over all the "
    "keys; groups and survivors (Ray: keys in parallel tasks, then a distributed search)",
}
SIDES = {"min": "keeps values >= it", "max": "keeps values <= it", "dup": "a similarity at or above it is a duplicate"}


# ------------------------------------------------------------------------------------------ the class
def builtin_operators() -> dict[str, type]:
    """Every operator registered from a ``dataflow.*`` module, by name (user operators excluded)."""
    from dataflow.core.registry import OPERATOR_REGISTRY

    OPERATOR_REGISTRY.load_builtins()
    import dataflow.operators as pkg

    for info in pkgutil.walk_packages(pkg.__path__, "dataflow.operators."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # an optional dependency (e.g. ray) that is not installed
            if (exc.name or "").split(".")[0] == "dataflow":
                raise
            warnings.warn(f"docs: skipped {info.name} ({exc})", stacklevel=2)
    return {
        name: cls
        for name, cls in sorted(OPERATOR_REGISTRY._obj_map.items())
        if cls.__module__.split(".")[0] == "dataflow"
    }


def _functions(cls) -> tuple[Any, Any]:
    """``__init__`` and ``run`` as written (not the wrappers ``OperatorABC`` adds)."""
    init = inspect.unwrap(cls.__init__)
    return (lambda self: None) if init is object.__init__ else init, getattr(cls.run, "__wrapped_run__", cls.run)


def _parameters(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _annotation(a) -> str:
    return "" if a is inspect.Parameter.empty else a if isinstance(a, str) else inspect.formatannotation(a)


def _signature_text(name: str, params: list[inspect.Parameter], returns: str = "") -> str:
    parts = []
    for p in params:
        text = ("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "") + p.name
        text += f": {_annotation(p.annotation)}" if _annotation(p.annotation) else ""
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}" if _annotation(p.annotation) else f"={p.default!r}"
        parts.append(text)
    returns = f" -> {_annotation(returns)}" if _annotation(returns) else ""
    one_line = f"{name}({', '.join(parts)}){returns}"
    return one_line if len(one_line) <= 100 else f"{name}(\n" + "".join(f"    {p},\n" for p in parts) + f"){returns}"


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keys|Keyword Args|Keyword Arguments)\s*:?\s*$")
_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_param_docs(doc: str | None) -> dict[str, str]:
    """Per-parameter text of the ``Parameters:`` / ``Args:`` sections of a (Google style) docstring:
    ``name: meaning`` or ``name (type): meaning``, continuation lines indented further."""
    out: dict[str, str] = {}
    current, base, inside = None, None, False
    for line in inspect.cleandoc(doc or "").splitlines():
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if not text:
            continue
        if indent == 0:
            inside, current, base = bool(_SECTION.match(text)), None, None
        elif inside:
            base = indent if base is None else base
            m = _ITEM.match(text) if indent == base else None
            if m:
                current, out[m.group(1)] = m.group(1), m.group(2).strip()
            elif indent > base and current is not None:
                out[current] = (out[current] + " " + text).strip()
    return out


def _strip_param_sections(doc: str) -> str:
    out, skipping = [], False
    for line in doc.splitlines():
        if not line.startswith((" ", "\t")) and line.strip():
            skipping = bool(_SECTION.match(line.strip()))
        out += [] if skipping else [line]
    return "\n".join(out).strip()


def _own_doc(fn) -> str:
    """A function's own docstring (``inspect.getdoc`` would inherit the base class's)."""
    return inspect.cleandoc(fn.__doc__) if getattr(fn, "__doc__", None) else ""


def _param_table(params: list[inspect.Parameter], documented: dict[str, str], what: str) -> str:
    rows = [f"| {what} | type | default | meaning |", "|---|---|---|---|"]
    for p in (p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
        ann = f"`{md(_annotation(p.annotation))}`" if _annotation(p.annotation) else ""
        default = "required" if p.default is inspect.Parameter.empty else f"`{md(repr(p.default))}`"
        meaning = documented.get(p.name) or (STORAGE_MEANING if p.name == "storage" else "")
        rows.append(f"| `{p.name}` | {ann} | {default} | {md(meaning)} |")
    return "\n".join(rows)


def _default_keys(cls: type) -> dict:
    """The ``run`` keys with their defaults; a required key stands as ``<name>``."""
    return {
        p.name: f"<{p.name}>" if p.default is inspect.Parameter.empty else p.default
        for p in _parameters(_functions(cls)[1])
        if p.name != "storage" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _declared(cls: type, method: str, keys: dict) -> Any:
    """``method(keys)`` of an instance built with the defaults, else of one whose ``__init__`` did not run,
    else of ``OperatorABC`` (the ``input_*`` / ``output_*`` rule)."""
    from dataflow.core.operator import OperatorABC

    for make in (cls, lambda: object.__new__(cls)):
        try:
            return getattr(make(), method)(keys)
        except Exception:  # required arguments, or state that only __init__ sets: try the next way
            continue
    return getattr(OperatorABC, method)(None, keys)


def _column_list(cols) -> str:
    return ", ".join(f"`{c}`" for c in cols) if cols else "none"


def _threshold_column(t, keys: dict) -> str:
    value, key = keys.get(t.column), t.column.startswith(("input_", "output_"))
    if not key or (isinstance(value, str) and not value.startswith("<")):
        return f"`{value}` (`{t.column}`)" if key else f"`{t.column}`"
    return f"the column named by `{t.column}`" + (f"; `{t.default}` when it is None" if t.default else "")


def default_example(cls: type, module: str) -> Example:
    keys = "".join(f", {k}={v!r}" for k, v in _default_keys(cls).items() if not str(v).startswith("<"))
    return Example.on_example_data(
        cls.__name__,
        f"op = {cls.__name__}()\nop.run(storage.step(){keys})",
        module,
        note="Default example: the operator built with its defaults and run with its "
        "default keys (declare a better one: `example = Example(...)` on the class).",
    )


# ------------------------------------------------------------------------------------------ one page
def reason_table(cls: type, run: ExampleRun | None, reads_images: bool, not_reasons: set[str]) -> str:
    """Reasons named in the docstring's sentences about reasons / rejected rows, those seen in the example,
    and the image-loading codes of ``dataflow.media``."""
    seen: dict[str, int] = {}
    for r in run.rejected if run else []:
        seen[str(r.get("reason"))] = seen.get(str(r.get("reason")), 0) + 1
    sentences = re.split(r"(?<=[.;])\s+", " ".join((inspect.getdoc(cls) or "").split()))
    tokens = [t for s in sentences if re.search(r"\breason|\brejected", s) for t in re.findall(r"``([a-z]\w*)``", s)]
    documented = [t for t in dict.fromkeys(tokens) if t not in not_reasons and t not in IMAGE_REASONS]
    codes = list(dict.fromkeys([*documented, *[c for c in seen if c not in IMAGE_REASONS]]))
    image_seen = [c for c in IMAGE_REASONS if c in seen]
    if not codes and not image_seen and not reads_images:
        return "No reasons found: the docstring names none and the example rejected nothing."
    lines = ["| reason | source | rows in the example |", "|---|---|---|"]
    lines += [
        f"| `{c}` | {'the class docstring' if c in documented else 'seen in the example'} | {seen.get(c, 0)} |"
        for c in codes
    ]
    lines += [f"| `{c}` | image loading (`dataflow.media`): {md(IMAGE_REASONS[c])} | {seen[c]} |" for c in image_seen]
    others = [c for c in IMAGE_REASONS if c not in seen]
    if reads_images and others:
        lines.append(
            f"| {', '.join(f'`{c}`' for c in others)} | image loading (`dataflow.media`): the image "
            "could not be read (`too_large`: more pixels than `max_pixels`); `detail` says more | 0 |"
        )
    return "\n".join(lines)


def operator_page(cls: type, run_example: bool = True, executed: set[str] | None = None) -> str:
    """The markdown page of one operator; its example runs (in a subprocess) unless ``run_example`` is False."""
    import dataflow.operators.core_vision as cv

    name, is_filter, doc = cls.__name__, cls.category == "filter", inspect.getdoc(cls) or ""
    import_from = "dataflow.operators.core_vision" if getattr(cv, name, None) is cls else cls.__module__
    example = cls.example if isinstance(getattr(cls, "example", None), Example) else default_example(cls, import_from)
    run = execute_example(example) if run_example and not example.not_run else None
    if run and not run.error and executed is not None:
        executed.add(example.code)
    init_fn, run_fn = _functions(cls)
    documented = {k: v for d in (doc, _own_doc(init_fn), _own_doc(run_fn)) for k, v in parse_param_docs(d).items()}
    init_params, run_params = _parameters(init_fn), _parameters(run_fn)
    out = [
        f"<!-- Generated from the code by `{REGENERATE}`; edit the operator's class (docstring, declarations, "
        "`example`), not this file. -->"
        if cls.__module__.split(".")[0] == "dataflow"
        else "<!-- Generated on the fly from the class. -->",
        f"# {name}",
        "",
        f"**{cls.category}** operator · `from {import_from} import {name}`",
        "",
        f"> {cls.get_desc('en')}",
        "",
    ]
    if cls.get_desc("zh") != cls.get_desc("en"):
        out += [f"> 中文：{cls.get_desc('zh')}", ""]
    out += ["## Overview", "", _strip_param_sections(doc) or "(no docstring)", ""]
    for title, fn, params, sig, what in (
        ("__init__", init_fn, init_params, _signature_text(name, init_params), "parameter"),
        (
            "run",
            run_fn,
            run_params,
            _signature_text("run", run_params, inspect.signature(run_fn).return_annotation),
            "key",
        ),
    ):
        out += [f"## `{title}`", "", "```python signature", sig, "```", ""]
        out += [_strip_param_sections(_own_doc(fn)), ""] if _own_doc(fn) else []
        out += [_param_table(params, documented, what) if params else "No parameters.", ""]

    keys = _default_keys(cls)
    out += [
        "## Execution",
        "",
        f'- `execution = "{cls.execution}"`: {EXECUTION.get(cls.execution, "")}.',
        "- `loads_model = True`: it loads a model; engines keep one instance per worker (an actor), so the "
        "model loads once."
        if cls.loads_model
        else "- `loads_model = False`: no model to load.",
    ]
    rows = [
        f"| `{t.param}` | {_threshold_column(t, keys)} | {t.side}: {SIDES.get(t.side, '')} |" for t in cls.thresholds
    ]
    out += (
        [
            "- thresholds (`dataflow report` draws them on the score column):",
            "",
            "| parameter | column | side |",
            "|---|---|---|",
            *rows,
            "",
        ]
        if rows
        else ["- thresholds: none.", ""]
    )

    reads = [
        f"the column named by `{k}` (required)" if str(c).startswith("<") else f"`{c}` (`{k}`)"
        for k, c in _declared(cls, "required_columns", keys).items()
    ]
    reads += [f"`{k}`: optional, none by default" for k, v in keys.items() if k.startswith("input_") and v is None]
    writes = list(_declared(cls, "output_columns", keys))
    out += [
        "## Columns",
        "",
        "With the default keys:",
        "",
        f"- reads: {', '.join(reads) or 'no named column'}",
        f"- writes: {_column_list(writes)}",
    ]
    if is_filter:
        params = init_params + run_params
        not_reasons = {p.name for p in params} | {str(p.default) for p in params} | set(writes)
        not_reasons |= set(run.meta.get("columns", ())) | {c for r in run.rejected for c in r} if run else set()
        reads_images = any(p.name == "input_image_key" for p in run_params)
        out += [
            "- drops rows: each dropped row goes to `<prefix>_step<N>.rejected.jsonl` with a `reason`",
            "",
            "## Rejected reasons",
            "",
            reason_table(cls, run, reads_images, not_reasons),
        ]
    out += ["", "## Example", ""] + ([example.note, ""] if example.note else []) + _example_section(example, run)
    if example.real_use:
        out += ["With the real model (not run here):", "", "```python notrun", example.real_use, "```", ""]
    out += ["## Output format", ""] + _output_format(run, example, is_filter, writes)
    sections = getattr(cls, "doc_sections", None)
    out += [sections()] if callable(sections) else []
    return "\n".join(out).rstrip() + "\n"


def _example_section(example: Example, run: ExampleRun | None) -> list[str]:
    code = example.code.rstrip()
    if example.not_run:
        return [f"Not run: {example.not_run}.", "", "```python notrun", code, "```", ""]
    if run is None:
        return [
            "```python",
            code,
            "```",
            "",
            f"(Not run here: `dataflow ops --doc` runs no code; `{REGENERATE}` "
            "runs the examples of built-in operators.)",
            "",
        ]
    if run.error:
        return ["```python notrun", code, "```", "", f"This example fails: `{md(run.error)}`.", ""]
    out = [
        "Run from a folder holding `example_data/` (the repository root). The output below was produced by "
        f"running it (`{REGENERATE}`).",
        "",
        "```python",
        code,
        "```",
        "",
    ]
    out += ["Printed:", "", "```text", run.stdout.rstrip(), "```", ""] if run.stdout.strip() else []
    return out + [
        f"`dataflow inspect {EXAMPLE_CACHE}` (seconds replaced by `{TIME}`):",
        "",
        "```text",
        run.steps_table,
        "```",
        "",
    ]


def _output_format(run: ExampleRun | None, example: Example, is_filter: bool, writes: list[str]) -> list[str]:
    if not run or run.error:
        return [f"Every input row{' that is kept' if is_filter else ''}, plus the columns {_column_list(writes)}.", ""]
    kind = lambda rows, c: md(value_kind([r.get(c) for r in rows]))
    columns, new, head = (
        run.meta["columns"],
        run.meta.get("new_columns", []),
        ["| column | type in the example |", "|---|---|"],
    )
    out = [
        f"{'The kept rows, with all their' if is_filter else 'Every row, with all its'} input columns "
        f"({_column_list([c for c in columns if c not in new])}), plus:",
        "",
    ]
    out += (head + [f"| `{c}` | {kind(run.output, c)} |" for c in new] if new else ["no new columns."]) + [""]
    rej_cols = list(dict.fromkeys(c for r in run.rejected for c in r if c not in columns))
    if is_filter and run.rejected:
        out += ["Rejected rows (`<prefix>_step<N>.rejected.jsonl`): the input columns, plus:", "", *head]
        out += [f"| `{c}` | {kind(run.rejected, c)} |" for c in rej_cols] + [""]
    show = example.show or ["image", *[c for c in new if c != "image"][:6]]
    show += ["image_error"] if "image_error" in new and "image_error" not in show and not example.show else []
    picked = pick_rows(run.output, example.rows)
    out += [
        f"### Example output ({len(picked)} of {run.meta['rows_out']} rows, selected columns)",
        "",
        rows_table(picked, show, example.digits),
        "",
    ]
    if is_filter:
        rej = pick_rejected(run.rejected, example.rejected_rows)
        show_rej = example.rejected_show or ["image", "reason", *[c for c in rej_cols if c != "reason"]][:6]
        out += [
            f"### Example rejected rows ({len(rej)} of {len(run.rejected)} rows, selected columns)",
            "",
            rows_table(rej, show_rej, example.digits) if rej else "None.",
            "",
        ]
    return out


# ------------------------------------------------------------------------------------------ index
def cli_help() -> list[tuple[str, str]]:
    """``(command, --help text)`` for ``dataflow`` and each subcommand, 100 columns wide."""
    from dataflow.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for command, p in [("dataflow", parser), *((f"dataflow {n}", p) for n, p in sub.choices.items())]:
        p.formatter_class = functools.partial(p.formatter_class, width=98)  # what COLUMNS=100 gives
        out.append((command, p.format_help()))
    return out


def _key_table(keys, meanings: dict[str, str], defaults: dict | None = None) -> str:
    cell = lambda k: ("required" if defaults[k] is inspect.Parameter.empty else f"`{defaults[k]!r}`") + " | "
    head = ["| key | default | meaning |", "|---|---|---|"] if defaults else ["| key | meaning |", "|---|---|"]
    return "\n".join(head + [f"| `{k}` | {cell(k) if defaults else ''}{meanings.get(k, '')} |" for k in keys])


def _index(operators: dict[str, type], executed: set[str]) -> str:
    """``docs/_templates/index.md`` with its placeholders filled."""
    from dataflow.core.config import STEP_KEYS, TOP_LEVEL_KEYS
    from dataflow.storage import FileStorage

    read = lambda name: (TEMPLATES / name).read_text(encoding="utf-8")
    groups = [
        [f"- [{n}](operators/{n}.md): {c.get_desc('en')}" for n, c in operators.items() if c.category == cat]
        for cat in CATEGORY_ORDER
    ]
    values = {
        "operators": "\n\n".join(
            "\n".join([f"### {cat}", "", *group]) for cat, group in zip(CATEGORY_ORDER, groups, strict=True) if group
        ),
        "pipeline_code": read("pipeline.py").rstrip() + "\n",
    }
    with example_folder() as folder:
        scrub, cache = scrubber(folder), folder / "cache_local"
        values["pipeline_printed"] = scrub(run_block(values["pipeline_code"], folder, "docs/_templates/pipeline.py"))
        executed.add(values["pipeline_code"])
        values["cache_listing"] = "\n".join(["cache_local/"] + [f"  {p.name}" for p in sorted(cache.iterdir())])
        values["steps_table"] = steps_table(cache, "curate")
        argv = ["inspect", "./cache_local", "--step", "2", "--rejected", "--head", "3"]
        values["rejected_rows"] = scrub(run_cli(argv, folder)[1])
        manifest = json.loads((cache / "curate_step2.meta.json").read_text())
        manifest.update({k: f"<{k}: sha256 prefix>" for k in ("fingerprint", "input_fingerprint")})
        manifest.update(
            seconds=TIME, written_at="<time>", image_base="/absolute/path/to/example_data", dataflow_version="<version>"
        )
        values["manifest"] = json.dumps(manifest, indent=2, ensure_ascii=False)
        for name in ("demo", "broken", "typo"):
            values[f"{name}_yaml"] = read(f"{name}.yaml")
            (folder / f"{name}.yaml").write_text(values[f"{name}_yaml"], encoding="utf-8")
        for name, argv in (
            ("demo", ["demo.yaml"]),
            ("check", ["demo.yaml", "--check"]),
            ("broken", ["broken.yaml"]),
            ("typo", ["typo.yaml"]),
        ):
            code, output = run_cli(["run", *argv], folder)
            values[f"{name}_exit"], values[f"{name}_output"] = str(code), scrub(mask_seconds(output))
    meanings: dict[str, dict[str, str]] = {}  # config_keys.md: "## table" headings, "- `key`: meaning" items
    for line in read("config_keys.md").splitlines():
        if line.startswith("## "):
            table = meanings.setdefault(line[3:].strip(), {})
        elif m := re.match(r"- `(\w+)`: (.*)$", line):
            table[m.group(1)] = m.group(2).strip()
    defaults = {p.name: p.default for p in _parameters(FileStorage.__init__)}
    values["top_level_keys"] = _key_table(TOP_LEVEL_KEYS, meanings.get("top-level", {}))
    values["storage_keys"] = _key_table(defaults, meanings.get("storage", {}), defaults)
    values["step_keys"] = _key_table(STEP_KEYS, meanings.get("step", {}))
    values["cli_help"] = "\n\n".join(f"### `{c}`\n\n```text\n{text.rstrip()}\n```" for c, text in cli_help())
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)].rstrip("\n"), read("index.md")).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ everything
@dataclass
class GeneratedDocs:
    files: dict[str, str]  # path relative to docs/ -> text
    executed: set[str]  # code blocks run while generating


def generate(operators: dict[str, type] | None = None, jobs: int | None = None) -> GeneratedDocs:
    """All generated files (``index.md``, ``operators/<Name>.md``); ``jobs`` examples run at once."""
    operators = builtin_operators() if operators is None else operators
    executed: set[str] = set()
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        index = pool.submit(_index, operators, executed)
        pages = {f"operators/{n}.md": pool.submit(operator_page, cls, True, executed) for n, cls in operators.items()}
        files = {rel: page.result() for rel, page in pages.items()} | {"index.md": index.result()}
    return GeneratedDocs(dict(sorted(files.items())), executed)


def _differences(generated: GeneratedDocs, docs_dir: Path) -> Iterator[tuple[Path, str | None, str]]:
    """``(path, text to write or None to delete, what is wrong)`` for each file that is not as generated."""
    for rel, text in generated.files.items():
        old = (docs_dir / rel).read_text(encoding="utf-8") if (docs_dir / rel).exists() else None
        if old != text:
            diff = difflib.unified_diff(
                (old or "").splitlines(), text.splitlines(), "committed", "generated", lineterm="", n=1
            )
            yield (
                docs_dir / rel,
                text,
                "missing" if old is None else "differs from the code\n" + "\n".join(list(diff)[:40]),
            )
    for path in sorted((docs_dir / "operators").glob("*.md")):
        if f"operators/{path.name}" not in generated.files:
            yield path, None, "no registered built-in operator has this page (delete it)"


def stale_files(generated: GeneratedDocs, docs_dir: Path = DOCS_DIR) -> list[str]:
    """Generated files that are missing or differ in ``docs_dir``, and operator pages no operator has."""
    return [f"{path}: {why}" for path, _, why in _differences(generated, docs_dir)]


def write_docs(generated: GeneratedDocs, docs_dir: Path = DOCS_DIR) -> list[Path]:
    """Write the files, delete operator pages of operators that no longer exist; returns what changed."""
    changed = list(_differences(generated, docs_dir))
    for path, text, _ in changed:
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return [path for path, _, _ in changed]


def operator_doc(name: str) -> str:
    """The page of operator ``name``: the committed file for a built-in, else built from the class (no code
    runs). Raises ``KeyError`` with the closest name for an unknown operator."""
    from dataflow.core.registry import OPERATOR_REGISTRY

    cls = OPERATOR_REGISTRY.get(name)
    committed = DOCS_DIR / "operators" / f"{cls.__name__}.md"
    if cls.__module__.split(".")[0] == "dataflow" and committed.is_file():
        return committed.read_text(encoding="utf-8")
    return operator_page(cls, run_example=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Regenerate docs/index.md and docs/operators/*.md.")
    parser.add_argument("--out", default=str(DOCS_DIR), help=f"docs folder (default {DOCS_DIR})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming stale files")
    parser.add_argument("--jobs", type=int, default=None, help="examples run at once (default: one per CPU core)")
    args = parser.parse_args(argv)
    generated, out = generate(jobs=args.jobs), Path(args.out)
    if args.check:
        problems = stale_files(generated, out)
        print(
            "\n".join(
                [*problems, f"{len(problems)} stale file(s)" + (f"; regenerate with: {REGENERATE}" if problems else "")]
            ),
            file=sys.stderr,
        )
        return 1 if problems else 0
    changed = write_docs(generated, out)
    print("\n".join([f"{len(generated.files)} files generated in {out}; {len(changed)} changed", *map(str, changed)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
