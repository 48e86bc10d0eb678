"""DataTailorFilter on tiny vision-language models built offline: Qwen2.5-VL and Qwen2-VL (the real classes,
random weights, a byte-level tokenizer with Qwen's special tokens, Qwen's image processor), and the tiny
LLaVA of tests/test_vlm_serving.py.

The operator is checked against DataFlow-MM's computation written out here: one sample per forward pass
through ``Qwen2_5_VLForConditionalGeneration``, numpy's SVD for informativeness, scikit-learn's
``AgglomerativeClustering`` and ``cosine_similarity``, DataFlow-MM's loops for uniqueness and
representativeness and its rank-based selection: same metrics, same rows kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import torch, transformers
from PIL import Image
from shared_data import shared
from test_vlm_serving import tiny_vlm as llava_fixture

from dataflow.models.hub import ModelNotFoundError
from dataflow.models.vlm import load_processor
from dataflow.operators.core_vision.filter.datatailor_filter import (
    METRICS,
    DataTailorFilter,
    cluster_count,
    cluster_labels,
)
from dataflow.storage.manifest import check_accounting
from dataflow.utils.storage import FileStorage

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat template, short: the default system turn, then each turn with its image placeholders.
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_qwen_vl(folder: Path, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL (or Qwen2-VL) with its tokenizer, image processor and chat template, as
    save_pretrained writes them: 4-pixel patches merged 2 x 2, images resized to 64-256 pixels."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    ).save_pretrained(folder)
    image_processor = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    image_processor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=64, max_pixels=256).save_pretrained(
        folder
    )
    processor_class = "Qwen2_5_VLProcessor" if family == "qwen2_5_vl" else "Qwen2VLProcessor"
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": processor_class}))
    (folder / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        "pad_token_id": 0,
        "eos_token_id": 2,
        "bos_token_id": 0,
    }
    tokens = {
        "image_token_id": vocab["<|image_pad|>"],
        "video_token_id": vocab["<|video_pad|>"],
        "vision_start_token_id": vocab["<|vision_start|>"],
        "vision_end_token_id": vocab["<|vision_end|>"],
    }
    patches = {"patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "depth": 2, "num_heads": 2}
    if family == "qwen2_5_vl":
        vision = {**patches, "hidden_size": 16, "intermediate_size": 32, "out_hidden_size": 32, "window_size": 16}
        config = transformers.Qwen2_5_VLConfig(
            text_config=text, vision_config={**vision, "fullatt_block_indexes": [1]}, **tokens
        )
        model_class = transformers.Qwen2_5_VLForConditionalGeneration
    else:
        vision = {**patches, "embed_dim": 16, "hidden_size": 32, "mlp_ratio": 2}
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model_class = transformers.Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():  # spread the random features so the metrics differ clearly between photos
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny models are all per-op overhead: one thread spares them spin-waiting on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


tiny_vlm = llava_fixture  # tests/test_vlm_serving.py's tiny LLaVA, as a fixture of this module too


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory) -> Path:
    return make_tiny_qwen_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), "qwen2_5_vl")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight COCO photos with a question and their first caption as the answer, plus a truncated copy of
    one photo, a missing file and a row without an image."""
    coco = shared("coco_captions")
    rows = [json.loads(line) for line in (coco / "captions.jsonl").read_text().splitlines()[:8]]
    folder = tmp_path_factory.mktemp("datatailor")
    (folder / "cut.jpg").write_bytes((coco / rows[0]["image"]).read_bytes()[:3000])
    table = [{"image": str(coco / r["image"]), "question": "What is shown? ", "answer": r["captions"][0]} for r in rows]
    table[3]["question"] = None  # a null question is empty text
    table[5:5] = [
        {"image": str(folder / "cut.jpg"), "question": "q", "answer": "a"},
        {"image": str(folder / "gone.jpg"), "question": "q", "answer": "a"},
        {"image": None, "question": "q", "answer": "a"},
    ]
    (folder / "rows.jsonl").write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(table)))
    return folder / "rows.jsonl"


def run_step(src: Path, cache: Path, op: DataTailorFilter, **keys):
    storage = FileStorage(src, cache_path=cache, file_name_prefix="dt")
    assert op.run(storage.step(), **keys) is None
    meta = storage.manifest(1)
    check_accounting("DataTailorFilter", meta["rows_in"], meta["rows_out"], meta["rows_rejected"])
    rejected = storage.read_rejected(1)
    return storage.step().read("dataframe"), rejected.set_index("id") if len(rejected) else rejected, meta


