"""The docs cannot go stale: regenerated pages must equal the committed ones, and every example must run.

Conventions (also in docs/index.md, "How the docs are checked"):
- a ```python block runs on its own, in a subprocess, in a fresh temp folder holding ``example_data/`` (a link
  to the repo's);
- a ```python notrun block is shown, not run (needs a model the test machine lacks, or another library);
- in a ```bash block, each line starting with ``dataflow `` runs in such a folder and must exit 0.
Blocks the generator already ran while regenerating (the operator examples) are not run twice.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dataflow import docs_gen
from dataflow.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def doc_files() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + sorted((DOCS / "operators").glob("*.md"))


def code_blocks(kind: str) -> list:
    """``pytest.param(where, code, id=where)`` for each block whose fence info is exactly ``kind``."""
    out = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1).strip() == kind:
                line = text.count("\n", 0, m.start()) + 1
                where = f"docs/{path.relative_to(DOCS)}:{line}"
                out.append(pytest.param(where, m.group(2), id=where))
    return out


@pytest.fixture(scope="session")
def generated() -> docs_gen.GeneratedDocs:
    """All generated pages, regenerated once per session (runs every operator example)."""
    return docs_gen.generate()


def test_committed_docs_match_the_code(generated):
    problems = docs_gen.stale_files(generated, DOCS)
    assert not problems, "docs are stale:\n" + "\n".join(problems) + f"\n\nregenerate them with: {docs_gen.REGENERATE}"


def test_every_builtin_operator_has_a_page_with_a_working_example(generated):
    operators = docs_gen.builtin_operators()
    assert {f"operators/{n}.md" for n in operators} <= set(generated.files)
    assert not any(n.split(".")[0] != "dataflow" for n in (c.__module__ for c in operators.values()))
    for name in operators:
        page = generated.files[f"operators/{name}.md"]
        assert "This example fails" not in page, f"the example of {name} fails:\n{page}"
        assert "## `__init__`" in page and "## `run`" in page and "## Columns" in page
        if operators[name].category == "filter":
            assert "## Rejected reasons" in page


def test_pages_are_deterministic_and_relative(generated):
    for rel, text in generated.files.items():
        assert "/tmp" not in text and str(REPO) not in text and "dataflow_docs_" not in text, rel


@pytest.mark.parametrize("where, code", code_blocks("python"))
def test_python_blocks_run(where, code, generated):
    if code in generated.executed:
        return  # the generator ran exactly this block while regenerating
    with docs_gen.example_folder() as folder:
        docs_gen.run_block(code, folder, where)


@pytest.mark.parametrize("where, code", code_blocks("bash"))
def test_dataflow_commands_in_bash_blocks_run(where, code):
    commands = [shlex.split(line, comments=True) for line in code.splitlines() if line.startswith("dataflow ")]
    with docs_gen.example_folder() as folder:
        for argv in commands:
            status, output = docs_gen.run_cli(argv[1:], folder)
            assert status == 0, f"{where}: `{' '.join(argv)}` exited with {status}:\n{output}"


def test_ops_doc_prints_the_page(capsys):
    assert main(["ops", "--doc", "ImageHashDeduplicateFilter"]) == 0
    out = capsys.readouterr().out
    assert out == (DOCS / "operators" / "ImageHashDeduplicateFilter.md").read_text(encoding="utf-8")
    assert out.splitlines()[1] == "# ImageHashDeduplicateFilter" and "max_distance" in out


def test_ops_doc_unknown_name_suggests(capsys):
    assert main(["ops", "--doc", "ImageHashDedupFilter"]) == 2
    err = capsys.readouterr().err
    assert "no operator named 'ImageHashDedupFilter'" in err
    assert "did you mean 'ImageHashDeduplicateFilter'" in err


def test_ops_doc_generates_user_operator_pages_on_the_fly(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # ./operators holds the example user operator CaptionLengthEvaluator
    assert main(["ops", "--doc", "CaptionLengthEvaluator"]) == 0
    out = capsys.readouterr().out
    assert "# CaptionLengthEvaluator" in out and "`input_text_key`" in out and "- writes: `caption_words`" in out
    assert "Not run here" in out and "`dataflow inspect ./cache_docs`" not in out  # --doc runs no code


def test_param_docs_convention():
    google = """Does things.

    Parameters:
        threshold (float): how similar is too similar,
            as a cosine.
        keep: which row stays.

    Returns:
        nothing.
    """
    assert docs_gen.parse_param_docs(google) == {
        "threshold": "how similar is too similar, as a cosine.",
        "keep": "which row stays.",
    }
    assert docs_gen.parse_param_docs("Keeps.\n\n    Args:\n        keep: the first one\n") == {"keep": "the first one"}
    assert docs_gen.parse_param_docs("No sections.\n\n    indented: not a parameter\n") == {}
    assert not hasattr(docs_gen, "PARAM_MEANINGS")  # meanings come from the operators' docstrings only


def test_templates_are_not_docs_pages():
    """The index template and its inputs live in docs/_templates/, which doc_files() does not glob."""
    assert (DOCS / "_templates" / "index.md").is_file()
    assert not any("_templates" in str(p) for p in doc_files())
    assert "{{" not in (DOCS / "index.md").read_text(encoding="utf-8")
