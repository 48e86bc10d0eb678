"""PipelineABC: compile-time key checks, resume_step, and fingerprint-based auto-resume."""

import json

import pandas as pd
import pytest

from dataflow.core import OperatorABC
from dataflow.pipeline import PipelineABC, PipelineCompileError
from dataflow.utils.storage import FileStorage

CALLS = []


class AddColumn(OperatorABC):
    """Test operator: output = input * factor."""

    def __init__(self, factor: int = 2):
        self.factor = factor

    def run(self, storage, input_key: str = "a", output_key: str = "b"):
        CALLS.append((type(self).__name__, self.factor, output_key))
        df = storage.read()
        df[output_key] = df[input_key] * self.factor
        storage.write(df)
        return [output_key]


class DropOdd(OperatorABC):
    """Test operator: drops odd values of a column."""

    def run(self, storage, input_key: str = "a"):
        CALLS.append(("DropOdd",))
        df = storage.read()
        odd = df[input_key] % 2 == 1
        rejected = df[odd].assign(reason="odd")
        storage.write(df[~odd], rejected=rejected)
        return []


class ThreeSteps(PipelineABC):
    def __init__(self, src, cache, factor=2, second_input="b"):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="p")
        self.double = AddColumn(factor)
        self.triple = AddColumn(3)
        self.drop = DropOdd()
        self.second_input = second_input

    def forward(self):
        self.double.run(self.storage.step(), input_key="a", output_key="b")
        self.triple.run(self.storage.step(), input_key=self.second_input, output_key="c")
        self.drop.run(self.storage.step(), input_key="c")


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"a": i}) + "\n" for i in range(6)))
    CALLS.clear()
    return path


def test_runs_and_writes_every_step(src, tmp_path):
    p = ThreeSteps(src, tmp_path / "c")
    p.compile()
    assert CALLS == []  # compile records, it does not run
    p.forward()
    final = pd.read_json(tmp_path / "c" / "p_step3.jsonl", lines=True)
    assert final["c"].tolist() == [0, 6, 12, 18, 24, 30]
    assert len(CALLS) == 3


