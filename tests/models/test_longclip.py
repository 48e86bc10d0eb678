"""LongCLIP: an OpenAI-clip-format .pt loaded into transformers' CLIPModel, and ImageLongCLIPEvaluator.

A tiny CLIP with 248 text positions is built from a transformers config, saved as a transformers folder and
(through the inverse of our key mapping, written out here) as an OpenAI-clip-format state dict in a .pt,
its two position tables split the way LongCLIP stores them. Scores through our loader must equal those of
the transformers model run directly, long texts must reach past 77 tokens, and a .pt that only full
unpickling could read must be refused without running it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_inputs import EXPECTED_REASON
from conftest import make_tiny_clip, torch
from PIL import Image
from test_operator_contract import test_builtin_declares_descriptions_and_documents_every_parameter as documented
from test_reliability import suite_inputs

from dataflow.models.hub import ModelNotFoundError
from dataflow.models.longclip import (
    KEPT_POSITIONS,
    LONG_POSITIONS,
    UnsafeCheckpointError,
    find_checkpoint,
    load_longclip,
    longclip_problem,
    read_state_dict,
)
from dataflow.operators.core_vision.eval.image_longclip_evaluator import ImageLongCLIPEvaluator
from dataflow.utils.storage import FileStorage

TEXT_WIDTH, VISION_WIDTH = 128, 64  # OpenAI CLIP has width // 64 heads: 2 text heads, 1 vision head


# ------------------------------------------------------------------------------------------ tiny LongCLIP
def make_tiny_longclip(folder: Path, seed: int = 1) -> Path:
    """A transformers CLIP folder whose text side has 248 positions (tokenizer and preprocessor from
    ``make_tiny_clip``), heads following OpenAI's width // 64 rule so a state dict alone describes it."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    make_tiny_clip(folder)
    tok = CLIPTokenizer.from_pretrained(folder)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": TEXT_WIDTH // 64,
            "max_position_embeddings": LONG_POSITIONS,
            **ids,
        },
        vision_config={
            "hidden_size": VISION_WIDTH,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": VISION_WIDTH // 64,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # position rows far apart, so a wrong row (or a row cut off) changes the output
        model.text_model.embeddings.position_embedding.weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def to_openai(hf: dict, seed: int = 2) -> dict:
    """transformers CLIPModel names -> OpenAI-clip names, as LongCLIP stores them: positions 0..19 in
    ``positional_embedding`` and 20.. in ``positional_embedding_res``, the unused rows of each filled with
    noise (LongCLIP's mask ignores them, and so must the loader)."""
    g = torch.Generator().manual_seed(seed)
    pos = hf["text_model.embeddings.position_embedding.weight"]
    first, rest = pos.clone(), pos.clone()
    first[KEPT_POSITIONS:] = torch.randn(first[KEPT_POSITIONS:].shape, generator=g)
    rest[:KEPT_POSITIONS] = torch.randn(rest[:KEPT_POSITIONS].shape, generator=g)
    sd = {
        "logit_scale": hf["logit_scale"],
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": first,
        "positional_embedding_res": rest,
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].T.contiguous(),
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
        "input_resolution": 32,  # OpenAI checkpoints carry a few plain ints too
    }
    for src, dst in (
        ("text_model.encoder.layers.", "transformer.resblocks."),
        ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
    ):
        for i in range(2):
            h, o = f"{src}{i}.", f"{dst}{i}."
            attn = [hf[f"{h}self_attn.{p}_proj.weight"] for p in "qkv"]
            sd[f"{o}attn.in_proj_weight"] = torch.cat(attn)
            sd[f"{o}attn.in_proj_bias"] = torch.cat([hf[f"{h}self_attn.{p}_proj.bias"] for p in "qkv"])
            names = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
            names.update({"mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"})
            for a, b in names.items():
                for p in ("weight", "bias"):
                    sd[f"{o}{b}.{p}"] = hf[f"{h}{a}.{p}"]
    sd["visual.proj"] = sd["visual.proj"].half()  # LongCLIP's checkpoints are saved from fp16 models
    return sd


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from transformers import CLIPModel

    root = tmp_path_factory.mktemp("longclip")
    hf_dir = make_tiny_longclip(root / "hf")
    model = CLIPModel.from_pretrained(hf_dir).eval()
    ckpt = root / "ckpt" / "longclip-tiny.pt"
    ckpt.parent.mkdir()
    torch.save(to_openai(model.state_dict()), ckpt)
    return {"hf_dir": hf_dir, "pt": ckpt, "model": model}


