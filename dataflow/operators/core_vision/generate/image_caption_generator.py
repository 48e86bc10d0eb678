"""ImageCaptionGenerator: a caption per row from a vision-language model behind a serving (DataFlow-MM's)."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from dataflow.core.docs import Example
from dataflow.core.images import ERROR_COLUMN, ERROR_DETAIL_COLUMN, image_column
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.log import get_logger
from dataflow.operators.core_vision._generation import generate_resumable
from dataflow.serving import build_serving
from dataflow.serving.base import VLMServingABC
from dataflow.storage.provenance import PROVENANCE_COLUMNS, keep_user_columns

logger = get_logger("dataflow.caption")

# DataFlow-MM's pipelines give this system prompt, and their caption data this user turn.
DEFAULT_SYSTEM_PROMPT = (
    "You are a image caption generator. Your task is to generate a concise and informative caption for the "
    "given image content."
)
DEFAULT_PROMPT = "Please describe the image in detail."
ON_ERROR = ("keep", "reject")


@OPERATOR_REGISTRY.register()
class ImageCaptionGenerator(OperatorABC):
    """Writes a caption of each row's image, asked of a vision-language model through a serving: any
    OpenAI-compatible server (``APIVLMServing_openai``: vLLM, SGLang, lmdeploy, Ollama, hosted APIs) or a
    model run in this process (``LocalModelVLMServing_transformers``, ``LocalModelVLMServing_vllm``), all
    from ``dataflow.serving``.

    Each request is the system prompt, then one user turn: the row's image (or each image of a list) and
    ``prompt`` (or the row's own prompt in ``input_prompt_key``). The serving reads the image the way every
    operator does (upright, decoded once) and sends it at the size it is told.

    No row is lost. With ``on_error="keep"`` (the default) every row stays: a row whose image cannot be
    read, or whose request still fails after the serving's retries, gets a null caption, the reason in
    ``<output_key>_error`` and the words in ``<output_key>_error_detail``; an unreadable image's reason also
    goes to ``image_error`` / ``image_error_detail``, as evaluators write it, so later steps treat the row
    as they treat any unreadable image. With ``on_error="reject"`` those rows go to the step's rejected
    file instead, with that reason. Reasons: the image loader's codes for an unreadable image (``missing``,
    ``truncated``...), and for a failed request ``timeout``, ``connection``, ``http_429``, ``http_5xx``,
    ``http_4xx`` (refused, not retried), ``bad_response``, ``empty_response``, ``generation_failed``.
    What no request can get past stops the step with one message instead: a server that cannot be reached,
    an API key it refuses (401 / 403), a wrong URL or model name (404), a local model not on disk.

    Each row is captioned on its own (``execution = "rowwise"``): under ``dataflow run --engine ray`` every
    worker holds its own serving, so an API server sees up to workers x ``max_workers`` requests at once.
    A cached step is not captioned again when the pipeline reruns; rerun with ``dataflow run --no-resume``
    (or ``forward(resume=None)``) to retry the rows whose request failed. Inside the step, each caption is
    kept in the step's journal (``<prefix>_step<N>.answers.journal.jsonl``) the moment it arrives: after a
    crash, a kill or Ctrl-C, the rerun asks only for the rows not captioned yet (same operator, serving
    settings and input; the journal goes when the step is written). The step's manifest records the
    serving (model, URL, sampling settings) and the prompts, and they are part of its fingerprint.

    Differences from DataFlow-MM, whose operator reads the user turn from a ``conversation`` column and
    writes the serving's ``"Error: ..."`` text as the caption of a failed request: the prompt is a
    parameter (a column only when ``input_prompt_key`` names one), failures are null with a reason, and
    ``llm_serving`` may be a mapping, so a YAML config can build it.

    Parameters:
        llm_serving: the serving that runs the model (a ``VLMServingABC`` from ``dataflow.serving``), or a
            mapping naming one and its parameters (``{serving: APIVLMServing_openai, api_url:
            http://127.0.0.1:8000/v1, model_name: Qwen/Qwen2.5-VL-7B-Instruct}``), as in a YAML config
        system_prompt: the system message of every request (DataFlow-MM's caption prompt by default;
            empty: none)
        prompt: the user's text of every request (of the rows without one in ``input_prompt_key``)
        on_error: what becomes of a row without a caption: ``"keep"`` it (null caption, reason columns) or
            ``"reject"`` it (to the rejected file, with the reason)
        input_modal_key: column holding the image (a path, bytes, a ``{bytes, path}`` dict), or a list of
            images per row
        input_prompt_key: a column holding each row's own prompt; None = ``prompt`` for every row
        output_key: column the caption is written to (with ``<output_key>_error`` and
            ``<output_key>_error_detail`` when ``on_error="keep"``)
    """

    description = (
        "Captions each image with a vision-language model (an OpenAI-compatible server or a local model); "
        "rows whose image or request fails get a null caption and a reason."
    )
    description_zh = (
        "调用视觉语言模型（OpenAI 兼容服务或本地模型）为每张图像生成描述；图像无法读取或请求失败的行，"
        "描述为空并记录原因。"
    )
    execution = "rowwise"
    loads_model = True  # a local serving holds the model: engines keep one operator per worker
    example = Example(
        """
        from dataflow.operators.core_vision import ImageCaptionGenerator
        from dataflow.serving import APIVLMServing_openai
        from dataflow.utils.storage import FileStorage

        # a local server: vllm serve Qwen/Qwen2.5-VL-7B-Instruct  (OpenAI API on http://127.0.0.1:8000/v1)
        serving = APIVLMServing_openai(api_url="http://127.0.0.1:8000/v1", model_name="Qwen/Qwen2.5-VL-7B-Instruct",
                                       max_workers=16, max_side=1024, max_tokens=200)
        storage = FileStorage("example_data/images.jsonl", cache_path="./cache", file_name_prefix="cap",
                              cache_type="jsonl")
        op = ImageCaptionGenerator(llm_serving=serving)
        op.run(storage.step(), input_modal_key="image", output_key="vlm_caption")
        print(storage.step().read("dataframe")[["image", "vlm_caption", "vlm_caption_error"]].head())
        """,
        not_run="it needs a running vision-language model server (or a local model), which the docs build lacks",
    )

    def __init__(
        self,
        llm_serving: VLMServingABC | dict,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        prompt: str = DEFAULT_PROMPT,
        on_error: str = "keep",
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        self.serving = build_serving(llm_serving)
        self.system_prompt = system_prompt
        self.prompt = prompt
        self.on_error = on_error

    def output_columns(self, keys: dict) -> list[str]:
        out = keys.get("output_key") or "output"
        if getattr(self, "on_error", "keep") == "reject":
            return [out]
        return [out, f"{out}_error", f"{out}_error_detail", ERROR_COLUMN, ERROR_DETAIL_COLUMN]

    def missing_models(self, keys: dict | None = None) -> list[str]:
        return list(self.serving.missing_models())

    def run(
        self,
        storage,
        input_modal_key: str = "image",
        input_prompt_key: str | None = None,
        output_key: str = "output",
    ) -> list[str]:
        name = type(self).__name__
        df = storage.read("dataframe")
        values = image_column(df, input_modal_key, name)
        # A null image is a request that fails as `missing`, never a caption of nothing: one source per row.
        images = [list(v) if isinstance(v, (list, tuple)) else [v] for v in values]
        if input_prompt_key is not None:
            if input_prompt_key not in df.columns:
                raise KeyError(
                    f"{name}: input_prompt_key={input_prompt_key!r} is not a column "
                    f"(columns: {', '.join(map(str, df.columns))})"
                )
            prompts = [p if isinstance(p, str) and p.strip() else self.prompt for p in df[input_prompt_key]]
        else:
            prompts = [self.prompt] * len(df)
        results = generate_resumable(self.serving, storage, prompts, images, self.system_prompt or None, name)
        ok = [r.ok for r in results]
        failed = Counter(r.reason for r in results if not r.ok)
        logger.info(
            "%s: %d of %d row(s) captioned%s",
            name,
            sum(ok),
            len(df),
            f"; no caption for {sum(failed.values())} ({dict(failed.most_common())})" if failed else "",
        )
        texts = pd.Series([r.text if r.ok else None for r in results], index=df.index, dtype=object)
        if self.on_error == "reject":
            mask = pd.Series(ok, index=df.index, dtype=bool)
            kept = df[mask].copy()
            kept[output_key] = texts[mask]
            rejected = keep_user_columns(df[~mask].copy(), PROVENANCE_COLUMNS)
            rejected["reason"] = [r.reason for r in results if not r.ok]
            rejected["detail"] = [r.detail for r in results if not r.ok]
            storage.write(kept, rejected=rejected)
        else:
            df[output_key] = texts

            def column(values: list) -> pd.Series:
                return pd.Series(values, index=df.index, dtype=object)

            df[f"{output_key}_error"] = column([r.reason for r in results])
            df[f"{output_key}_error_detail"] = column([r.detail for r in results])
            df[ERROR_COLUMN] = column([r.reason if r.image_failed else None for r in results])
            df[ERROR_DETAIL_COLUMN] = column([r.detail if r.image_failed else None for r in results])
            storage.write(df)
        return self.output_columns({"output_key": output_key})