def test_compile_lists_every_mismatch_at_once(src, tmp_path):
    class Broken(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(src, cache_path=tmp_path / "c")
            self.op = AddColumn()
            self.drop = DropOdd()

        def forward(self):
            self.op.run(self.storage.step(), input_key="nope", output_key="b")
            self.drop.run(self.storage.step(), input_key="zzz")
            self.drop.run(self.storage.step(), input_key="b")

    with pytest.raises(PipelineCompileError) as err:
        Broken().compile()
    problems = err.value.problems
    assert len(problems) == 2
    assert "step 1 AddColumn: input_key='nope'" in problems[0]
    assert "step 2 DropOdd: input_key='zzz'" in problems[1]
    assert not (tmp_path / "c").exists()  # nothing ran


def test_compile_reads_only_the_header(src, tmp_path):
    # A broken line after the first rows must not matter to compile(): it reads the header only.
    with open(src, "a") as fh:
        fh.write("{not json\n" * 3)
    ThreeSteps(src, tmp_path / "c").compile()


def test_auto_resume_skips_unchanged_and_reruns_from_change(src, tmp_path, caplog):
    ThreeSteps(src, tmp_path / "c").compile().forward()
    CALLS.clear()
    p = ThreeSteps(src, tmp_path / "c")
    p.compile()
    assert p.resumable_steps() == 3
    p.forward()
    assert CALLS == []

    changed = ThreeSteps(src, tmp_path / "c", factor=5)  # step 1 changes: all three rerun
    changed.compile().forward()
    assert [c[0] for c in CALLS] == ["AddColumn", "AddColumn", "DropOdd"]
    final = pd.read_json(tmp_path / "c" / "p_step3.jsonl", lines=True)
    assert final["b"].tolist() == [0, 10, 20]  # a = 0, 2, 4 survive: c = 15a is odd for odd a


def test_changed_later_step_reruns_only_from_there(src, tmp_path):
    ThreeSteps(src, tmp_path / "c").compile().forward()
    CALLS.clear()
    ThreeSteps(src, tmp_path / "c", second_input="a").compile().forward()
    assert [c[0] for c in CALLS] == ["AddColumn", "DropOdd"]
    assert CALLS[0][1] == 3


def test_changed_input_reruns_everything(src, tmp_path):
    ThreeSteps(src, tmp_path / "c").compile().forward()
    CALLS.clear()
    src.write_text("".join(json.dumps({"a": i}) + "\n" for i in range(10)))
    ThreeSteps(src, tmp_path / "c").compile().forward()
    assert len(CALLS) == 3
    assert len(pd.read_json(tmp_path / "c" / "p_step1.jsonl", lines=True)) == 10


def test_missing_step_file_is_rerun(src, tmp_path):
    ThreeSteps(src, tmp_path / "c").compile().forward()
    (tmp_path / "c" / "p_step2.jsonl").unlink()
    CALLS.clear()
    ThreeSteps(src, tmp_path / "c").compile().forward()
    assert [c[0] for c in CALLS] == ["AddColumn", "DropOdd"]


def test_resume_step_skips_first_n(src, tmp_path):
    ThreeSteps(src, tmp_path / "c").forward()
    CALLS.clear()
    ThreeSteps(src, tmp_path / "c").forward(resume_step=2)
    assert CALLS == [("DropOdd",)]


def test_forward_twice_starts_from_the_input(src, tmp_path):
    p = ThreeSteps(src, tmp_path / "c")
    p.forward()
    p.forward()
    assert len(CALLS) == 6
    assert not (tmp_path / "c" / "p_step4.jsonl").exists()
    meta = json.loads((tmp_path / "c" / "p_step3.meta.json").read_text())
    assert (meta["rows_in"], meta["rows_out"], meta["rows_rejected"]) == (6, 6, 0)  # c = 6a is even


def test_manifest_names_operator_params_and_keys(src, tmp_path):
    ThreeSteps(src, tmp_path / "c", factor=7).compile().forward()
    meta = json.loads((tmp_path / "c" / "p_step1.meta.json").read_text())
    assert meta["operator"] == "AddColumn" and meta["params"] == {"factor": 7}
    assert meta["input_keys"] == {"input_key": "a"} and meta["output_keys"] == {"output_key": "b"}
    assert meta["new_columns"] == ["b"]


def test_resume_step_beyond_the_written_steps_is_a_clear_error(src, tmp_path):
    from dataflow.core.pipeline import PipelineResumeError

    p = ThreeSteps(src, tmp_path / "c")
    with pytest.raises(PipelineResumeError, match=r"step 2 was never written .*written: none"):
        p.forward(resume_step=2)
    p.compile().forward()
    with pytest.raises(PipelineResumeError, match="the pipeline has 3 steps"):
        p.forward(resume_step=5)
    CALLS.clear()
    p.forward(resume_step=2)
    assert CALLS == [("DropOdd",)]


class WeightsOp(OperatorABC):
    """Test operator naming a weights file, declared so that compile() looks for it."""

    model_params = {"weights": "weights"}

    def __init__(self, weights: str):
        self.weights = weights

    def run(self, storage):
        storage.write(storage.read())


class UsesWeights(PipelineABC):
    def __init__(self, src, cache, weights):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="w")
        self.op = WeightsOp(weights)

    def forward(self):
        self.op.run(self.storage.step())


def test_compile_finds_a_missing_model_file_and_runs_nothing(src, tmp_path):
    with pytest.raises(PipelineCompileError, match=r"step 1 WeightsOp: weights='nowhere.pth': weights file not found"):
        UsesWeights(src, tmp_path / "c", "nowhere.pth").compile()
    assert not (tmp_path / "c").exists()
    (tmp_path / "w.pth").write_bytes(b"x")
    UsesWeights(src, tmp_path / "c", str(tmp_path / "w.pth")).compile()


def test_compile_refuses_an_image_only_model_where_text_is_scored(src, tmp_path):
    from dataflow.operators.core_vision import ImageTextSimilarityFilter

    class Align(PipelineABC):
        def __init__(self):
            self.storage = FileStorage(src, cache_path=tmp_path / "c", file_name_prefix="a")
            self.op = ImageTextSimilarityFilter(model_name="efficientnet-lite0")

        def forward(self):
            self.op.run(self.storage.step(), input_image_key="a", input_text_key="a")

    with pytest.raises(PipelineCompileError, match="efficientnet-lite0 embeds images only"):
        Align().compile()


def test_a_call_that_reuses_vectors_needs_no_model_on_disk(tmp_path):
    from dataflow.operators.core_vision import ImageDeduplicateFilter

    src = tmp_path / "v.jsonl"
    src.write_text('{"image": "a.jpg", "emb": [1.0, 0.0]}\n{"image": "b.jpg", "emb": [0.0, 1.0]}\n')

    class Dedup(PipelineABC):
        def __init__(self, keys):
            self.storage = FileStorage(src, cache_path=tmp_path / "c", file_name_prefix="d")
            self.op, self.keys = ImageDeduplicateFilter(model_name=str(tmp_path / "no_model")), keys

        def forward(self):
            self.op.run(self.storage.step(), **self.keys)

    Dedup({"input_embedding_key": "emb"}).compile()  # the vectors are there: no model will load
    with pytest.raises(PipelineCompileError, match="no_model"):
        Dedup({}).compile()
