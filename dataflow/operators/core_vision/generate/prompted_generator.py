"""PromptedGenerator: a text answer per row from a language model, DataFlow's text generator."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.log import get_logger
from dataflow.operators.core_vision._generation import generate_resumable
from dataflow.serving import build_serving
from dataflow.serving.base import VLMServingABC

logger = get_logger("dataflow.generate")


@OPERATOR_REGISTRY.register()
class PromptedGenerator(OperatorABC):
    """Writes a model's answer to ``user_prompt`` followed by each row's text, with ``system_prompt`` as the
    system message, as DataFlow's operator of this name does (translation, rewriting, question generation
    over a caption or any text column), through any serving of ``dataflow.serving``
    (``APILLMServing_request``, ``APIVLMServing_openai``, a local model).

    Rows with no text (null or empty) are not sent and get a null answer. A request that fails (after the
    serving's retries) gets a null answer and its reason in ``<output_key>_error``; no row is lost.
    Answers are kept in the step's journal as they arrive, so an interrupted step asks only for the rest.

    Differences from DataFlow: rows without text get a null answer one by one (DataFlow's list of answers
    then no longer lines up with the rows and it fails); a failed request is null with a reason, not an
    error string; ``llm_serving`` may be a mapping, as in a YAML config.

    Parameters:
        llm_serving: the serving that runs the model, or a mapping naming one and its parameters
        system_prompt: the system message of every request
        user_prompt: text put before each row's text in the user's turn
        json_schema: a JSON schema the answers must follow (OpenAI's ``response_format``; an
            OpenAI-compatible serving only); None = free text
        input_key: column holding each row's text
        output_key: column the answer is written to (with ``<output_key>_error``)
    """

    description = "Asks a language model about each row's text (system prompt + user prompt + the text)."
    description_zh = "以系统提示词、用户提示词和每行文本调用语言模型生成内容；失败的行为空并记录原因。"
    execution = "rowwise"
    loads_model = True
    keeps_rows = True
    example = Example(
        """
        from dataflow.operators.core_text import PromptedGenerator
        from dataflow.serving import APILLMServing_request
        from dataflow.utils.storage import FileStorage

        serving = APILLMServing_request(api_url="http://127.0.0.1:8000/v1/chat/completions",
                                        model_name="Qwen/Qwen2.5-7B-Instruct")
        storage = FileStorage("example_data/images.jsonl", cache_path="./cache", file_name_prefix="gen",
                              cache_type="jsonl")
        op = PromptedGenerator(serving, system_prompt="You are a translator.", user_prompt="Translate into Chinese: ")
        op.run(storage.step(), input_key="caption", output_key="caption_zh")
        """,
        not_run="it needs a running language model server, which the docs build lacks",
    )

    def __init__(
        self,
        llm_serving: VLMServingABC | dict,
        system_prompt: str = "You are a helpful agent.",
        user_prompt: str = "",
        json_schema: dict | None = None,
    ):
        for name, value in (("system_prompt", system_prompt), ("user_prompt", user_prompt)):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {type(value).__name__}")
        serving = build_serving(llm_serving)
        if json_schema is not None:
            from dataflow.serving.api_llm_serving_request import with_json_schema

            serving = with_json_schema(serving, json_schema)
        self.serving = serving
        self.system_prompt = system_prompt
        self.user_prompt = user_prompt

    def output_columns(self, keys: dict) -> list[str]:
        out = keys.get("output_key") or "generated_content"
        return [out, f"{out}_error"]

    def missing_models(self, keys: dict | None = None) -> list[str]:
        return list(self.serving.missing_models())

    def run(self, storage, input_key: str = "raw_content", output_key: str = "generated_content") -> list[str]:
        name = type(self).__name__
        df = storage.read("dataframe")
        if input_key not in df.columns:
            raise KeyError(
                f"{name}: input_key={input_key!r} is not a column (columns: {', '.join(map(str, df.columns))})"
            )
        texts = list(df[input_key])
        todo = [i for i, t in enumerate(texts) if not _blank(t)]
        prompts = [self.user_prompt + str(texts[i]) for i in todo]
        results = generate_resumable(self.serving, storage, prompts, None, self.system_prompt or None, name)
        answers, errors = [None] * len(texts), [None] * len(texts)
        for i, result in zip(todo, results, strict=True):
            answers[i], errors[i] = (result.text, None) if result.ok else (None, result.reason)
        failed = Counter(e for e in errors if e)
        logger.info(
            "%s: %d of %d row(s) answered%s",
            name,
            len(todo) - sum(failed.values()),
            len(df),
            f"; failed: {dict(failed.most_common())}" if failed else "",
        )
        df[output_key] = pd.Series(answers, index=df.index, dtype=object)
        df[f"{output_key}_error"] = pd.Series(errors, index=df.index, dtype=object)
        storage.write(df)
        return self.output_columns({"output_key": output_key})


def _blank(value) -> bool:
    """DataFlow sends a row when its text is truthy: nulls, NaN and empty strings are not sent."""
    if value is None or isinstance(value, float) and pd.isna(value):
        return True
    return value is False or isinstance(value, str) and not value.strip()
