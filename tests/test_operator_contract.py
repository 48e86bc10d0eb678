"""The operator contract: what an operator class declares is what everything else reads.

- no module outside ``dataflow/operators/`` names a built-in operator;
- every built-in declares its descriptions and documents every parameter;
- ``compile()`` checks columns that parameters name (``keep="sharpness"``);
- fingerprints follow content (arrays, callables) and code (editing a user operator reruns its step).
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dataflow.core import OPERATOR_REGISTRY, DedupFilter, ImageEvaluator, OperatorABC, RowFilter
from dataflow.core.evaluator import ImageEvaluator as _Evaluator
from dataflow.pipeline import PipelineABC, PipelineCompileError
from dataflow.storage.manifest import fingerprint
from dataflow.utils.storage import FileStorage

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dataflow"


def builtins() -> dict[str, type]:
    return {n: c for n, c in OPERATOR_REGISTRY.get_obj_map().items() if c.__module__.startswith("dataflow.")}


# ------------------------------------------------------------------------------------------ one file
def test_no_module_outside_the_operators_folder_names_a_builtin_operator():
    sources = {
        p: p.read_text(encoding="utf-8")
        for p in PACKAGE.rglob("*.py")
        if "operators" not in p.relative_to(PACKAGE).parts[:1]
    }
    leaks = [
        f"{name} in {path.relative_to(REPO)}"
        for name in builtins()
        for path, text in sources.items()
        if re.search(rf"\b{name}\b", text)
    ]
    assert not leaks, "built-in operator names outside dataflow/operators/:\n" + "\n".join(leaks)


@pytest.mark.parametrize("name", sorted(builtins()))
def test_builtin_declares_descriptions_and_documents_every_parameter(name):
    cls = builtins()[name]
    assert cls.description and cls.description_zh and cls.description != cls.description_zh
    assert cls.get_desc("en") == cls.description and cls.get_desc("zh") == cls.description_zh
    doc = inspect.getdoc(cls) or ""
    assert "Parameters:" in doc, f"{name}: the class docstring has no Parameters section"
    section = doc.split("Parameters:", 1)[1]
    documented = set(re.findall(r"^ {4}(\w+):", section, flags=re.MULTILINE))
    params = [
        p
        for fn in (cls.__init__, getattr(cls.run, "__wrapped_run__", cls.run))
        for p in inspect.signature(fn).parameters
        if p not in ("self", "storage", "kwargs")
    ]
    missing = [p for p in params if p not in documented]
    assert not missing, f"{name}: parameters without a meaning in the docstring: {missing}"
    assert cls.execution in ("rowwise", "table", "dedup")
    if issubclass(cls, DedupFilter):
        assert cls.execution == "dedup" and cls.search in ("exact", "hamming", "cosine", "verified")
    if issubclass(cls, (ImageEvaluator, RowFilter)):
        assert cls.execution == "rowwise"


# ------------------------------------------------------------------------------------------ compile
class ByColumn(PipelineABC):
    def __init__(self, src, cache, keep):
        self.storage = FileStorage(src, cache_path=cache)
        self.dedup = OPERATOR_REGISTRY.get("ImageHashDeduplicateFilter")(keep=keep)

    def forward(self):
        self.dedup.run(self.storage.step(), input_image_key="image", input_hash_key="phash")


def test_compile_checks_a_column_named_by_a_parameter(tmp_path):
    src = tmp_path / "in.jsonl"
    pd.DataFrame({"image": ["a.jpg"], "phash": ["0" * 16], "sharpness": [1.0]}).to_json(
        src, orient="records", lines=True
    )
    ByColumn(src, tmp_path / "ok", keep="sharpness").compile()
    ByColumn(src, tmp_path / "ok2", keep="largest").compile()
    with pytest.raises(PipelineCompileError, match=r"keep='sharpnes' is not a column at that point"):
        ByColumn(src, tmp_path / "bad", keep="sharpnes").compile()


# ------------------------------------------------------------------------------------------ fingerprints
def test_parameters_are_fingerprinted_by_content():
    big = np.zeros(5000)
    other = big.copy()
    other[4321] = 1.0
    assert repr(big) == repr(other)  # what the old repr-based fingerprint saw
    assert fingerprint(big) != fingerprint(other)
    assert fingerprint(big) == fingerprint(np.zeros(5000))
    assert fingerprint(lambda x: x + 1) != fingerprint(lambda x: x + 2)
    assert fingerprint(lambda x: x + 1) == fingerprint(lambda x: x + 1)
    frame = pd.DataFrame({"a": range(3000)})
    assert fingerprint(frame) != fingerprint(frame.assign(a=frame["a"].where(frame.index != 2999, -1)))


class Scale(OperatorABC):
    """Test operator: multiplies a column by an array's sum or a function's value."""

    def __init__(self, weights=None, fn=None):
        self.weights, self.fn = weights, fn

    def run(self, storage, input_key: str = "a", output_key: str = "b"):
        df = storage.read()
        df[output_key] = df[input_key] * 2
        storage.write(df)
        return [output_key]


def test_operator_fingerprints_differ_for_arrays_differing_in_one_element_and_for_callables():
    a, b = np.zeros(2000), np.zeros(2000)
    b[-1] = 1
    keys = {"input_key": "a", "output_key": "b"}
    assert Scale(weights=a).fingerprint(keys) != Scale(weights=b).fingerprint(keys)
    assert Scale(fn=np.mean).fingerprint(keys) != Scale(fn=np.median).fingerprint(keys)
    assert Scale(weights=a).fingerprint(keys) == Scale(weights=a.copy()).fingerprint(keys)


USER_OP = '''
from dataflow.core import OperatorABC
from dataflow.utils.registry import OPERATOR_REGISTRY


@OPERATOR_REGISTRY.register()
class UserPlusOne(OperatorABC):
    """Adds one."""

    def run(self, storage, input_key: str = "a", output_key: str = "b"):
        df = storage.read()
        df[output_key] = df[input_key] + {increment}
        storage.write(df)
        return [output_key]
'''


class UsesUserOp(PipelineABC):
    def __init__(self, src, cache):
        self.storage = FileStorage(src, cache_path=cache)
        self.op = OPERATOR_REGISTRY.get("UserPlusOne")()

    def forward(self):
        self.op.run(self.storage.step(), input_key="a", output_key="b")


@pytest.fixture
def restore_registry():
    saved, loaded = dict(OPERATOR_REGISTRY._obj_map), set(OPERATOR_REGISTRY._loaded_paths)
    yield
    OPERATOR_REGISTRY._obj_map.clear()
    OPERATOR_REGISTRY._obj_map.update(saved)
    OPERATOR_REGISTRY._loaded_paths = loaded


def _load_user_op(folder: Path, increment: int) -> None:
    from dataflow.core.registry import _import_file

    path = folder / "user_plus_one.py"
    path.write_text(textwrap.dedent(USER_OP).replace("{increment}", str(increment)))
    OPERATOR_REGISTRY._obj_map.pop("UserPlusOne", None)
    _import_file(path)  # what the registry does for each file of ./operators


def test_editing_a_user_operators_run_reruns_its_step(tmp_path, restore_registry):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"a": i}) + "\n" for i in range(3)))
    (tmp_path / "operators").mkdir()
    _load_user_op(tmp_path / "operators", 1)
    first = UsesUserOp(src, tmp_path / "cache").compile()
    first.forward()
    assert first.resumable_steps() == 1
    assert FileStorage(src, cache_path=tmp_path / "cache").step().step().read()["b"].tolist() == [1, 2, 3]

    _load_user_op(tmp_path / "operators", 10)  # the user edits run()
    again = UsesUserOp(src, tmp_path / "cache").compile()
    assert again.resumable_steps() == 0, "an edited operator must not resume from its old cached step"
    again.forward()
    assert FileStorage(src, cache_path=tmp_path / "cache").step().step().read()["b"].tolist() == [10, 11, 12]


def test_user_operator_fixture_runs_on_the_bases(tmp_path, monkeypatch, restore_registry):
    (tmp_path / "operators").mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "user_operators.py", tmp_path / "operators" / "user_ops.py")
    (tmp_path / "example_data").symlink_to(REPO / "example_data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    OPERATOR_REGISTRY.load_user_operators()
    evaluator = OPERATOR_REGISTRY.get("UserRednessEvaluator")
    assert issubclass(evaluator, _Evaluator) and evaluator.execution == "rowwise"
    storage = FileStorage("example_data/images.jsonl", cache_path=tmp_path / "cache")
    evaluator().run(storage.step(), input_image_key="image")
    OPERATOR_REGISTRY.get("UserCaptionLengthFilter")(min_words=6).run(storage.step())
    OPERATOR_REGISTRY.get("UserCaptionDeduplicateFilter")().run(storage.step())
    metas = [storage.manifest(i) for i in (1, 2, 3)]
    for meta in metas:
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
    assert metas[0]["new_columns"] == ["redness", "image_error", "image_error_detail"]
    assert metas[1]["thresholds"] == [{"column": "caption_words", "param": "min_words", "side": "min", "value": 6.0}]
    assert set(metas[1]["rejected_reasons"]) == {"short_caption"}
    rejected = storage.read_rejected(3)
    assert set(rejected["reason"]) == {"same_caption"} and rejected["duplicate_of"].notna().all()
    from dataflow.report import build_report

    text = build_report(tmp_path / "cache", out=tmp_path / "report.html").read_text(encoding="utf-8")
    cards = dict(re.findall(r'<div class="card[^"]*" data-column="([^"]+)">(.*?)</svg>', text, re.S))
    assert "min_words 6" in cards["caption_words"] and 'class="thr"' in cards["caption_words"]
    assert "<rect" in cards["redness"]
    assert "UserCaptionDeduplicateFilter" in text and "same_caption" in text


def test_user_operators_are_listed_by_dataflow_ops(tmp_path, monkeypatch, capsys, restore_registry):
    from dataflow.cli import main

    (tmp_path / "operators").mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "user_operators.py", tmp_path / "operators" / "user_ops.py")
    monkeypatch.chdir(tmp_path)
    assert main(["ops", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["UserRednessEvaluator"]["category"] == "eval"
    assert listed["UserCaptionLengthFilter"]["category"] == "filter"
    assert listed["UserCaptionDeduplicateFilter"]["category"] == "filter"
    assert listed["UserCaptionDeduplicateFilter"]["description"].startswith("Drops rows with the same")
    assert main(["ops", "--lang", "zh", "--json"]) == 0
    zh = {row["name"]: row["description"] for row in json.loads(capsys.readouterr().out)}
    assert zh["UserRednessEvaluator"].startswith("每张图像")
    assert zh["UserCaptionLengthFilter"] == listed["UserCaptionLengthFilter"]["description"]  # no zh: falls back
