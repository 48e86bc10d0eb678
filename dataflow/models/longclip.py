"""LongCLIP (Zhang et al., 2024) as a transformers ``CLIPModel`` whose text side takes 248 tokens.

LongCLIP is OpenAI's CLIP with the text positional embeddings stretched from 77 to 248 positions (the
first 20 kept, the rest interpolated 4x) and fine-tuned on long captions. Its checkpoints
(``BeichenZhang/LongCLIP-B``, ``-L``) are ``.pt`` state dicts in OpenAI-clip format, with two text position
tables: ``positional_embedding`` (used for positions 0..19) and ``positional_embedding_res`` (used for 20..).

``load_longclip(model_name)`` accepts:

- a ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` state dict in OpenAI-clip format (ViT only), read with
  ``torch.load(weights_only=True)``: a file that needs full unpickling (a pickled model object, which can
  run code when loaded) is refused with :class:`UnsafeCheckpointError`, never unpickled;
- a folder holding such a file (DataFlow-MM's rule: names containing "longclip" first, then by name);
- a transformers CLIP folder (``config.json``) whose text side has at least 248 positions;
- a Hub repo id, found in the local HF cache, or downloaded into it on first use unless downloads are off
  (``HF_HUB_OFFLINE=1``).

The checkpoint is mapped onto transformers' CLIP names (:func:`openai_to_hf`) and loaded into a
``CLIPModel``; the result is the project's :class:`~dataflow.models.clip.CLIPEmbedder`, so preprocessing,
batching, device and dtype handling are CLIP's. A ``.pt`` has no tokenizer: the tokenizer files next to it
are used when there, else ``tokenizer_name`` (any OpenAI CLIP tokenizer: they share one vocabulary).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

from dataflow.models.hub import ModelNotFoundError, downloads_allowed, hf_cache_dir, looks_like_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from dataflow.models.clip import CLIPEmbedder

__all__ = [
    "DEFAULT_LONGCLIP",
    "DEFAULT_TOKENIZER",
    "LONG_POSITIONS",
    "KEPT_POSITIONS",
    "UnsafeCheckpointError",
    "LongCLIPCache",
    "find_checkpoint",
    "hf_config",
    "load_longclip",
    "longclip_problem",
    "openai_to_hf",
    "read_state_dict",
]

DEFAULT_LONGCLIP = "BeichenZhang/LongCLIP-L-336px"  # DataFlow-MM's default name
DEFAULT_TOKENIZER = "openai/clip-vit-base-patch32"  # every OpenAI CLIP has this tokenizer
LONG_POSITIONS = 248
KEPT_POSITIONS = 20  # positions LongCLIP reads from `positional_embedding`; the rest from `_res`
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# What a Hub repo of LongCLIP holds: the checkpoint (or a transformers model) and tokenizer files.
HUB_FILES = ["*.pt", "*.json", "*.safetensors", "*.txt"]
_WHAT = "LongCLIP model"


class UnsafeCheckpointError(ValueError):
    """A checkpoint that only full unpickling could read (it can run code on load): refused, never loaded."""


def _missing(name: str, reason: str) -> ModelNotFoundError:
    repo = "BeichenZhang/LongCLIP-L" if looks_like_path(name) else name
    return ModelNotFoundError(
        f"{_WHAT} {name!r} was not found ({reason}). Either:\n"
        "  1. pass the path of a LongCLIP checkpoint (longclip-L.pt, an OpenAI-clip-format state dict), of a "
        "folder holding one, or of a transformers CLIP folder with 248 text positions, or\n"
        "  2. download it once, on a machine with network access, into the Hugging Face cache read here "
        f"({hf_cache_dir()}; set HF_HOME to move it):\n"
        f"       hf download {repo}\n"
    )


def _checkpoint_in(folder: Path) -> Path | None:
    """The HF model folder itself (it has config.json), else its checkpoint file, else None."""
    if (folder / "config.json").is_file():
        return folder
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES]
    if not files:
        return None
    preferred = [p for p in files if "longclip" in p.name.lower()]
    return sorted(preferred or files, key=lambda p: p.name)[0]


def find_checkpoint(model_name: str | os.PathLike, local_files_only: bool | None = None) -> Path:
    """The checkpoint file or transformers folder that ``model_name`` names (see the module docstring)."""
    name = os.fspath(model_name)
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = _checkpoint_in(path)
        if found is None:
            raise _missing(name, f"folder {path} has neither config.json nor a {'/'.join(CHECKPOINT_SUFFIXES)} file")
        return found
    if looks_like_path(name) or path.exists():
        raise _missing(name, f"nothing at {path.resolve()}")
    from huggingface_hub import snapshot_download

    cache = hf_cache_dir()
    try:
        folder = Path(snapshot_download(name, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # not a repo id, or not in the cache
        if not downloads_allowed(local_files_only):
            raise _missing(name, f"not in the HF cache {cache}, and downloads are off") from exc
        try:
            folder = Path(snapshot_download(name, cache_dir=cache, allow_patterns=HUB_FILES))
        except Exception as exc:  # network down, unknown or gated repo
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise _missing(name, f"not in the HF cache {cache}; download: {detail}") from exc
    found = _checkpoint_in(folder)
    if found is None:
        raise _missing(name, f"its snapshot {folder} has neither config.json nor a checkpoint file")
    return found


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file, read with ``weights_only=True`` (no code can run).

    A pickled model object or a TorchScript archive is refused with :class:`UnsafeCheckpointError`.
    """
    import torch

    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not an object's class: bytes torch cannot parse
            raise ValueError(f"{path} could not be read as a PyTorch state dict: {exc}") from exc
        raise UnsafeCheckpointError(
            f"{path} is not a plain state dict: reading it would need full unpickling (a pickled model "
            "object), which can run arbitrary code, so it is refused. Re-save its weights where you trust "
            "it: torch.save(model.state_dict(), 'longclip.pt')"
        ) from exc
    except Exception as exc:  # torch raises KeyError, EOFError, RuntimeError... for files it cannot parse
        if "TorchScript" in str(exc):
            raise UnsafeCheckpointError(
                f"{path} is a TorchScript archive, not a state dict; re-save its weights: "
                "torch.save(torch.jit.load(path).state_dict(), 'longclip.pt')"
            ) from exc
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(f"{path} could not be read as a PyTorch state dict ({detail})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}  # drops OpenAI's int entries


def _layers(sd: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return len({int(m.group(1)) for k in sd if (m := pattern.match(k))})


def _check_openai_format(sd: dict, where: str) -> None:
    if "visual.proj" not in sd and any(k.startswith("visual.layer1.") for k in sd):
        raise ValueError(f"{where} is a ResNet CLIP; only ViT checkpoints load into transformers' CLIPModel")
    needed = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
    needed += ("visual.conv1.weight", "visual.positional_embedding", "visual.proj")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ValueError(f"{where} is not an OpenAI-clip-format CLIP state dict (no {', '.join(missing)})")
    positions = sd["positional_embedding"].shape[0]
    if positions < LONG_POSITIONS:
        raise ValueError(
            f"{where} has {positions} text positions, LongCLIP has {LONG_POSITIONS}: it is a plain CLIP "
            "checkpoint (score plain 77-token CLIP models as CLIP, not LongCLIP)"
        )


def _heads(width: int, where: str) -> int:
    # OpenAI's CLIP does not store head counts: it builds width // 64 heads of 64 channels.
    if width < 64 or width % 64:
        raise ValueError(f"{where}: width {width} is not a multiple of 64, so its attention heads are unknown")
    return width // 64


def hf_config(sd: dict, tokenizer=None, where: str = "checkpoint"):
    """The transformers ``CLIPConfig`` of an OpenAI-clip-format state dict, read from its shapes."""
    from transformers import CLIPConfig

    _check_openai_format(sd, where)
    text_width = sd["ln_final.weight"].shape[0]
    vision_width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text = {
        "vocab_size": sd["token_embedding.weight"].shape[0],
        "hidden_size": text_width,
        "intermediate_size": sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _layers(sd, "transformer.resblocks."),
        "num_attention_heads": _heads(text_width, where),
        "max_position_embeddings": sd["positional_embedding"].shape[0],
        "hidden_act": "quick_gelu",  # OpenAI CLIP's activation
    }
    if tokenizer is not None:  # pooling reads the end-of-text token, whose id the tokenizer knows
        text.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    vision = {
        "hidden_size": vision_width,
        "intermediate_size": sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _layers(sd, "visual.transformer.resblocks."),
        "num_attention_heads": _heads(vision_width, where),
        "image_size": patch * grid,
        "patch_size": patch,
        "hidden_act": "quick_gelu",
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=sd["text_projection"].shape[1])


def _block(sd: dict, src: str, dst: str, out: dict) -> None:
    """One residual attention block: OpenAI's fused q/k/v projection split into transformers' three."""
    q, k, v = sd[f"{src}attn.in_proj_weight"].chunk(3, dim=0)
    qb, kb, vb = sd[f"{src}attn.in_proj_bias"].chunk(3, dim=0)
    for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
        out[f"{dst}self_attn.{name}.weight"], out[f"{dst}self_attn.{name}.bias"] = w, b
    pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2"}
    pairs.update({"mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"})
    for a, b in pairs.items():
        for p in ("weight", "bias"):
            out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]


def openai_to_hf(sd: dict) -> dict:
    """An OpenAI-clip-format (LongCLIP) state dict under transformers' ``CLIPModel`` names.

    LongCLIP's text position ``i`` is ``positional_embedding[i]`` for ``i < 20`` and
    ``positional_embedding_res[i]`` after (its mask1 / mask2 sum), so the two tables become one.
    """
    import torch

    pos = sd["positional_embedding"]
    if "positional_embedding_res" in sd:
        pos = torch.cat([pos[:KEPT_POSITIONS], sd["positional_embedding_res"][KEPT_POSITIONS:]])
    out = {
        "logit_scale": sd.get("logit_scale", torch.tensor(4.6052)),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": pos,
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T,
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T,
    }
    for i in range(_layers(sd, "transformer.resblocks.")):
        _block(sd, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", out)
    for i in range(_layers(sd, "visual.transformer.resblocks.")):
        _block(sd, f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", out)
    return {k: v.float().contiguous() for k, v in out.items()}


def _load_tokenizer(checkpoint: Path, tokenizer_name: str | os.PathLike):
    """The tokenizer files beside the checkpoint, else ``tokenizer_name`` (a folder or a Hub id)."""
    from transformers import CLIPTokenizer

    from dataflow.models.hub import incomplete_model, resolve_model_dir

    for folder in (checkpoint.parent, Path(os.fspath(tokenizer_name)).expanduser()):
        if (
            (folder / "tokenizer.json").is_file()
            or (folder / "vocab.json").is_file()
            and (folder / "merges.txt").is_file()
        ):
            return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    folder = resolve_model_dir(tokenizer_name, "CLIP tokenizer (for a LongCLIP .pt)", DEFAULT_TOKENIZER)
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except OSError as exc:
        raise incomplete_model(tokenizer_name, folder, exc, "CLIP tokenizer", DEFAULT_TOKENIZER) from exc


def _text_positions(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    return int((config.get("text_config") or {}).get("max_position_embeddings", 77))


def load_longclip(
    model_name: str | os.PathLike = DEFAULT_LONGCLIP,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    tokenizer_name: str | os.PathLike = DEFAULT_TOKENIZER,
) -> CLIPEmbedder:
    """A LongCLIP model as a :class:`CLIPEmbedder` whose texts are tokenized up to 248 tokens.

    Raises ``ModelNotFoundError`` when it cannot be found, :class:`UnsafeCheckpointError` for a checkpoint
    that would need full unpickling, ``ValueError`` for a file that is not a (Long)CLIP ViT state dict.
    """
    import torch
    from transformers import CLIPModel

    from dataflow.models.clip import CLIPEmbedder, _torch_dtype_for, load_clip, resolve_device

    found = find_checkpoint(model_name)
    if found.is_dir():  # a transformers CLIP folder
        positions = _text_positions(found)
        if positions < LONG_POSITIONS:
            raise ValueError(
                f"{_WHAT} {os.fspath(model_name)!r}: {found} is a CLIP with {positions} text positions, LongCLIP "
                f"has {LONG_POSITIONS} (score plain CLIP models as CLIP, not LongCLIP)"
            )
        return load_clip(found, device, batch_size)
    sd = read_state_dict(found)
    _check_openai_format(sd, str(found))
    tokenizer = _load_tokenizer(found, tokenizer_name)
    config = hf_config(sd, tokenizer, str(found))
    weights = openai_to_hf(sd)
    with torch.device("meta"):  # the names CLIPModel expects, without allocating (or initialising) a weight
        expected = set(CLIPModel(config).state_dict())
    if set(weights) != expected:  # pragma: no cover - the mapping covers every CLIPModel weight
        raise ValueError(f"{found}: weights do not fit CLIPModel (differing: {sorted(set(weights) ^ expected)})")
    # from_pretrained with a state dict skips the random initialisation (20 s for ViT-L on two cores).
    model = CLIPModel.from_pretrained(None, config=config, state_dict=weights)
    dev = resolve_device(device)
    model = model.to(dev, dtype=_torch_dtype_for(dev)).eval()
    # No preprocessor config: OpenAI's transform (resize the short side to the input size, centre crop,
    # CLIP's mean / std), which is what CLIPEmbedder does by default.
    return CLIPEmbedder(model, tokenizer, {}, dev, name=os.fspath(model_name), batch_size=batch_size)


def longclip_problem(model_name) -> str | None:
    """Why ``model_name`` cannot be had as a LongCLIP model, or None (reads no weight, downloads nothing)."""
    if model_name is None or not str(model_name):
        return "no model given"
    name = os.fspath(model_name)
    if downloads_allowed() and not looks_like_path(name) and not Path(name).expanduser().exists():
        return None  # a Hub id: found in the cache or fetched on first use
    try:
        found = find_checkpoint(name, local_files_only=True)
    except ModelNotFoundError as exc:
        return str(exc).strip()
    except ImportError as exc:
        from dataflow import install_hint

        return f"cannot look for it: {exc.name or exc} is not installed ({install_hint('clip')})"
    if found.is_dir() and _text_positions(found) < LONG_POSITIONS:
        return f"{found} is a CLIP with {_text_positions(found)} text positions, LongCLIP has {LONG_POSITIONS}"
    return None


class LongCLIPCache:
    """Loads the LongCLIP model on first use and keeps it, so an operator can run again."""

    def __init__(self, model_name, device, batch_size: int, tokenizer_name=DEFAULT_TOKENIZER):
        self.model_name, self.device, self.batch_size = model_name, device, batch_size
        self.tokenizer_name = tokenizer_name
        self._embedder: CLIPEmbedder | None = None

    def get(self) -> CLIPEmbedder:
        if self._embedder is None:
            self._embedder = load_longclip(self.model_name, self.device, self.batch_size, self.tokenizer_name)
        return self._embedder