def _images(folder: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """Small random photos-of-noise (under 256 px, so no operator shrinks them before the model)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        h, w = int(rng.integers(30, 90)), int(rng.integers(30, 90))
        path = folder / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def reference_scores(model, hf_dir: Path, images: list[Path], texts: list[str]) -> np.ndarray:
    """DataFlow-MM's score with the transformers model run directly: its own tokenizer (up to 248 tokens)
    and image processor, (cosine + 1) / 2."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = CLIPTokenizer.from_pretrained(hf_dir)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    out = []
    with torch.no_grad():
        for path, text in zip(images, texts):
            ids = tok([text], truncation=True, max_length=LONG_POSITIONS, return_tensors="pt")["input_ids"]
            pixels = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
            res = model(input_ids=ids, pixel_values=pixels)
            cos = torch.nn.functional.cosine_similarity(res.image_embeds, res.text_embeds).item()
            out.append((cos + 1) / 2)
    return np.array(out)


def long_caption(n_words: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return " ".join("".join(rng.choice(letters, 3)) for _ in range(n_words))


def run_operator(tmp_path: Path, rows: list[dict], **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = FileStorage(src, cache_path=tmp_path / "cache", file_name_prefix="t")
    op = ImageLongCLIPEvaluator(device="cpu", num_workers=1, **kwargs)
    returned = op.run(storage.step(), input_image_key="image", input_text_key="caption")
    return storage.step().read(), returned, op


# ------------------------------------------------------------------------------------------ LongCLIP's own forward
def _openai_block(x, sd: dict, p: str, mask):
    """OpenAI CLIP's residual attention block (``nn.MultiheadAttention`` on the fused q/k/v weights)."""
    width = x.shape[-1]
    attn = torch.nn.MultiheadAttention(width, width // 64, batch_first=True)
    attn.load_state_dict({k[len(p) + 5 :]: v.float() for k, v in sd.items() if k.startswith(f"{p}attn.")})
    ln = torch.nn.functional.layer_norm
    h = ln(x, (width,), sd[f"{p}ln_1.weight"], sd[f"{p}ln_1.bias"])
    x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
    h = (
        ln(x, (width,), sd[f"{p}ln_2.weight"], sd[f"{p}ln_2.bias"]) @ sd[f"{p}mlp.c_fc.weight"].T
        + sd[f"{p}mlp.c_fc.bias"]
    )
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ sd[f"{p}mlp.c_proj.weight"].T + sd[f"{p}mlp.c_proj.bias"]


def longclip_encode(sd: dict, ids, pixels):
    """LongCLIP's encode_text / encode_image on its state dict, as its model_longclip.py computes them:
    positions 0..19 from ``positional_embedding`` and the rest from ``positional_embedding_res`` (mask1 /
    mask2), ids zero-padded to 248 with the end token the highest id, a causal mask; unit-norm outputs."""
    ln = torch.nn.functional.layer_norm
    mask1 = torch.zeros(LONG_POSITIONS, 1)
    mask1[:KEPT_POSITIONS] = 1
    x = (
        sd["token_embedding.weight"][ids]
        + sd["positional_embedding"] * mask1
        + sd["positional_embedding_res"] * (1 - mask1)
    )
    causal = torch.full((LONG_POSITIONS, LONG_POSITIONS), float("-inf")).triu(1)
    for i in range(2):
        x = _openai_block(x, sd, f"transformer.resblocks.{i}.", causal)
    x = ln(x, (x.shape[-1],), sd["ln_final.weight"], sd["ln_final.bias"])
    text = x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ sd["text_projection"]
    v = torch.nn.functional.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
    v = v.flatten(2).permute(0, 2, 1)
    v = torch.cat([sd["visual.class_embedding"].expand(len(v), 1, -1), v], dim=1) + sd["visual.positional_embedding"]
    v = ln(v, (v.shape[-1],), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(2):
        v = _openai_block(v, sd, f"visual.transformer.resblocks.{i}.", None)
    v = ln(v[:, 0], (v.shape[-1],), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"].float()
    norm = torch.nn.functional.normalize
    return norm(text, dim=-1).numpy(), norm(v, dim=-1).numpy()


# ------------------------------------------------------------------------------------------ loading
def test_openai_checkpoint_maps_onto_the_same_clipmodel_weights(tiny):
    clip = load_longclip(tiny["pt"], device="cpu", tokenizer_name=tiny["hf_dir"])
    ours, theirs = clip.model.state_dict(), tiny["model"].state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key == "visual_projection.weight":  # stored as fp16 in the .pt, as LongCLIP's cuda saves are
            torch.testing.assert_close(ours[key], value.half().float(), rtol=0, atol=0)
        else:
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    text = clip.model.config.text_config
    assert text.max_position_embeddings == LONG_POSITIONS and text.num_attention_heads == 2
    assert clip.max_length == LONG_POSITIONS and clip.crop_size == 32 and clip.dtype == torch.float32


def test_embeddings_equal_longclips_own_forward_on_the_checkpoint(tiny, tmp_path):
    """The mapped CLIPModel computes what LongCLIP's own code computes on the .pt's tensors."""
    clip = load_longclip(tiny["pt"], device="cpu", tokenizer_name=tiny["hf_dir"])
    sd = {k: v.float() for k, v in read_state_dict(tiny["pt"]).items()}
    texts = ["a red car", long_caption(50, 9), long_caption(70, 10)]  # 2, ~150 and ~210 tokens
    ids = torch.zeros(len(texts), LONG_POSITIONS, dtype=torch.long)  # LongCLIP's tokenize pads with 0
    for row, text in enumerate(texts):
        tokens = clip.tokenizer(text)["input_ids"]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    images = [Image.open(p).convert("RGB") for p in _images(tmp_path / "img", n=3, seed=11)]
    with torch.no_grad():
        text_ref, image_ref = longclip_encode(sd, ids, clip.preprocess(images))
    np.testing.assert_allclose(clip.encode_texts(texts), text_ref, atol=1e-5)
    np.testing.assert_allclose(clip.encode_images(images), image_ref, atol=1e-5)


def test_scores_through_the_checkpoint_equal_the_transformers_model(tiny, tmp_path):
    images = _images(tmp_path / "img")
    texts = ["a red car", "two zebras on grass", long_caption(60, 1), long_caption(90, 2)]
    # The .pt rounded visual.proj to fp16: the reference model gets the same rounding.
    model = type(tiny["model"]).from_pretrained(tiny["hf_dir"]).eval()
    with torch.no_grad():
        model.visual_projection.weight.copy_(model.visual_projection.weight.half().float())
    expected = reference_scores(model, tiny["hf_dir"], images, texts)
    rows = [{"image": str(p), "caption": t} for p, t in zip(images, texts)]
    df, returned, _ = run_operator(tmp_path, rows, model_name=str(tiny["pt"]), tokenizer_name=str(tiny["hf_dir"]))
    assert returned == ["longclip_score"]
    np.testing.assert_allclose(df["longclip_score"].to_numpy(), expected, atol=1e-5)
    assert df["longclip_score"].between(0, 1).all() and df["image_error"].isna().all()


def test_transformers_folder_with_248_positions_scores_like_the_model(tiny, tmp_path):
    images = _images(tmp_path / "img", n=3, seed=4)
    texts = ["a cat", long_caption(80, 3), "a boat at sea"]
    expected = reference_scores(tiny["model"], tiny["hf_dir"], images, texts)
    rows = [{"image": str(p), "caption": t} for p, t in zip(images, texts)]
    df, _, _ = run_operator(tmp_path, rows, model_name=str(tiny["hf_dir"]))
    np.testing.assert_allclose(df["longclip_score"].to_numpy(), expected, atol=1e-5)


def test_long_texts_are_read_past_77_tokens_and_cut_at_248(tiny):
    clip = load_longclip(tiny["pt"], device="cpu", tokenizer_name=tiny["hf_dir"])
    head = long_caption(30, 5)  # 30 words of 3 letters: 90 tokens with this byte-level tokenizer
    a, b = f"{head} red", f"{head} green"
    assert 77 < len(clip.tokenizer(a)["input_ids"]) < LONG_POSITIONS
    ea, eb = clip.encode_texts([a, b])
    assert not np.allclose(ea, eb, atol=1e-3)  # the last word, past token 77, counts
    very_long = long_caption(100, 6)  # 300 tokens
    c, d = clip.encode_texts([f"{very_long} red", f"{very_long} green"])
    np.testing.assert_allclose(c, d, atol=1e-6)  # past 248 tokens nothing is read, as in DataFlow-MM
    ids = clip.tokenizer([f"{very_long} red"], truncation=True, max_length=LONG_POSITIONS)["input_ids"][0]
    assert len(ids) == LONG_POSITIONS and ids[-1] == clip.tokenizer.eos_token_id


def test_a_pickled_model_is_refused_without_being_unpickled(tiny, tmp_path):
    marker = tmp_path / "ran.txt"

    class Payload:  # what a malicious "checkpoint" does: run code when unpickled
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, bad)
    with pytest.raises(UnsafeCheckpointError, match="full unpickling"):
        read_state_dict(bad)
    assert not marker.exists()
    full = tmp_path / "full_model.pt"
    torch.save(tiny["model"], full)  # a whole model object, as some training scripts save
    with pytest.raises(UnsafeCheckpointError, match=r"torch.save\(model.state_dict\(\)"):
        load_longclip(full, device="cpu", tokenizer_name=tiny["hf_dir"])


def test_the_operator_surfaces_the_refusal(tiny, tmp_path):
    full = tmp_path / "m" / "longclip.pt"
    full.parent.mkdir()
    torch.save(tiny["model"], full)
    img = _images(tmp_path / "img", n=1)[0]
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        run_operator(tmp_path, [{"image": str(img), "caption": "x"}], model_name=str(full.parent))


def test_files_that_are_not_longclip_state_dicts_are_clear_errors(tiny, tmp_path, tiny_clip_dir):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="could not be read as a PyTorch state dict"):
        read_state_dict(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an OpenAI-clip-format CLIP state dict"):
        load_longclip(other, device="cpu", tokenizer_name=tiny["hf_dir"])
    short = read_state_dict(tiny["pt"])
    short["positional_embedding"] = short["positional_embedding"][:77]
    del short["positional_embedding_res"]
    torch.save(short, tmp_path / "clip77.pt")
    with pytest.raises(ValueError, match="77 text positions"):
        load_longclip(tmp_path / "clip77.pt", device="cpu", tokenizer_name=tiny["hf_dir"])
    with pytest.raises(ValueError, match="16 text positions, LongCLIP has 248"):
        load_longclip(tiny_clip_dir, device="cpu")  # a plain (16-position) transformers CLIP folder


def test_missing_models_are_clear_errors(tiny, tmp_path):
    with pytest.raises(ModelNotFoundError, match="nothing at"):
        load_longclip(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither config.json nor"):
        load_longclip(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="downloads are off"):  # tests run with HF_HUB_OFFLINE=1
        load_longclip("not-an-org/not-a-longclip")
    assert "nothing at" in longclip_problem(str(tmp_path / "nope.pt"))
    assert longclip_problem(str(tiny["pt"])) is None and longclip_problem(str(tiny["hf_dir"])) is None
    op = ImageLongCLIPEvaluator(model_name=str(tmp_path / "nope.pt"))
    assert op.missing_models() and "nothing at" in op.missing_models()[0]
    with pytest.raises(ModelNotFoundError, match="CLIP tokenizer"):  # a .pt needs a tokenizer from somewhere
        load_longclip(tiny["pt"], device="cpu", tokenizer_name=str(tmp_path / "no-tokenizer"))


def test_a_folder_prefers_the_longclip_checkpoint_and_its_own_tokenizer(tiny, tmp_path):
    folder = tmp_path / "LongCLIP-tiny"
    folder.mkdir()
    (folder / "aaa_optimizer.pt").write_bytes(b"sorted first, but not named longclip")
    shutil.copy(tiny["pt"], folder / "longclip-tiny.pt")
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny["hf_dir"] / name).is_file():
            shutil.copy(tiny["hf_dir"] / name, folder / name)
    assert find_checkpoint(folder) == folder / "longclip-tiny.pt"
    clip = load_longclip(folder, device="cpu", tokenizer_name=str(tmp_path / "unused"))  # beside it wins
    reference = load_longclip(tiny["pt"], device="cpu", tokenizer_name=tiny["hf_dir"])
    texts = ["a long caption " * 10]
    np.testing.assert_array_equal(clip.encode_texts(texts), reference.encode_texts(texts))


# ------------------------------------------------------------------------------------------ operator
def test_operator_keeps_every_row_and_scores_like_dataflow_mm(tiny, tmp_path):
    images = _images(tmp_path / "img", n=2, seed=7)
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    rows = [
        {"image": str(images[0]), "caption": "a red car"},
        {"image": str(images[1]), "caption": ""},  # empty text: 0, as DataFlow-MM
        {"image": str(images[1]), "caption": None},
        {"image": str(tmp_path / "img" / "broken.jpg"), "caption": "a cat"},
        {"image": str(tmp_path / "img" / "gone.jpg"), "caption": "a cat"},
        {"image": str(images[0]), "caption": ["a red car", "a red car"]},  # a list: mean cosine
    ]
    df, _, op = run_operator(tmp_path, rows, model_name=str(tiny["pt"]), tokenizer_name=str(tiny["hf_dir"]))
    assert len(df) == len(rows)
    scores = df["longclip_score"].tolist()
    assert scores[1] == 0.0 and scores[2] == 0.0
    assert np.isnan(scores[3]) and np.isnan(scores[4])
    assert df["image_error"].tolist()[3:5] == ["truncated", "missing"]
    assert 0 < scores[0] < 1 and scores[5] == pytest.approx(scores[0], abs=1e-6)
    # The model stays loaded: a second run reuses it.
    model = op.models.get()
    run_operator(tmp_path / "again", rows[:1], model_name=str(tiny["pt"]), tokenizer_name=str(tiny["hf_dir"]))
    assert op.models.get() is model


def test_scales_and_declarations(tiny, tmp_path):
    images = _images(tmp_path / "img", n=1, seed=8)
    rows = [{"image": str(images[0]), "caption": "a red car"}]
    kw = {"model_name": str(tiny["pt"]), "tokenizer_name": str(tiny["hf_dir"])}
    unit = run_operator(tmp_path / "u", rows, **kw)[0]["longclip_score"][0]
    cosine = run_operator(tmp_path / "c", rows, scale="cosine", **kw)[0]["longclip_score"][0]
    assert unit == pytest.approx((cosine + 1) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="scale must be one of"):
        ImageLongCLIPEvaluator(scale="percent")
    documented("ImageLongCLIPEvaluator")
    assert "Differences from DataFlow-MM:" in ImageLongCLIPEvaluator.__doc__
    op = ImageLongCLIPEvaluator()
    assert op.model_name == "BeichenZhang/LongCLIP-L-336px" and op.params["device"] is None


def test_bad_input_suite(tiny, tmp_path):
    """Every row kept; an unreadable image gets a null score and the loader's reason, a readable one a score."""
    op = ImageLongCLIPEvaluator(model_name=str(tiny["pt"]), tokenizer_name=str(tiny["hf_dir"]), device="cpu")
    for k, (src, cache_type) in enumerate(suite_inputs(tmp_path)):
        storage = FileStorage(src, cache_path=tmp_path / f"c{k}", file_name_prefix="r", cache_type=cache_type)
        op.run(storage.step(), input_image_key="image", input_text_key="caption")
        out = storage.step().read()
        names = (
            set(pd.read_json(src, lines=True)["name"]) if cache_type == "jsonl" else {"raw_bytes", "bytes_path_dict"}
        )
        assert len(out) == storage.manifest(1)["rows_in"] == len(names) and set(out["name"]) == names
        for _, row in out.iterrows():
            want = EXPECTED_REASON[row["name"]]
            got = row["image_error"] if isinstance(row["image_error"], str) else None
            assert got == want, row["name"]
            assert np.isnan(row["longclip_score"]) if want else 0 < row["longclip_score"] < 1
