"""``dataflow ops --doc NAME`` builds a user operator's page from its class alone: no code runs, the
current directory and the model loaders are left alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dataflow import docs_gen
from dataflow.cli import main
from dataflow.core.docs import Example
from dataflow.core.registry import OPERATOR_REGISTRY

FIXTURE = Path(__file__).parent / "fixtures" / "user_operators.py"


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A project folder whose ``operators/`` holds the fixture's three user operators."""
    (tmp_path / "operators").mkdir()
    shutil.copy(FIXTURE, tmp_path / "operators" / "user_operators.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATAFLOW_OPERATORS_PATH", raising=False)
    saved = dict(OPERATOR_REGISTRY._obj_map)
    yield tmp_path
    OPERATOR_REGISTRY._obj_map.clear()
    OPERATOR_REGISTRY._obj_map.update(saved)
    OPERATOR_REGISTRY._loaded_paths.discard(str((tmp_path / "operators" / "user_operators.py").resolve()))


def page_of(name: str, capsys) -> str:
    assert main(["ops", "--doc", name]) == 0
    return capsys.readouterr().out


def test_doc_of_a_user_evaluator(user_project, capsys):
    clip_models = pytest.importorskip("dataflow.models.clip")
    loader = clip_models.load_image_embedder
    out = page_of("UserRednessEvaluator", capsys)
    assert os.getcwd() == str(user_project)
    assert clip_models.load_image_embedder is loader
    assert out.startswith("<!-- Generated on the fly from the class. -->\n# UserRednessEvaluator\n")
    assert "> Mean red minus mean green/blue per image (user operator)." in out
    assert "> 中文：每张图像红色通道减去其他通道的均值（用户算子）。" in out
    assert "| `num_workers` | `int \\| None` | `1` |  |" in out  # in the signature, no documented meaning
    assert "| `input_image_key` | `str` | `'image'` | column holding the image |" in out
    assert '`execution = "rowwise"`' in out and "`loads_model = False`" in out and "thresholds: none" in out
    assert "- reads: `image` (`input_image_key`)" in out and "- writes: `redness`, `image_error`" in out
    assert "Not run here" in out and "Default example" in out
    assert "dataflow inspect ./cache_docs" not in out and not (user_project / "cache_docs").exists()
    assert sorted(p.name for p in user_project.iterdir()) == ["operators"]  # nothing was written


def test_doc_of_a_user_filter_shows_its_threshold(user_project, capsys):
    out = page_of("UserCaptionLengthFilter", capsys)
    assert "Keeps rows whose caption has at least min_words words (user operator)." in out
    assert "| `min_words` | `int` | `6` | fewest words a kept caption has |" in out
    assert "| parameter | column | side |" in out
    assert "| `min_words` | `caption_words` | min: keeps values >= it |" in out
    assert "## Rejected reasons" in out and "drops rows" in out
    assert os.getcwd() == str(user_project)


def test_doc_of_a_user_dedup_filter(user_project, capsys):
    out = page_of("UserCaptionDeduplicateFilter", capsys)
    assert '`execution = "dedup"`' in out
    assert "- reads: `caption` (`input_text_key`), `image` (`input_image_key`)" in out
    assert "| `input_text_key` | `str` | `'caption'` | column holding the caption |" in out


def test_a_declared_example_is_shown_not_run(tmp_path, monkeypatch):
    from dataflow.core import ImageEvaluator

    class Declared(ImageEvaluator):
        """Adds ``one``.

        Parameters:
            input_image_key: column holding the image
        """

        columns = ("one",)
        example = Example.on_example_data(
            "Declared",
            """
            op = Declared()
            op.run(storage.step())
            """,
            module="my_project.operators",
            note="A note above the code.",
        )

        def score(self, source, base_dir):
            return {"one": 1.0}

    monkeypatch.chdir(tmp_path)
    page = docs_gen.operator_page(Declared, run_example=False)
    assert "A note above the code." in page and "from my_project.operators import Declared" in page
    assert "op = Declared()\nop.run(storage.step())\n```" in page and "Not run here" in page
    assert list(tmp_path.iterdir()) == []


def test_doc_sections_are_appended():
    from dataflow.operators.core_vision import ImageQualityEvaluator

    page = docs_gen.operator_page(ImageQualityEvaluator, run_example=False)
    assert page.rstrip().endswith(ImageQualityEvaluator.doc_sections().rstrip())
    assert "## Metrics" in page and "| `sharpness` |" in page
