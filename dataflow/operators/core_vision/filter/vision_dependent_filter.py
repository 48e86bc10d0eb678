"""VisionDependentFilter: keep the questions a model cannot answer without their image (DataFlow-MM's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import RowFilter, Verdict
from dataflow.operators.core_vision._judgment import CORRECT, drop_failed, question_rows, roll_out_and_verify, servings
from dataflow.serving.base import VLMServingABC


@OPERATOR_REGISTRY.register()
class VisionDependentFilter(RowFilter):
    """Keeps the questions that need their image: a rollout model answers each question from its text
    alone (no image is sent), a verifier model grades that answer against the row's reference answer, and
    the rows answered correctly without the image are dropped (DataFlow-MM's filter).

    The verifier is asked with DataFlow-MM's OpenCompass grading prompt (CompassVerifier's), word for
    word, and replies A (correct), B (incorrect) or C (invalid). A row graded A is rejected with reason
    ``vision_independent``; B, C and a reply with no grade in it keep the row, as in DataFlow-MM. The
    text-only answer is written to ``output_answer_key`` on every row, kept or rejected. Both servings
    run their requests at their own concurrency (an API serving's ``max_workers``, a local model's
    ``batch_size``); the system prompt goes with both.

    Rows that cannot be decided are rejected with why: ``missing_question`` / ``missing_answer`` (a null
    or blank cell; nothing is sent), or the serving's reason when a request still fails after its retries
    (``timeout``, ``connection``, ``http_5xx``, ``http_429``, ``http_4xx``, ``bad_response``,
    ``empty_response``, ``generation_failed``), the detail saying whether the rollout or the verifier
    failed. A server that cannot be reached, a refused key or a model not on disk stops the step with
    one message.

    Differences from DataFlow-MM:

    - requests go through the servings' ``generate_results``: a failed request rejects its row with the
      reason; DataFlow-MM calls ``generate_from_input_with_message``, which none of its servings has
      (it is commented out), and would grade an ``"Error: ..."`` text as an answer;
    - no Ray: a Ray actor handle is refused with a message; the servings' own concurrency replaces it;
      ``rollout`` and ``verifier`` may also be config mappings (``{serving: APIVLMServing_openai, ...}``);
    - the grade is read by DataFlow-MM's ``process_judgment``, except that a reply starting with a grade
      (``A``, ``(B)``, ``C: INVALID``) or with the word the prompt asks for (``CORRECT``, ``Incorrect``,
      ``INVALID``) is that grade: DataFlow-MM reads ``CORRECT`` as C (kept) and ``INVALID`` as A;
    - a missing question or answer column is a clear error (DataFlow-MM's zip of an empty column fails
      later); the image column is not read, so it need not exist;
    - dropped rows are in the rejected file with the reason; ``run`` returns None, as DataFlow-MM.

    Parameters:
        rollout: the serving that answers the questions (a ``VLMServingABC`` from ``dataflow.serving``, or a
            mapping naming one and its parameters); asked with text only
        verifier: the serving that grades the answers (CompassVerifier in DataFlow-MM's pipelines; any model
            that follows the grading prompt); asked with text only
        system_prompt: the system message of every request, rollout and verifier alike (empty: none)
        input_image_key: DataFlow-MM's image column; not read (the questions are asked without images)
        input_question_key: column holding the question
        input_answer_key: column holding the reference answer
        output_answer_key: column the text-only answer is written to
    """

    description = "Keeps questions a model cannot answer correctly without their image (a verifier model grades)."
    description_zh = "保留不看图像就无法答对的问题：模型仅凭文本作答，校验模型判定答对的样本被剔除。"
    loads_model = True  # a local serving holds its model: engines keep one operator per worker
    example = Example(
        """
        from dataflow.operators.core_vision import VisionDependentFilter
        from dataflow.serving import APIVLMServing_openai
        from dataflow.utils.storage import FileStorage

        # two local servers: vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000,
        #                    vllm serve opencompass/CompassVerifier-3B --port 8001
        rollout = APIVLMServing_openai(api_url="http://127.0.0.1:8000/v1", model_name="Qwen/Qwen2.5-VL-7B-Instruct")
        verifier = APIVLMServing_openai(api_url="http://127.0.0.1:8001/v1", model_name="opencompass/CompassVerifier-3B",
                                        temperature=0.0, max_tokens=8)
        storage = FileStorage("vqa.jsonl", cache_path="./cache", file_name_prefix="vqa", cache_type="jsonl")
        VisionDependentFilter(rollout=rollout, verifier=verifier).run(
            storage.step(), input_question_key="question", input_answer_key="answer"
        )
        """,
        not_run="it needs two running model servers (a rollout model and a verifier), which the docs build lacks",
    )

    def __init__(
        self,
        rollout: VLMServingABC | dict,
        verifier: VLMServingABC | dict,
        system_prompt: str = "You are a helpful assistant.",
    ):
        self.rollout, self.verifier = servings(rollout, verifier)
        self.system_prompt = system_prompt

    def required_columns(self, keys: dict) -> dict[str, str]:
        need = super().required_columns(keys)
        need.pop("input_image_key", None)  # the questions go without their images
        return need

    def output_columns(self, keys: dict) -> list[str]:
        return [keys.get("output_answer_key") or "vision_independent_answer"]

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
    ) -> Verdict:
        name = type(self).__name__
        questions, gold, verdict = question_rows(df, input_question_key, input_answer_key, name)
        at = np.flatnonzero(verdict.kept).tolist()
        rolled = roll_out_and_verify(
            self.rollout,
            self.verifier,
            questions=[questions[i] for i in at],
            gold=[gold[i] for i in at],
            images=None,
            n=1,
            system_prompt=self.system_prompt or None,
            base_dir=base_dir,
            name=name,
        )
        answers: list[str | None] = [None] * len(df)
        correct = np.zeros(len(df), dtype=bool)
        for pos, texts, letters in zip(at, rolled.answers, rolled.letters):
            answers[pos] = texts[0]
            correct[pos] = letters == [CORRECT]
        df[output_answer_key] = pd.Series(answers, index=df.index, dtype=object)
        drop_failed(verdict, at, rolled.failed)
        verdict.drop(correct, "vision_independent", "answered correctly without the image (verifier grade A)")
        return verdict

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_question_key: str = "question",
        input_answer_key: str = "answer",
        output_answer_key: str = "vision_independent_answer",
    ) -> None:
        self.filter(
            storage,
            input_image_key=input_image_key,
            input_question_key=input_question_key,
            input_answer_key=input_answer_key,
            output_answer_key=output_answer_key,
        )
