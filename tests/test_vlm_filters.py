"""VisionDependentFilter and FailRateFilter over real HTTP servings: a chat-completions server on 127.0.0.1
(tests/test_vlm_serving.py's ``Server``) plays both models from a script.

As the rollout model it answers each question with the next of that question's scripted answers; as the
verifier it reads DataFlow-MM's grading prompt back (question, reference answer, candidate's answer) and
grades A when the candidate equals the reference, B otherwise, or replies with whatever a candidate
``grade: ...`` dictates. A question's first word picks a failure the server's handler knows (``down``:
503 on every try); ``verifier-down`` questions fail only their grading request. So each test asserts
which rows are kept for given grades, the fail-rate arithmetic, the reason a failed request leaves on its
row, and what every case costs in requests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_inputs import EXPECTED_REASON, make_bad_inputs, make_jpeg
from test_vlm_serving import FAST, MODEL, Server, free_port

from dataflow.operators.core_vision._judgment import CV_PROMPT, judgment_letter, process_judgment
from dataflow.operators.core_vision.filter.failrate_filter import FailRateFilter
from dataflow.operators.core_vision.filter.vision_dependent_filter import VisionDependentFilter
from dataflow.pipeline import PipelineABC
from dataflow.serving import APIVLMServing_openai, ServingConnectionError
from dataflow.storage.manifest import check_accounting
from dataflow.utils.storage import FileStorage

SYSTEM = "You are a helpful assistant."  # both operators' default system prompt, as DataFlow-MM's
GRADING = re.compile(
    r"<Original Question Begin>:\n(?P<question>.*)\n<Original Question End>\n<Standard Answer Begin>:\n"
    r"(?P<gold>.*)\n<Standard Answer End>\n<Candidate's Answer Begin>: \n(?P<candidate>.*)\n"
    r"<Candidate's Answer End>",
    re.S,
)


class Exam:
    """The server's script: rollout answers per question, grades by comparison (see the module docstring)."""

    def __init__(self, answers: dict[str, str | list[str]]):
        self.answers = answers
        self.lock = threading.Lock()
        self.asked: Counter = Counter()
        self.graded: Counter = Counter()

    def __call__(self, prompt: str, sizes: list[str]) -> tuple[str, str]:
        grading = GRADING.search(prompt)
        if grading:
            question, gold, candidate = grading["question"], grading["gold"], grading["candidate"]
            with self.lock:
                self.graded[question] += 1
            if question.startswith("verifier-down"):
                return "down", ""
            if candidate.startswith("grade: "):
                return "ok", candidate.removeprefix("grade: ")
            return "ok", "A" if candidate.strip() == gold.strip() else "B"
        with self.lock:
            k = self.asked[prompt]
            self.asked[prompt] += 1
        script = self.answers.get(prompt, "no idea")
        answer = script if isinstance(script, str) else script[k % len(script)]
        if prompt.startswith("sometimes-down") and k > 0:  # the first answer comes, every later try fails
            return "down", ""
        return (prompt.split()[0] if prompt else "ok"), answer


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.stop()


def serving(srv: Server, **options) -> APIVLMServing_openai:
    return APIVLMServing_openai(api_url=srv.api_url, model_name=MODEL, **{"max_workers": 4, **FAST, **options})


def table(folder: Path, rows: list[dict]) -> Path:
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows)))
    return path


