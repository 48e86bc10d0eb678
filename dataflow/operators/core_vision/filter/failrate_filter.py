"""FailRateFilter: keep the questions a model fails on, graded by a verifier model (DataFlow-MM's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.operator import Threshold
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.operators.core_vision._judgment import CORRECT, drop_failed, question_rows, roll_out_and_verify, servings
from dataflow.serving.base import VLMServingABC


def _rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a share of the rollouts, from 0 to 1; got {value!r}")
    return float(value)


def row_images(value) -> list:
    """A row's image cell as the images of its request; a null or empty cell is one missing image (the
    request fails as ``missing`` instead of being sent without it)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value) or [None]
    return [value]


@OPERATOR_REGISTRY.register()
class FailRateFilter(RowFilter):
    """Keeps the questions a vision-language model gets wrong: a rollout model answers each row's
    question with its image, a verifier model grades the answer against the row's reference answer, and
    the rows answered correctly are dropped (DataFlow-MM's filter, which keeps only failed cases).

    The verifier is asked with DataFlow-MM's OpenCompass grading prompt (CompassVerifier's), word for
    word, and replies A (correct), B (incorrect) or C (invalid); every grade but A is a failure. With
    ``n_rollouts`` answers per question the fail rate is failures / ``n_rollouts``, and a row is kept when
    ``min_fail_rate <= fail rate <= max_fail_rate``; the defaults (one rollout, both bounds 1) keep the
    rows whose one answer failed, as DataFlow-MM does. Several rollouts need a sampling serving
    (``temperature`` above 0), or every answer is the same. Dropped rows are rejected with reason
    ``low_fail_rate`` (answered correctly too often) or ``high_fail_rate``, the detail giving the count.

    The answers are written to ``output_answer_key`` on every row, kept or rejected: the answer's text
    with one rollout, a list of ``n_rollouts`` texts with more. Rows that cannot be decided are rejected
    with why: the image loader's reason for an unreadable or missing image (``missing``, ``truncated``...;
    nothing is sent), ``missing_question`` / ``missing_answer`` for a null or blank cell, or the serving's
    reason when a request still fails after its retries (``timeout``, ``connection``, ``http_5xx``,
    ``http_429``, ``http_4xx``, ``bad_response``, ``empty_response``, ``generation_failed``), the detail
    saying whether the rollout or the verifier failed. A row is decided only when all its rollouts were
    answered and graded. Both servings run their requests at their own concurrency (an API serving's
    ``max_workers``, a local model's ``batch_size``); the system prompt goes with both.

    Differences from DataFlow-MM:

    - requests go through the servings' ``generate_results``: a failed request rejects its row with the
      reason; DataFlow-MM calls ``generate_from_input_with_message``, which none of its servings has
      (it is commented out), and would grade an ``"Error: ..."`` text as an answer;
    - no Ray: a Ray actor handle is refused with a message; the servings' own concurrency replaces it;
      ``rollout`` and ``verifier`` may also be config mappings (``{serving: APIVLMServing_openai, ...}``);
    - the grade is read by DataFlow-MM's ``process_judgment``, except that a reply starting with a grade
      (``A``, ``(B)``, ``C: INVALID``) or with the word the prompt asks for (``CORRECT``, ``Incorrect``,
      ``INVALID``) is that grade: DataFlow-MM reads ``CORRECT`` as C (a failure) and ``INVALID`` as A;
    - images are read by ``dataflow.media`` (upright; relative paths against the input file's folder) and
      an unreadable one rejects its row without a request;
    - options: ``n_rollouts``, ``min_fail_rate`` / ``max_fail_rate`` (keep questions a model solves
      sometimes, drop those it never solves) and ``output_fail_rate_key`` (the rate on every row);
      ``run`` returns None, as DataFlow-MM.

    Parameters:
        rollout: the serving that answers the questions with their images (a ``VLMServingABC`` from
            ``dataflow.serving``, or a mapping naming one and its parameters)
        verifier: the serving that grades the answers (CompassVerifier in DataFlow-MM's pipelines; any model
            that follows the grading prompt); asked with text only
        system_prompt: the system message of every request, rollout and verifier alike (empty: none)
        n_rollouts: answers asked per question (each graded); the fail rate is failures / n_rollouts
        min_fail_rate: rows whose fail rate is below this are dropped (``low_fail_rate``)
        max_fail_rate: rows whose fail rate is above this are dropped (``high_fail_rate``)
        input_image_key: column holding the image (a path, bytes, a ``{bytes, path}`` dict) or a list of
            images per row
        input_question_key: column holding the question
        input_answer_key: column holding the reference answer
        output_answer_key: column the rollout answer is written to (a list of answers when
            ``n_rollouts`` > 1)
        output_fail_rate_key: when set, every row gets its fail rate in this column (null where it could
            not be decided); None (the default) writes no column, as DataFlow-MM
    """

    description = "Keeps questions a vision-language model answers wrongly (a verifier model grades each answer)."
    description_zh = (
        "保留视觉语言模型答错的问题：模型看图作答，校验模型评判，答对的样本被剔除（可按多次作答的失败率筛选）。"
    )
    loads_model = True  # a local serving holds its model: engines keep one operator per worker
    thresholds = (
        Threshold("min_fail_rate", "output_fail_rate_key", "min"),
        Threshold("max_fail_rate", "output_fail_rate_key", "max"),
    )
    example = Example(
        """
        from dataflow.operators.core_vision import FailRateFilter
        from dataflow.serving import APIVLMServing_openai
        from dataflow.utils.storage import FileStorage

        # two local servers: vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000,
        #                    vllm serve opencompass/CompassVerifier-3B --port 8001
        rollout = APIVLMServing_openai(api_url="http://127.0.0.1:8000/v1", model_name="Qwen/Qwen2.5-VL-7B-Instruct",
                                       temperature=0.7, max_side=1024)
        verifier = APIVLMServing_openai(api_url="http://127.0.0.1:8001/v1", model_name="opencompass/CompassVerifier-3B",
                                        temperature=0.0, max_tokens=8)
        storage = FileStorage("vqa.jsonl", cache_path="./cache", file_name_prefix="vqa", cache_type="jsonl")
        # keep the questions the model gets wrong in 2 to 7 of 8 tries
        op = FailRateFilter(rollout=rollout, verifier=verifier, n_rollouts=8, min_fail_rate=0.25, max_fail_rate=0.875)
        op.run(storage.step(), input_image_key="image", output_fail_rate_key="fail_rate")
        """,
        not_run="it needs two running model servers (a rollout model and a verifier), which the docs build lacks",
    )

    def __init__(
        self,
        rollout: VLMServingABC | dict,
        verifier: VLMServingABC | dict,
        system_prompt: str = "You are a helpful assistant.",
        n_rollouts: int = 1,
        min_fail_rate: float = 1.0,
        max_fail_rate: float = 1.0,
    ):
        if isinstance(n_rollouts, bool) or not isinstance(n_rollouts, int) or n_rollouts < 1:
            raise ValueError(f"n_rollouts must be an integer >= 1, got {n_rollouts!r}")
        low, high = _rate("min_fail_rate", min_fail_rate), _rate("max_fail_rate", max_fail_rate)
        if low > high:
            raise ValueError(f"min_fail_rate ({low}) is above max_fail_rate ({high}): no row could be kept")
        self.rollout, self.verifier = servings(rollout, verifier)
        self.system_prompt = system_prompt
        self.n_rollouts = n_rollouts
        self.min_fail_rate = low
        self.max_fail_rate = high

    def output_columns(self, keys: dict) -> list[str]:
        out = [keys.get("output_answer_key") or "failrate_answer"]
        return out + ([keys["output_fail_rate_key"]] if keys.get("output_fail_rate_key") else [])

    def missing_models(self, keys: dict | None = None) -> list[str]:
        return [*self.rollout.missing_models(), *self.verifier.missing_models()]

    def judge(
        self,
        df: pd.DataFrame,
        base_dir: str,
        input_image_key: str,
        input_question_key: str,
        input_answer_key: str,
        output_answer_key: str,
        output_fail_rate_key: str | None,
    ) -> Verdict:
        name = type(self).__name__
        sources = image_column(df, input_image_key, name)
        questions, gold, verdict = question_rows(df, input_question_key, input_answer_key, name)
        at = np.flatnonzero(verdict.kept).tolist()
        n = self.n_rollouts
        rolled = roll_out_and_verify(
            self.rollout,
            self.verifier,
            questions=[questions[i] for i in at],
            gold=[gold[i] for i in at],
            images=[row_images(sources[i]) for i in at],
            n=n,
            system_prompt=self.system_prompt or None,
            base_dir=base_dir,
            name=name,
        )
        answers: list = [None] * len(df)
        failures = np.zeros(len(df), dtype=int)
        rates = np.full(len(df), np.nan)
        for pos, texts, letters, failed in zip(at, rolled.answers, rolled.letters, rolled.failed):
            answers[pos] = texts[0] if n == 1 else texts
            if failed is None:
                failures[pos] = sum(letter != CORRECT for letter in letters)
                rates[pos] = failures[pos] / n
        df[output_answer_key] = pd.Series(answers, index=df.index, dtype=object)
        if output_fail_rate_key:
            df[output_fail_rate_key] = rates
        drop_failed(verdict, at, rolled.failed)

        def detail(sign: str, bound: str, value: float):
            return lambda hit: [
                f"fail rate {rates[i]:.4g} {sign} {bound} {value:g} ({failures[i]} of {n} answers wrong)" for i in hit
            ]

        decided = ~np.isnan(rates)
        with np.errstate(invalid="ignore"):
            low, high = self.min_fail_rate, self.max_fail_rate
            verdict.drop(decided & (rates < low), "low_fail_rate", detail("<", "min_fail_rate", low))
            verdict.drop(decided & (rates > high), "high_fail_rate", detail(">", "max_fail_rate", high))
        return verdict

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_question_key: str = "question",
        input_answer_key: str = "answer",
        output_answer_key: str = "failrate_answer",
        output_fail_rate_key: str | None = None,
    ) -> None:
        self.filter(
            storage,
            input_image_key=input_image_key,
            input_question_key=input_question_key,
            input_answer_key=input_answer_key,
            output_answer_key=output_answer_key,
            output_fail_rate_key=output_fail_rate_key,
        )
