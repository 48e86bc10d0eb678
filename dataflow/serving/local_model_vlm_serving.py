"""Vision-language models run in this process: transformers (any ``AutoModelForImageTextToText`` with its
processor's chat template) and vLLM's offline engine (DataFlow-MM's ``LocalModelVLMServing_vllm``).

Models load from a folder written by ``save_pretrained``, ``hf_local_dir``, or a Hub id in the Hugging Face
cache, downloaded there on first use unless ``HF_HUB_OFFLINE=1`` (no remote code runs). A model that cannot
be had stops the run with a message saying how to provide it. The model loads on
the first request, not when the serving is built, and stays loaded until :meth:`cleanup`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dataflow.log import get_logger, progress
from dataflow.media import DEFAULT_MAX_PIXELS, ImageLoadError
from dataflow.serving.base import (
    DEFAULT_SYSTEM_PROMPT,
    ServingError,
    VLMResult,
    VLMServingABC,
    check_max_side,
    conversation_of,
    data_url,
    load_for_model,
    openai_messages,
    per_request_images,
)

logger = get_logger("dataflow.serving")

DTYPES = ("auto", "float32", "float16", "bfloat16")
VLLM_CHUNK = 256  # requests handed to vLLM at once: its scheduler batches them; images are decoded per chunk


VLM_WHAT, VLM_HINT = "vision-language model", "Qwen/Qwen2.5-VL-3B-Instruct"


def _local_folder(name: Any, hf_local_dir: str | None) -> Path | None:
    """``name`` itself or ``hf_local_dir`` (where DataFlow-MM downloads to), when it holds a model."""
    for folder in (Path(os.fspath(name)).expanduser(), Path(hf_local_dir).expanduser() if hf_local_dir else None):
        if folder is not None and (folder / "config.json").is_file():
            return folder
    return None


def model_folder(name: Any, hf_cache_dir: str | None = None, hf_local_dir: str | None = None) -> Path:
    """The local folder of a model: ``name`` itself, ``hf_local_dir``, or ``name``'s snapshot in the HF
    cache (``hf_cache_dir``, else the default one), downloaded there on first use unless HF_HUB_OFFLINE."""
    from dataflow.models.hub import ModelNotFoundError, resolve_model_dir

    if name is None or not str(name):
        raise ModelNotFoundError("no model given: pass hf_model_name_or_path (a folder or a Hub id)")
    return _local_folder(name, hf_local_dir) or resolve_model_dir(name, VLM_WHAT, VLM_HINT, cache_dir=hf_cache_dir)


def _problem(name: Any, hf_cache_dir: str | None, hf_local_dir: str | None) -> list[str]:
    from dataflow.models.hub import model_problem

    if name is not None and str(name) and _local_folder(name, hf_local_dir):
        return []
    problem = model_problem(name, VLM_WHAT, VLM_HINT, cache_dir=hf_cache_dir)
    return [f"hf_model_name_or_path={name!r}: {problem}"] if problem else []


class _LocalServing(VLMServingABC):
    """Requests in batches of ``self.batch_size`` through :meth:`_generate`; a batch that raises is run again
    one request at a time, so one bad request fails alone (``generation_failed``) instead of its batch."""

    batch_size: int = 8
    max_side: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def _prepare(self, conversation: list[dict], images: list, system_prompt: str | None) -> Any:
        """What :meth:`_generate` takes for one request."""
        raise NotImplementedError

    def _generate(self, items: list) -> list[str]:
        """The text of each prepared request, in order."""
        raise NotImplementedError

    def generate_results(
        self,
        prompts: Sequence[Any],
        images: Sequence[Any] | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        base_dir: str | os.PathLike | None = None,
        desc: str = "",
        on_result: Callable[[int, VLMResult], None] | None = None,
    ) -> list[VLMResult]:
        prompts = list(prompts)
        sources = per_request_images(images, len(prompts))
        results: list[VLMResult | None] = [None] * len(prompts)
        if not prompts:
            return []
        self._load()
        bar = progress(total=len(prompts), desc=desc or type(self).__name__, unit="req")
        batch: list[tuple[int, Any]] = []

        def flush() -> None:
            for i, result in self._run(batch):
                results[i] = result
                if on_result is not None:
                    on_result(i, result)
            bar.update(len(batch))
            batch.clear()

        try:
            # Batches of readable requests only: an unreadable image fails its row here and the batch fills
            # up with the next rows, so the model always sees full batches.
            for i, prompt in enumerate(prompts):
                try:
                    imgs = [load_for_model(s, base_dir, self.max_side, self.max_pixels) for s in sources[i]]
                except ImageLoadError as exc:
                    results[i] = VLMResult(reason=exc.reason, detail=exc.detail or exc.reason, image_failed=True)
                    if on_result is not None:
                        on_result(i, results[i])
                    bar.update(1)
                    continue
                batch.append((i, self._prepare(conversation_of(prompt), imgs, system_prompt)))
                if len(batch) >= self.batch_size:
                    flush()
            if batch:
                flush()
        finally:
            bar.close()
        return results  # type: ignore[return-value]

    def _run(self, batch: list[tuple[int, Any]]) -> list[tuple[int, VLMResult]]:
        if not batch:
            return []
        try:
            texts = self._generate([item for _, item in batch])
        except Exception as exc:  # out of memory, a prompt over the context length: find the request(s) at fault
            if len(batch) > 1:
                logger.warning(
                    "%s: a batch of %d failed (%s); running it one request at a time",
                    type(self).__name__,
                    len(batch),
                    exc,
                )
                self._after_failure()
                return [pair for one in batch for pair in self._run([one])]
            self._after_failure()
            return [(batch[0][0], VLMResult(reason="generation_failed", detail=f"{type(exc).__name__}: {exc}"))]
        out = []
        for (i, _), text in zip(batch, texts):
            text = (text or "").strip()
            if text:
                out.append((i, VLMResult(text, requests=1)))
            else:
                out.append((i, VLMResult(reason="empty_response", detail="the model generated no text", requests=1)))
        return out

    def _load(self) -> None:
        raise NotImplementedError

    def _after_failure(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def cleanup(self) -> None:
        super().cleanup()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - a serving that never loaded torch
            pass


class LocalModelVLMServing_transformers(_LocalServing):
    """A vision-language model run by transformers in this process, requests in batches.

    Loads ``AutoProcessor`` and ``AutoModelForImageTextToText`` from local files only (Qwen2-VL / Qwen2.5-VL,
    LLaVA, Idefics3, SmolVLM, Gemma 3, PaliGemma 2 mix...). Each request is the processor's chat template
    over the system prompt and the user turn (its images, then its text), left-padded into batches of
    ``batch_size``; the answer is the decoded new tokens. Greedy decoding by default, so a rerun gives the
    same captions. A batch that fails (out of memory) is run again one request at a time.

    Parameters:
        hf_model_name_or_path: a folder written by ``save_pretrained``, or a Hub id already in the local
            Hugging Face cache (``Qwen/Qwen2.5-VL-3B-Instruct``)
        hf_cache_dir: the Hugging Face cache folder to look in; None = the default one (``HF_HOME``)
        hf_local_dir: a folder holding the model (where DataFlow-MM downloads it to), looked in second
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``...; None = cuda when there is one
        torch_dtype: ``"auto"`` (bfloat16 on a GPU that has it, else float16; float32 on cpu), ``"float32"``,
            ``"float16"`` or ``"bfloat16"``
        batch_size: requests generated together
        max_new_tokens: the most tokens an answer may have
        temperature: 0 decodes greedily; above 0 samples at this temperature
        top_p: nucleus sampling, when sampling
        top_k: top-k sampling, when sampling; None = the model's default
        repetition_penalty: transformers' repetition penalty (1.0 = none)
        seed: seed of the sampler, set before each batch when sampling
        max_side: longest side, in pixels, of the images given to the processor (larger ones are shrunk
            first, aspect kept); None gives them at full size and leaves resizing to the processor
        max_pixels: decompression-bomb guard: an image with more pixels fails as ``too_large``
        generation_kwargs: more arguments of ``model.generate`` (``{"min_new_tokens": 8}``)
    """

    def __init__(
        self,
        hf_model_name_or_path: str | os.PathLike | None = None,
        hf_cache_dir: str | None = None,
        hf_local_dir: str | None = None,
        device: str | None = None,
        torch_dtype: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        repetition_penalty: float = 1.0,
        seed: int = 42,
        max_side: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        generation_kwargs: dict | None = None,
    ):
        super().__init__()
        if hf_model_name_or_path is None or not str(hf_model_name_or_path):
            raise ValueError("hf_model_name_or_path is required (a model folder, or a Hub id in the local cache)")
        if torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {DTYPES}, got {torch_dtype!r}")
        for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        check_max_side(max_side)
        if generation_kwargs is not None and not isinstance(generation_kwargs, dict):
            raise ValueError(f"generation_kwargs must be a mapping, got {type(generation_kwargs).__name__}")
        self.hf_model_name_or_path = os.fspath(hf_model_name_or_path)
        self.hf_cache_dir = hf_cache_dir
        self.hf_local_dir = hf_local_dir
        self.device = device
        self.torch_dtype = torch_dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.repetition_penalty = repetition_penalty
        self.seed = seed
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.generation_kwargs = generation_kwargs

    def missing_models(self) -> list[str]:
        return _problem(self.hf_model_name_or_path, self.hf_cache_dir, self.hf_local_dir)

    def _load(self) -> None:
        state = self.runtime
        if "model" in state:
            return
        import torch
        import transformers

        from dataflow.models.clip import ModelNotFoundError, resolve_device

        folder = model_folder(self.hf_model_name_or_path, self.hf_cache_dir, self.hf_local_dir)
        device = resolve_device(self.device)
        if self.torch_dtype != "auto":
            dtype = getattr(torch, self.torch_dtype)
        elif device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32  # half precision on cpu is slow and lossy
        auto_model = getattr(transformers, "AutoModelForImageTextToText", None)
        if auto_model is None:
            raise ServingError(
                f"transformers {transformers.__version__} has no AutoModelForImageTextToText; upgrade it "
                "(pip install -U transformers)"
            )
        # transformers renamed `torch_dtype` to `dtype` (4.56); the old name still loads, with a warning.
        major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
        dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        try:
            processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
            model = auto_model.from_pretrained(folder, local_files_only=True, **{dtype_arg: dtype})
        except OSError as exc:  # weights, tokenizer or processor files missing from the folder
            raise ModelNotFoundError(
                f"incomplete vision-language model in {folder}: {exc}. The folder needs what save_pretrained "
                "writes for both the model and its processor"
            ) from exc
        if not getattr(processor, "chat_template", None):
            raise ServingError(
                f"the processor in {folder} has no chat template, so a request cannot be turned into the "
                "model's prompt; use the instruction-tuned model (its folder has chat_template.jinja or "
                "chat_template.json)"
            )
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only generation continues after the prompt's last token
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
        model = model.to(device).eval()
        logger.info("%s: loaded %s on %s (%s)", type(self).__name__, folder, device, str(dtype).replace("torch.", ""))
        state.update(model=model, processor=processor, device=device, dtype=dtype, folder=str(folder))

    def _prepare(self, conversation: list[dict], images: list, system_prompt: str | None) -> Any:
        processor = self.runtime["processor"]
        messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}] if system_prompt else []
        last_user = max((i for i, t in enumerate(conversation) if t["role"] == "user"), default=len(conversation))
        for i, turn in enumerate(conversation):
            text = turn["content"] if isinstance(turn["content"], str) else ""
            parts = [{"type": "image"} for _ in images] if i == last_user else []
            messages.append({"role": turn["role"], "content": parts + [{"type": "text", "text": text}]})
        if last_user == len(conversation):
            messages.append({"role": "user", "content": [{"type": "image"} for _ in images]})
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, images

    def _generate(self, items: list) -> list[str]:
        import torch

        state = self.runtime
        processor, model, device, dtype = state["processor"], state["model"], state["device"], state["dtype"]
        texts = [text for text, _ in items]
        images = [img for _, imgs in items for img in imgs]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = images
        inputs = processor(**kwargs)
        inputs = {
            k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) if torch.is_tensor(v) else v
            for k, v in inputs.items()
        }
        sample = self.temperature > 0
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        if sample:
            options.update(temperature=float(self.temperature), top_p=float(self.top_p))
            if self.top_k is not None:
                options["top_k"] = int(self.top_k)
            torch.manual_seed(self.seed)
        if self.repetition_penalty != 1.0:
            options["repetition_penalty"] = float(self.repetition_penalty)
        options.update(self.generation_kwargs or {})
        with torch.inference_mode():
            out = model.generate(**inputs, **options)
        new = out[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new, skip_special_tokens=True)


class LocalModelVLMServing_vllm(_LocalServing):
    """A vision-language model run by vLLM's offline engine in this process (DataFlow-MM's class and
    parameters; needs ``pip install vllm`` and a GPU).

    Requests go to ``LLM.chat`` in OpenAI's message format, images as ``data:`` URLs, in chunks of 256
    (vLLM batches them itself). Differences from DataFlow-MM: the model (a folder, ``hf_local_dir`` or the
    HF cache, downloaded into the cache on first use unless ``HF_HUB_OFFLINE=1``) loads on the first request
    rather than when the serving is built; a failed request is a null answer with a reason, not an error
    string. For a vLLM server (``vllm serve``), use
    ``APIVLMServing_openai``.

    Parameters:
        hf_model_name_or_path: a folder written by ``save_pretrained``, or a Hub id already in the local
            Hugging Face cache
        hf_cache_dir: the Hugging Face cache folder to look in; None = the default one
        hf_local_dir: a folder holding the model, looked in second
        vllm_tensor_parallel_size: GPUs the model is split over
        vllm_temperature: sampling temperature
        vllm_top_p: nucleus sampling
        vllm_max_tokens: the most tokens an answer may have
        vllm_top_k: top-k sampling
        vllm_repetition_penalty: vLLM's repetition penalty (1.0 = none)
        vllm_seed: seed of the sampler
        vllm_max_model_len: context length the engine allocates for
        vllm_gpu_memory_utilization: share of GPU memory vLLM may take
        max_side: longest side, in pixels, of the images sent to the engine; None = full size
        max_pixels: decompression-bomb guard: an image with more pixels fails as ``too_large``
    """

    batch_size = VLLM_CHUNK

    def __init__(
        self,
        hf_model_name_or_path: str | None = None,
        hf_cache_dir: str | None = None,
        hf_local_dir: str | None = None,
        vllm_tensor_parallel_size: int = 1,
        vllm_temperature: float = 0.7,
        vllm_top_p: float = 0.9,
        vllm_max_tokens: int = 1024,
        vllm_top_k: int = 40,
        vllm_repetition_penalty: float = 1.0,
        vllm_seed: int = 42,
        vllm_max_model_len: int = 4096,
        vllm_gpu_memory_utilization: float = 0.9,
        max_side: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        super().__init__()
        if hf_model_name_or_path is None or not str(hf_model_name_or_path):
            raise ValueError("hf_model_name_or_path is required")
        check_max_side(max_side)
        self.hf_model_name_or_path = os.fspath(hf_model_name_or_path)
        self.hf_cache_dir = hf_cache_dir
        self.hf_local_dir = hf_local_dir
        self.vllm_tensor_parallel_size = vllm_tensor_parallel_size
        self.vllm_temperature = vllm_temperature
        self.vllm_top_p = vllm_top_p
        self.vllm_max_tokens = vllm_max_tokens
        self.vllm_top_k = vllm_top_k
        self.vllm_repetition_penalty = vllm_repetition_penalty
        self.vllm_seed = vllm_seed
        self.vllm_max_model_len = vllm_max_model_len
        self.vllm_gpu_memory_utilization = vllm_gpu_memory_utilization
        self.max_side = max_side
        self.max_pixels = max_pixels

    def missing_models(self) -> list[str]:
        return _problem(self.hf_model_name_or_path, self.hf_cache_dir, self.hf_local_dir)

    def _load(self) -> None:
        state = self.runtime
        if "llm" in state:
            return
        folder = model_folder(self.hf_model_name_or_path, self.hf_cache_dir, self.hf_local_dir)
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ServingError(
                f"vLLM is not installed ({exc}): pip install vllm; or start a server (`vllm serve {folder}`) "
                "and use APIVLMServing_openai(api_url='http://127.0.0.1:8000/v1')"
            ) from None
        # vLLM's workers must be spawned, not forked, once CUDA is initialised (as DataFlow-MM sets it).
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        state["sampling"] = SamplingParams(
            temperature=self.vllm_temperature,
            top_p=self.vllm_top_p,
            max_tokens=self.vllm_max_tokens,
            top_k=self.vllm_top_k,
            repetition_penalty=self.vllm_repetition_penalty,
            seed=self.vllm_seed,
        )
        state["llm"] = LLM(
            model=str(folder),
            tensor_parallel_size=self.vllm_tensor_parallel_size,
            max_model_len=self.vllm_max_model_len,
            gpu_memory_utilization=self.vllm_gpu_memory_utilization,
        )
        logger.info("%s: loaded %s with vLLM", type(self).__name__, folder)

    def _prepare(self, conversation: list[dict], images: list, system_prompt: str | None) -> Any:
        return openai_messages(conversation, [data_url(img, "jpeg", 95) for img in images], system_prompt)

    def _generate(self, items: list) -> list[str]:
        state = self.runtime
        outputs = state["llm"].chat(items, state["sampling"], use_tqdm=False)
        return [o.outputs[0].text if o.outputs else "" for o in outputs]