def step(src: Path, cache: Path, op, **keys) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Run ``op`` as step 1: the kept rows, the rejected rows (indexed by id) and the manifest."""
    storage = FileStorage(src, cache_path=cache, file_name_prefix="vlm")
    assert op.run(storage.step(), **keys) is None  # DataFlow-MM's run returns nothing
    meta = storage.manifest(1)
    check_accounting(type(op).__name__, meta["rows_in"], meta["rows_out"], meta["rows_rejected"])
    rejected = storage.read_rejected(1)
    return storage.step().read("dataframe"), rejected.set_index("id") if len(rejected) else rejected, meta


def user_turn(request: dict):
    return request["payload"]["messages"][-1]["content"]


# ------------------------------------------------------------------------------------------ grades
def test_the_grading_prompt_is_dataflow_mms_word_for_word():
    # sha256 of DataFlow-MM's dataflow/utils/opencompass_verifier.py CV_PROMPT (2709 characters)
    assert len(CV_PROMPT) == 2709
    assert hashlib.sha256(CV_PROMPT.encode()).hexdigest() == (
        "aee9c27520639ca543f0b5077164dc32c1976be0f16c87bee7055f3b7ba45e72"
    )
    filled = CV_PROMPT.format(question="Q?", gold_answer="42", llm_response="\\boxed{42}")
    assert "If the prediction is given with \\boxed{}, please ignore the \\boxed{}" in filled
    assert filled.endswith(
        "<Candidate's Answer Begin>: \n\\boxed{42}\n<Candidate's Answer End>\n"
        "Judging the correctness of the candidate's answer:\n"
    )


@pytest.mark.parametrize(
    ("reply", "peer", "ours"),
    [
        ("A", "A", "A"),
        ("B", "B", "B"),
        ("C", "C", "C"),
        ("Final Judgment: \\boxed{B} - INCORRECT", "B", "B"),
        ("\\boxed{A}", "A", "A"),
        ("analysis... Final Judgment: (A)", "A", "A"),
        ("The answer is A", "A", "A"),
        ("", "", ""),
        ("no grade here", "", ""),
        # DataFlow-MM takes the last capital A-C: the words the prompt asks for come out wrong
        ("CORRECT", "C", "A"),
        ("Correct.", "C", "A"),
        ("INCORRECT", "C", "B"),
        ("INVALID", "A", "C"),
        ("A: CORRECT", "C", "A"),
        ("B: INCORRECT", "C", "B"),
        ("(B) incorrect", "B", "B"),
        ("C - the answer is cut off. CORRECT would need A", "A", "C"),
    ],
)
def test_grades_are_read_as_dataflow_mm_reads_them_but_words_and_leading_letters_as_they_say(reply, peer, ours):
    assert process_judgment(reply) == peer
    assert judgment_letter(reply) == ours


# ------------------------------------------------------------------------------------------ VisionDependentFilter
def test_vision_dependent_filter_drops_questions_answered_correctly_without_the_image(server, tmp_path):
    exam = Exam(
        {
            "What colour is the car?": "red",  # graded A: answerable without the image -> rejected
            "How many dogs are there?": "2",  # graded B: kept
            "What animal is shown?": "grade: C",  # invalid: kept
            "What is written on the sign?": "grade: \\boxed{A}",  # boxed A: rejected
            "Which season is it?": "grade: CORRECT",  # the word: rejected (DataFlow-MM would read C and keep it)
            "Is it day or night?": "grade: no idea what to say",  # no grade in the reply: kept, as DataFlow-MM
        }
    )
    server.site.script = exam
    rows = [
        {"question": "What colour is the car?", "answer": "red"},
        {"question": "How many dogs are there?", "answer": "3"},
        {"question": "What animal is shown?", "answer": "cat"},
        {"question": "What is written on the sign?", "answer": "STOP"},
        {"question": "Which season is it?", "answer": "winter"},
        {"question": "Is it day or night?", "answer": "night"},
        {"question": None, "answer": "x"},  # nothing to ask
        {"question": "  ", "answer": "x"},
        {"question": "Where is the cat?", "answer": None},  # nothing to grade against
        {"question": "down what is the time?", "answer": "noon"},  # the rollout request keeps failing
        {"question": "verifier-down: what breed?", "answer": "collie"},  # the grading request keeps failing
    ]
    src = table(tmp_path, rows)  # no image column at all: the questions go without images
    op = VisionDependentFilter(rollout=serving(server, max_retries=1), verifier=serving(server, max_retries=1))
    kept, rejected, meta = step(src, tmp_path / "cache", op)

    assert meta["rows_in"] == 11 and meta["rows_out"] == 3 and meta["rows_rejected"] == 8
    assert kept["id"].tolist() == [1, 2, 5]
    assert kept["vision_independent_answer"].tolist() == ["2", "grade: C", "grade: no idea what to say"]
    assert meta["rejected_reasons"] == {
        "vision_independent": 3,
        "missing_question": 2,
        "missing_answer": 1,
        "http_5xx": 2,
    }
    assert rejected.loc[[0, 3, 4], "reason"].eq("vision_independent").all()
    assert rejected.loc[0, "vision_independent_answer"] == "red"  # rejected rows keep the answer too
    assert rejected.loc[[6, 7], "reason"].eq("missing_question").all()
    assert rejected.loc[8, "reason"] == "missing_answer"
    assert rejected.loc[9, "detail"] == "rollout: HTTP 503: server overloaded (2 requests)"
    assert rejected.loc[10, "detail"] == "verifier: HTTP 503: server overloaded (2 requests)"
    assert rejected.loc[10, "vision_independent_answer"] == "no idea"  # answered, but never graded
    assert pd.isna(rejected.loc[9, "vision_independent_answer"])

    # Costs: one rollout per askable row (two tries for the failing one), one grading per answered row.
    asked = [q for q in (r["question"] for r in rows[:6] + rows[9:]) if q]
    assert exam.asked == Counter({q: 2 if q.startswith("down") else 1 for q in asked})
    assert exam.graded == Counter({q: 2 if q.startswith("verifier-down") else 1 for q in asked if q[:4] != "down"})
    for request in server.site.requests:  # text only, with the default system prompt
        assert request["payload"]["messages"][0] == {"role": "system", "content": SYSTEM}
        assert isinstance(user_turn(request), str) and request["sizes"] == []
    graded = next(r for r in server.site.requests if "How many dogs" in user_turn(r) and "Standard" in user_turn(r))
    assert user_turn(graded) == CV_PROMPT.format(question="How many dogs are there?", gold_answer="3", llm_response="2")


def test_vision_dependent_filter_takes_servings_from_config_mappings_and_reads_no_image(server, tmp_path):
    server.site.script = Exam({"Q1": "a", "Q2": "wrong"})
    spec = {"serving": "APIVLMServing_openai", "api_url": server.api_url, "model_name": MODEL, **FAST}
    op = VisionDependentFilter(rollout=spec, verifier=dict(spec), system_prompt="")
    assert isinstance(op.rollout, APIVLMServing_openai) and op.rollout is not op.verifier
    src = table(tmp_path, [{"image": "gone.jpg", "q": "Q1", "a": "a"}, {"image": "gone.jpg", "q": "Q2", "a": "b"}])
    kept, rejected, _ = step(
        src, tmp_path / "cache", op, input_question_key="q", input_answer_key="a", output_answer_key="text_only"
    )
    assert kept["id"].tolist() == [1] and kept["text_only"].tolist() == ["wrong"]  # the missing image is never read
    assert rejected.loc[0, "reason"] == "vision_independent"
    assert all(r["payload"]["messages"][0]["role"] == "user" for r in server.site.requests)  # no system prompt
    assert op.required_columns({"input_image_key": "image", "input_question_key": "q", "input_answer_key": "a"}) == {
        "input_question_key": "q",
        "input_answer_key": "a",
    }


# ------------------------------------------------------------------------------------------ FailRateFilter
@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    make_jpeg(folder / "a.jpg", (80, 40))
    make_jpeg(folder / "b.jpg", (30, 60))
    good = (folder / "a.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 2])
    return folder


def test_failrate_filter_keeps_the_rows_answered_wrongly_with_their_image_sent(server, photos):
    exam = Exam({"What is red?": "the car", "What is blue?": "the sea", "How many?": "grade: INCORRECT"})
    server.site.script = exam
    rows = [
        {"image": "a.jpg", "question": "What is red?", "answer": "the car"},  # correct: dropped
        {"image": "b.jpg", "question": "What is blue?", "answer": "the sky"},  # wrong: kept
        {"image": ["a.jpg", "b.jpg"], "question": "How many?", "answer": "two"},  # two images, graded B: kept
        {"image": "cut.jpg", "question": "What is red?", "answer": "x"},  # unreadable: never sent
        {"image": "gone.jpg", "question": "What is red?", "answer": "x"},
        {"image": None, "question": "What is red?", "answer": "x"},
    ]
    op = FailRateFilter(rollout=serving(server, max_side=64), verifier=serving(server))
    kept, rejected, meta = step(table(photos, rows), photos / "cache", op)

    assert kept["id"].tolist() == [1, 2]
    assert kept["failrate_answer"].tolist() == ["the sea", "grade: INCORRECT"]
    assert meta["rejected_reasons"] == {"low_fail_rate": 1, "truncated": 1, "missing": 2}
    assert rejected.loc[0, "detail"] == "fail rate 0 < min_fail_rate 1 (0 of 1 answers wrong)"
    assert rejected.loc[0, "failrate_answer"] == "the car"
    assert rejected.loc[3, "reason"] == "truncated" and rejected.loc[4, "reason"] == "missing"
    # The rollouts carry the images (relative paths read against the input's folder, shrunk to max_side);
    # the gradings carry none; unreadable images cost no request.
    rollouts = [r for r in server.site.requests if "Standard Answer" not in json.dumps(r["payload"])]
    assert sum(bool(r["sizes"]) for r in server.site.requests) == 3
    assert sorted(tuple(r["sizes"]) for r in rollouts) == [("30x60",), ("64x32",), ("64x32", "30x60")]
    assert exam.asked == Counter({"What is red?": 1, "What is blue?": 1, "How many?": 1})
    assert sum(exam.graded.values()) == 3


def test_fail_rate_arithmetic_over_several_rollouts(server, photos):
    exam = Exam(
        {
            "always right": ["yes"] * 4,  # 0 of 4 wrong: rate 0 -> low_fail_rate
            "once right": ["yes", "no", "no", "no"],  # 3 of 4 wrong: 0.75 -> kept
            "never right": ["no"],  # 4 of 4: 1.0 -> high_fail_rate
            "half right": ["yes", "no", "yes", "grade: C"],  # an invalid answer is a failure: 0.5 -> kept
            "sometimes-down": ["yes"],  # the 2nd to 4th answers never come: undecided, not graded
        }
    )
    server.site.script = exam
    rows = [{"image": "a.jpg", "question": q, "answer": "yes"} for q in exam.answers]
    op = FailRateFilter(
        rollout=serving(server, max_retries=1),
        verifier=serving(server),
        n_rollouts=4,
        min_fail_rate=0.25,
        max_fail_rate=0.75,
    )
    kept, rejected, meta = step(table(photos, rows), photos / "cache", op, output_fail_rate_key="fail_rate")

    assert kept["question"].tolist() == ["once right", "half right"]
    assert kept["fail_rate"].tolist() == [0.75, 0.5]
    assert sorted(kept["failrate_answer"].iloc[0]) == ["no", "no", "no", "yes"]  # all four answers
    assert rejected.loc[0, "reason"] == "low_fail_rate" and rejected.loc[0, "fail_rate"] == 0.0
    assert rejected.loc[0, "detail"] == "fail rate 0 < min_fail_rate 0.25 (0 of 4 answers wrong)"
    assert rejected.loc[2, "reason"] == "high_fail_rate"
    assert rejected.loc[2, "detail"] == "fail rate 1 > max_fail_rate 0.75 (4 of 4 answers wrong)"
    assert rejected.loc[4, "reason"] == "http_5xx" and np.isnan(rejected.loc[4, "fail_rate"])
    detail = "rollout: HTTP 503: server overloaded (2 requests); 3 of 4 rollout requests failed"
    assert rejected.loc[4, "detail"] == detail
    assert meta["rows_in"] == 5 and meta["rows_out"] == 2 and meta["rows_rejected"] == 3
    # Four rollouts per question (the failing ones tried twice), four gradings per decided question.
    assert exam.asked == Counter(dict.fromkeys(exam.answers, 4) | {"sometimes-down": 7})
    assert exam.graded == Counter({q: 4 for q in exam.answers if q != "sometimes-down"})


def test_failrate_defaults_and_bad_configuration(server):
    srv = serving(server)
    op = FailRateFilter(srv, srv)
    assert (op.n_rollouts, op.min_fail_rate, op.max_fail_rate, op.system_prompt) == (1, 1.0, 1.0, SYSTEM)
    assert op.output_columns({"output_answer_key": "failrate_answer", "output_fail_rate_key": None}) == [
        "failrate_answer"
    ]
    for bad, message in (
        ({"n_rollouts": 0}, "n_rollouts"),
        ({"min_fail_rate": 1.5}, "min_fail_rate"),
        ({"min_fail_rate": 0.8, "max_fail_rate": 0.5}, "above max_fail_rate"),
    ):
        with pytest.raises(ValueError, match=message):
            FailRateFilter(srv, srv, **bad)
    with pytest.raises(ValueError, match="verifier is required"):
        VisionDependentFilter(srv, None)
    with pytest.raises(ValueError, match="rollout: a serving is an object"):
        FailRateFilter("http://127.0.0.1:8000/v1", srv)

    class ActorHandle:  # what a Ray actor handle looks like to us
        pass

    with pytest.raises(TypeError, match="Ray actor handle"):
        VisionDependentFilter(ActorHandle(), srv)


def test_a_missing_column_and_an_unreachable_server_are_one_clear_error(server, photos):
    src = table(photos, [{"image": "a.jpg", "question": "q", "answer": "a"}])
    op = FailRateFilter(serving(server), serving(server))
    with pytest.raises(KeyError, match=r"FailRateFilter: 'prompt' is not a column \(columns: id, image"):
        op.run(FileStorage(src, cache_path=photos / "c1").step(), input_question_key="prompt")
    url = f"http://127.0.0.1:{free_port()}/v1"
    down = APIVLMServing_openai(api_url=url, model_name=MODEL, max_retries=0, **FAST)
    with pytest.raises(ServingConnectionError, match="cannot connect to the VLM server"):
        VisionDependentFilter(down, down).run(FileStorage(src, cache_path=photos / "c2").step())


class OneStep(PipelineABC):
    def __init__(self, src, cache, op, cache_type):
        self.storage = FileStorage(src, cache_path=cache, file_name_prefix="r", cache_type=cache_type)
        self.op = op

    def forward(self):
        self.op.run(self.storage.step(), input_image_key="image", input_question_key="q", input_answer_key="a")


def test_failrate_filter_survives_the_bad_input_suite(server, tmp_path):
    server.site.script = Exam({})  # every answer is "no idea", graded B: every readable row is kept
    sources = make_bad_inputs(tmp_path)
    in_memory = {"raw_bytes", "bytes_path_dict"}
    rows = [{"name": n, "image": s, "q": f"what is {n}?", "a": "x"} for n, s in sources.items() if n not in in_memory]
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    blob = pd.DataFrame(
        {
            "name": ["raw_bytes", "bytes_path_dict"],
            "image": [{"bytes": sources["raw_bytes"], "path": None}, sources["bytes_path_dict"]],
            "q": ["what?", "what?"],
            "a": ["x", "x"],
        }
    )
    from dataflow.storage.formats import write_table

    write_table(blob, tmp_path / "bytes.parquet", "parquet")
    op = FailRateFilter(serving(server, max_side=256), serving(server))
    seen = {}
    for k, (path, cache_type) in enumerate([(src, "jsonl"), (tmp_path / "bytes.parquet", "parquet")]):
        pipeline = OneStep(path, tmp_path / f"cache{k}", op, cache_type)
        pipeline.compile()
        pipeline.forward()
        meta = pipeline.storage.manifest(1)
        assert meta["rows_in"] == meta["rows_out"] + meta["rows_rejected"]
        seen.update(dict.fromkeys(pipeline.storage.step().read()["name"]))
        rejected = pipeline.storage.read_rejected(1)
        if len(rejected):
            seen.update(zip(rejected["name"], rejected["reason"]))
    assert seen == EXPECTED_REASON  # every row accounted for: kept (None) or rejected with the loader's reason
    assert len(server.site.requests) == 2 * sum(reason is None for reason in EXPECTED_REASON.values())
