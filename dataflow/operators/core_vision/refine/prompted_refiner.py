"""PromptedRefiner: rewrite a text column (a caption, a prompt) with a language model, in place (DataFlow's)."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.log import get_logger
from dataflow.operators.core_vision._generation import generate_resumable
from dataflow.serving import build_serving
from dataflow.serving.base import DEFAULT_SYSTEM_PROMPT, VLMServingABC

logger = get_logger("dataflow.refine")

# DataFlow's default: the instruction is put before each row's text, in the user turn.
DEFAULT_INSTRUCTION = "You are a helpful agent."


@OPERATOR_REGISTRY.register()
class PromptedRefiner(OperatorABC):
    """Rewrites each row's text (recaptioning, prompt rewriting, translation) with a model behind a serving
    (``dataflow.serving``: any OpenAI-compatible server, or a local model), in place, as DataFlow's operator
    of this name does: the request is ``system_prompt`` followed by the row's text, as the user's turn, and
    the answer replaces the text.

    Rows with no text (null or empty) are not sent and keep what they had. A request that fails (after the
    serving's retries) keeps the row's old text and records why in ``<column>_refine_error`` (``timeout``,
    ``http_4xx``... as for ``ImageCaptionGenerator``); no row is lost. Give ``input_image_key`` to send the
    row's image with the text, so a vision-language model rewrites a caption while it looks at the image.
    Answers are kept in the step's journal as they arrive, so an interrupted step asks only for the rest.

    Differences from DataFlow: ``output_key`` may name a new column (the original then stays); a failed
    request keeps the old text with a reason (DataFlow logs the error and writes nothing); rows without
    text are skipped one by one (DataFlow's lengths then no longer match and it fails); ``llm_serving`` may
    be a mapping, so a YAML config can build it.

    Parameters:
        llm_serving: the serving that runs the model (a ``VLMServingABC`` from ``dataflow.serving``), or a
            mapping naming one and its parameters, as in a YAML config
        system_prompt: the instruction put before each row's text (DataFlow's name: it goes in the user
            turn, not the system message)
        input_key: column holding the text to rewrite
        input_image_key: a column of images sent with each row's text; None = text only
        output_key: column the rewritten text goes to; None = ``input_key`` (in place, as DataFlow)
    """

    description = "Rewrites a text column (recaption, prompt rewrite) with a language or vision-language model."
    description_zh = (
        "调用（视觉）语言模型改写文本列（重写描述、改写提示词），默认原地替换；失败的行保留原文并记录原因。"
    )
    execution = "rowwise"
    loads_model = True
    example = Example(
        """
        from dataflow.operators.core_vision import PromptedRefiner
        from dataflow.serving import APIVLMServing_openai
        from dataflow.utils.storage import FileStorage

        serving = APIVLMServing_openai(api_url="http://127.0.0.1:8000/v1", model_name="Qwen/Qwen2.5-7B-Instruct")
        storage = FileStorage("example_data/images.jsonl", cache_path="./cache", file_name_prefix="recap",
                              cache_type="jsonl")
        op = PromptedRefiner(serving, system_prompt="Rewrite this image caption as one vivid sentence: ")
        op.run(storage.step(), input_key="caption", output_key="rich_caption")
        """,
        not_run="it needs a running language model server, which the docs build lacks",
    )

    def __init__(self, llm_serving: VLMServingABC | dict, system_prompt: str = DEFAULT_INSTRUCTION):
        if not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a string, got {type(system_prompt).__name__}")
        self.serving = build_serving(llm_serving)
        self.system_prompt = system_prompt

    def output_columns(self, keys: dict) -> list[str]:
        out = keys.get("output_key") or keys.get("input_key") or "raw_content"
        return [out, f"{out}_refine_error"]

    def missing_models(self, keys: dict | None = None) -> list[str]:
        return list(self.serving.missing_models())

    def run(
        self,
        storage,
        input_key: str = "raw_content",
        input_image_key: str | None = None,
        output_key: str | None = None,
    ) -> list[str]:
        name = type(self).__name__
        df = storage.read("dataframe")
        if input_key not in df.columns:
            raise KeyError(
                f"{name}: input_key={input_key!r} is not a column (columns: {', '.join(map(str, df.columns))})"
            )
        out = output_key or input_key
        texts = list(df[input_key])
        todo = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip() or _is_scalar_text(t)]
        images = None
        if input_image_key is not None:
            column = list(image_column(df, input_image_key, name))
            images = [column[i] for i in todo]
        prompts = [self.system_prompt + str(texts[i]) for i in todo]
        results = generate_resumable(self.serving, storage, prompts, images, DEFAULT_SYSTEM_PROMPT, name)
        new, errors = list(texts), [None] * len(texts)
        for i, result in zip(todo, results, strict=True):
            if result.ok:
                new[i] = result.text
            else:
                errors[i] = result.reason
        failed = Counter(e for e in errors if e)
        logger.info(
            "%s: %d of %d row(s) rewritten%s",
            name,
            len(todo) - sum(failed.values()),
            len(df),
            f"; kept the old text of {sum(failed.values())} ({dict(failed.most_common())})" if failed else "",
        )
        df[out] = pd.Series(new, index=df.index, dtype=object)
        df[f"{out}_refine_error"] = pd.Series(errors, index=df.index, dtype=object)
        storage.write(df)
        return self.output_columns({"input_key": input_key, "output_key": output_key})


def _is_scalar_text(value) -> bool:
    """Numbers are text to rewrite too (DataFlow sends ``str(value)`` of any truthy cell); nulls are not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not pd.isna(value)