# ------------------------------------------------------------------------------------------ DataFlow-MM's way
def dataflow_mm_metrics(folder: Path, rows: list[dict], threshold: float, keep_ratio: float, layer: int = -2):
    """DataFlow-MM's DataTailorFilter computation on ``rows`` (all readable): the three metrics and the
    positions it keeps. Its processor is ours without the video part (transformers builds Qwen-VL's
    video processor only with torchvision)."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics.pairwise import cosine_similarity

    processor = load_processor(folder)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    tokens, samples = [], []
    for row in rows:
        text = (row["question"] or "") + row["answer"]
        messages = [
            {"role": "user", "content": [{"type": "image", "image": row["image"]}, {"type": "text", "text": text}]}
        ]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        image = Image.open(row["image"]).convert("RGB")
        inputs = processor(text=[prompt], images=[image], padding=True, return_tensors="pt")
        with torch.no_grad():
            states = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[layer][0]
        tokens.append(states.numpy())
        samples.append(states.mean(dim=0).numpy())
    features = np.vstack(samples)
    n = len(rows)

    informativeness = np.zeros(n)
    for i, t in enumerate(tokens):
        s = np.linalg.svd(t.astype(np.float32), full_matrices=False)[1]
        s = s[s > 1e-8]
        p = s / s.sum()
        informativeness[i] = -np.sum(p * np.log(p + 1e-10))

    k = min(max(2, int(n * threshold)), n // 2)
    labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(features)

    uniqueness = np.zeros(n)
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        if len(idx) <= 1:
            continue
        f, w = features[idx], informativeness[idx] / informativeness[idx].sum()
        for i, g in enumerate(idx):
            d = np.linalg.norm(f - f[i : i + 1], axis=1)
            d[i] = 0
            uniqueness[g] = np.sum(d * w)

    representativeness = np.zeros(n)
    clusters = np.unique(labels)
    centroids = np.array([features[labels == c].mean(axis=0) for c in clusters])
    centroids = centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-8)
    sims = cosine_similarity(centroids)
    for ci, c in enumerate(clusters):
        idx = np.where(labels == c)[0]
        others = sims[ci].copy()
        others[ci] = 0
        tau = np.exp(others).sum() / (len(clusters) - 1)
        w = informativeness[idx] / informativeness[idx].sum()
        representativeness[idx] = tau * w

    ranks = [np.argsort(np.argsort(v)) / n for v in (informativeness, uniqueness, representativeness)]
    scores = (1 / 3) * ranks[0] + (2 / 3) * (ranks[1] + ranks[2]) / 2
    kept = np.sort(np.argsort(scores)[-max(1, int(n * keep_ratio)) :])
    return {
        "informativeness": informativeness,
        "uniqueness": uniqueness,
        "representativeness": representativeness,
    }, kept


def test_datatailor_equals_dataflow_mms_computation_and_rejects_what_it_cannot_score(qwen25, photos, tmp_path):
    op = DataTailorFilter(model_name=str(qwen25), keep_ratio=0.5, clustering_threshold=0.4, batch_size=4, device="cpu")
    kept, rejected, meta = run_step(photos, tmp_path / "cache", op)

    rows = [json.loads(line) for line in photos.read_text().splitlines()]
    readable = [r for r in rows if r["id"] not in (5, 6, 7)]
    want, want_kept = dataflow_mm_metrics(qwen25, readable, threshold=0.4, keep_ratio=0.5)
    assert meta["rows_in"] == 11 and meta["rows_out"] == 4 and meta["rows_rejected"] == 7
    assert kept["id"].tolist() == [readable[i]["id"] for i in want_kept]
    assert meta["rejected_reasons"] == {"low_datatailor_score": 4, "truncated": 1, "missing": 2}
    # every scored row, kept or rejected, carries the three metrics: DataFlow-MM's values
    scored = kept.set_index("id").combine_first(rejected.drop(index=[5, 6, 7]))
    ids = [r["id"] for r in readable]
    for metric in METRICS:
        np.testing.assert_allclose(scored.loc[ids, metric].to_numpy(float), want[metric], rtol=1e-4, atol=1e-7)
    assert len(set(np.round(want["informativeness"], 6))) == 8  # the photos do differ
    assert rejected.loc[[5, 6, 7], METRICS].isna().all().all()
    assert rejected.loc[5, "reason"] == "truncated" and rejected.loc[7, "reason"] == "missing"
    low = rejected[rejected["reason"] == "low_datatailor_score"]
    assert low["detail"].str.fullmatch(r"DataTailor score [\d.]+ ranks [5-8] of 8; keep_ratio 0.5 keeps 4").all()

    # The model stays loaded: a second run reuses it.
    vlm = op.vlm()
    two = tmp_path / "two.jsonl"
    two.write_text("".join(line + "\n" for line in photos.read_text().splitlines()[:2]))
    run_step(two, tmp_path / "again", op)
    assert op.vlm() is vlm


# ------------------------------------------------------------------------------------------ clustering
def partition(labels) -> set[frozenset]:
    return {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}


@pytest.mark.parametrize(("n", "threshold"), [(3, 0.1), (10, 0.1), (40, 0.1), (40, 0.3), (120, 0.05), (57, 0.5)])
def test_clustering_equals_scikit_learns_agglomerative_clustering(n, threshold):
    from sklearn.cluster import AgglomerativeClustering

    rng = np.random.default_rng(n)
    centres = rng.normal(size=(6, 24))
    features = (centres[rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, 24))).astype(np.float32)
    k = cluster_count(n, threshold)
    theirs = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(features)
    ours = cluster_labels(features, threshold)
    assert len(np.unique(ours)) == k and partition(ours) == partition(theirs)


def test_two_rows_or_fewer_are_one_cluster_and_one_row_is_kept(qwen25, photos, tmp_path):
    assert cluster_labels(np.ones((2, 4)), 0.1).tolist() == [0, 0]
    src = tmp_path / "one.jsonl"
    src.write_text(photos.read_text().splitlines()[0] + "\n")
    kept, _, meta = run_step(src, tmp_path / "cache", DataTailorFilter(str(qwen25), keep_ratio=0.0, device="cpu"))
    assert meta["rows_out"] == 1 and kept["representativeness"].tolist() == [1.0] and kept["uniqueness"][0] == 0


# ------------------------------------------------------------------------------------------ models
def test_the_model_class_is_the_one_its_config_names(tmp_path, tiny_vlm, photos):
    qwen2 = make_tiny_qwen_vl(tmp_path / "qwen2", "qwen2_vl")
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(line + "\n" for line in photos.read_text().splitlines()[:5]))
    for folder, model_class, processor_class in (
        (qwen2, "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
        (tiny_vlm, "LlavaForConditionalGeneration", "LlavaProcessor"),
    ):
        op = DataTailorFilter(model_name=str(folder), keep_ratio=0.6, batch_size=4, device="cpu")
        kept, rejected, meta = run_step(src, tmp_path / f"cache_{folder.name}", op)
        vlm = op.vlm()
        assert type(vlm.model).__name__ == model_class and type(vlm.processor).__name__ == processor_class
        assert meta["rows_out"] == 3 and set(rejected["reason"]) == {"low_datatailor_score"}
        assert kept[list(METRICS)].notna().all().all()
        # one sample per forward pass gives the same metrics: padding changes nothing
        alone_op = DataTailorFilter(model_name=str(folder), keep_ratio=0.6, batch_size=1, device="cpu")
        alone, _, _ = run_step(src, tmp_path / f"alone_{folder.name}", alone_op)
        assert alone["id"].tolist() == kept["id"].tolist()
        np.testing.assert_allclose(alone[list(METRICS)], kept[list(METRICS)], rtol=1e-4)


def test_a_model_not_on_disk_and_bad_parameters_are_clear_errors(qwen25, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    op = DataTailorFilter()  # DataFlow-MM's default model, not on this machine
    problems = op.missing_models()
    assert len(problems) == 1 and problems[0].startswith("model_name='Qwen/Qwen2-VL-7B-Instruct': vision-language")
    with pytest.raises(ModelNotFoundError, match="hf download Qwen/Qwen2-VL-7B-Instruct"):
        op.run(FileStorage(photos, cache_path=tmp_path / "c1").step())
    assert DataTailorFilter(model_name=str(qwen25)).missing_models() == []
    with pytest.raises(ValueError, match=r"extract_layer=9 is out of range: .* has 3 layers, .* \(indices -4 to 3\)"):
        DataTailorFilter(model_name=str(qwen25), extract_layer=9, device="cpu").vlm()
    for bad in ({"keep_ratio": 1.5}, {"batch_size": 0}, {"torch_dtype": "int8"}, {"extract_layer": 1.5}):
        with pytest.raises(ValueError):
            DataTailorFilter(**bad)
    with pytest.raises(KeyError, match="'prompt' is not a column"):
        DataTailorFilter(str(qwen25), device="cpu").run(
            FileStorage(photos, cache_path=tmp_path / "c2").step(), input_question_key="prompt"
        )


def test_datatailor_survives_the_bad_input_suite(qwen25, tmp_path):
    from bad_inputs import EXPECTED_REASON
    from test_reliability import suite_inputs  # the suite every image operator runs, as its two input files

    op = DataTailorFilter(model_name=str(qwen25), keep_ratio=1.0, batch_size=8, device="cpu")
    seen, details = {}, {}
    for k, (src, cache_type) in enumerate(suite_inputs(tmp_path)):
        storage = FileStorage(src, cache_path=tmp_path / f"cache{k}", file_name_prefix="r", cache_type=cache_type)
        op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key="caption")
        meta = storage.manifest(1)
        check_accounting("DataTailorFilter", meta["rows_in"], meta["rows_out"], meta["rows_rejected"])
        out, rejected = storage.step().read(), storage.read_rejected(1)
        assert out[list(METRICS)].notna().all().all()
        seen.update(dict.fromkeys(out["name"]))
        seen.update(zip(rejected["name"], rejected["reason"]) if len(rejected) else {})
        details.update(zip(rejected["name"], rejected["detail"]) if len(rejected) else {})
    # Qwen-VL's image processor refuses an aspect ratio over 200: the 20000 x 10 strip has no features.
    assert seen == {**EXPECTED_REASON, "strip_20000x10": "feature_failed"}
    assert details["strip_20000x10"] == "ValueError: absolute aspect ratio must be smaller than 200, got 2000.0"
