"""A vision-language model's hidden states through transformers (features of an image with its text).

``load_vlm_features(model_name, device, torch_dtype)`` gives a :class:`VLMFeatures` whose
:meth:`~VLMFeatures.token_states` runs a batch of (image, text) requests through the model's chat template,
its processor and ``AutoModelForImageTextToText`` (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, LLaVA...: the class ``config.json`` names), and returns the hidden
states of one layer for each request's tokens, padding left out. The folder comes from
:func:`dataflow.models.hub.resolve_model_dir` (a local folder, the local HF cache or a first-use download
where allowed); the model's own code is never run.

Qwen2-VL's and Qwen2.5-VL's processors hold a video processor that transformers builds only with
torchvision installed; without torchvision the processor is built from its image processor and tokenizer
alone (the same class and code for images and text), so these models run on the CPU-only torch the
[clip] extra installs.

torch and transformers are imported lazily, so this module imports without the [clip] extra.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataflow.log import get_logger
from dataflow.models.clip import resolve_device
from dataflow.models.hub import incomplete_model, model_problem, resolve_model_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DEFAULT_VLM", "DTYPES", "VLMFeatures", "load_processor", "load_vlm_features", "vlm_problem"]

logger = get_logger("dataflow.models")

DEFAULT_VLM = "Qwen/Qwen2-VL-7B-Instruct"
DTYPES = ("auto", "float32", "float16", "bfloat16")
WHAT = "vision-language model"


def vlm_problem(model_name) -> str | None:
    """Why ``model_name`` cannot be loaded (None when it can, or will be downloaded on first use)."""
    return model_problem(model_name, WHAT, DEFAULT_VLM)


def _chat_template(folder: Path) -> str | None:
    """The processor's chat template as ``save_pretrained`` writes it (``chat_template.jinja`` or
    ``chat_template.json``); None leaves the tokenizer's own."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    path = folder / "chat_template.json"
    if path.is_file():
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _processor_class_name(folder: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8")).get("processor_class")
            except ValueError:
                continue
            if isinstance(found, str) and found:
                return found
    return None


def _image_only_processor(folder: Path, cause: ImportError):
    """The folder's processor class without its video processor (which needs torchvision)."""
    import transformers

    name = _processor_class_name(folder)
    cls = getattr(transformers, name, None) if name else None
    get_attributes = getattr(cls, "get_attributes", None)
    attributes = list(get_attributes() if callable(get_attributes) else getattr(cls, "attributes", []))
    if cls is None or "video_processor" not in attributes:
        raise cause
    kept = [a for a in attributes if a != "video_processor"]

    class ImageOnly(cls):  # transformers < 5 reads `attributes`, 5 asks `get_attributes()`
        __doc__ = cls.__doc__

        @classmethod
        def get_attributes(klass):
            return list(kept)

    ImageOnly.attributes = kept
    ImageOnly.__name__ = ImageOnly.__qualname__ = cls.__name__
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    image_processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    logger.info("%s: torchvision is not installed; using its image processor and tokenizer only", name)
    return ImageOnly(image_processor=image_processor, tokenizer=tokenizer, chat_template=_chat_template(folder))


def load_processor(folder: str | os.PathLike):
    """``AutoProcessor`` of the folder; without torchvision, a Qwen-VL style processor minus its video part."""
    import transformers

    folder = Path(folder)
    try:
        return transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        return _image_only_processor(folder, exc)


class VLMFeatures:
    """A loaded vision-language model and its processor, asked for hidden states."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype, folder: Path):
        self.model, self.processor, self.device, self.dtype, self.folder = model, processor, device, dtype, folder
        text = getattr(model.config, "text_config", model.config)
        self.num_layers = int(getattr(text, "num_hidden_layers", 0) or 0)
        # The logits are not needed; where the model can, it computes them for the last token only.
        self._forward_options: dict[str, Any] = {}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            self._forward_options["logits_to_keep"] = 1

    def check_layer(self, layer: int) -> None:
        """``layer`` indexes ``hidden_states`` (the embeddings, then each layer's output): a clear error if not."""
        count = self.num_layers + 1
        if self.num_layers and not -count <= layer < count:
            raise ValueError(
                f"extract_layer={layer} is out of range: {self.folder.name} has {self.num_layers} layers, so "
                f"hidden_states has {count} entries (indices {-count} to {count - 1})"
            )

    def prompt(self, image, text: str) -> str:
        """The chat template over one user turn holding the image and the text, ready for the reply."""
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def token_states(self, images: list, texts: list[str], layer: int) -> list[torch.Tensor]:
        """Per request (one image and its text), the ``layer`` hidden states of its tokens, as float32
        ``[tokens, hidden]`` on the model's device; padding is masked out of the batch and dropped."""
        import torch

        prompts = [self.prompt(img, txt) for img, txt in zip(images, texts)]
        inputs = self.processor(text=prompts, images=list(images), padding=True, return_tensors="pt")
        inputs = {
            k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
            if torch.is_tensor(v)
            else v
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=True, return_dict=True, **self._forward_options)
        states = out.hidden_states[layer]
        mask = inputs["attention_mask"].bool()
        return [states[i][mask[i]].float() for i in range(len(prompts))]


def load_vlm_features(
    model_name: str | os.PathLike, device: str | None = None, torch_dtype: str = "auto"
) -> VLMFeatures:
    """Load the model and processor (see the module docstring); raises ``ModelNotFoundError`` when the model
    cannot be had, ValueError for a dtype it does not know."""
    if torch_dtype not in DTYPES:
        raise ValueError(f"torch_dtype must be one of {DTYPES}, got {torch_dtype!r}")
    import torch
    import transformers

    folder = resolve_model_dir(model_name, WHAT, DEFAULT_VLM)
    resolved = resolve_device(device)
    if torch_dtype != "auto":
        dtype = getattr(torch, torch_dtype)
    elif resolved.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32  # half precision on the cpu is slow and lossy
    auto_model = getattr(transformers, "AutoModelForImageTextToText", None)
    if auto_model is None:
        raise ImportError(f"transformers {transformers.__version__} has no AutoModelForImageTextToText; upgrade it")
    # transformers renamed `torch_dtype` to `dtype` (4.56); the old name still loads, with a warning.
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    try:
        processor = load_processor(folder)
        model = auto_model.from_pretrained(folder, local_files_only=True, **{dtype_arg: dtype})
    except OSError as exc:  # weights, tokenizer or processor files missing from the folder
        raise incomplete_model(model_name, folder, exc, WHAT, DEFAULT_VLM) from exc
    if not getattr(processor, "chat_template", None):
        raise ValueError(
            f"the processor in {folder} has no chat template, so a request cannot be turned into the model's "
            "prompt; use the instruction-tuned model (its folder has chat_template.jinja or chat_template.json)"
        )
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        # Forward passes only: padding on the right leaves every real token at the position it has
        # unpadded, also in a model that numbers positions from 0 whatever the attention mask says.
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    model = model.to(resolved).eval()
    logger.info("loaded %s on %s (%s)", folder, resolved, str(dtype).replace("torch.", ""))
    return VLMFeatures(model, processor, resolved, dtype, folder)
