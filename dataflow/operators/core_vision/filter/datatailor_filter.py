"""DataTailorFilter: keep the ``keep_ratio`` of image-text samples DataTailor scores highest (DataFlow-MM)."""

from __future__ import annotations

import numpy as np

from dataflow.core.docs import Example
from dataflow.core.images import image_column
from dataflow.core.operator import OperatorABC
from dataflow.core.registry import OPERATOR_REGISTRY
from dataflow.core.row_filter import Verdict
from dataflow.log import get_logger, progress
from dataflow.media import DEFAULT_MAX_PIXELS, ImageLoadError
from dataflow.operators.core_vision.filter.clipscore_filter import check_ratio, joined_text

logger = get_logger("dataflow.datatailor")

METRICS = ("informativeness", "uniqueness", "representativeness")
DISTANCE_BLOCK = 1 << 24  # pairwise distances held at once while scoring uniqueness (128 MB of float64)
LARGE_LINKAGE = 20_000  # rows above which the n^2/2 distances of average linkage get a memory warning


# ------------------------------------------------------------------------------------------ DataTailor's metrics
def singular_value_entropy(singular_values: np.ndarray, n_tokens: int) -> float:
    """Informativeness (DataTailor eq. 2): the entropy of the normalised singular values of a sample's token
    features, values <= 1e-8 left out; 0 for fewer than two tokens or no value left."""
    if n_tokens < 2:
        return 0.0
    values = np.asarray(singular_values, dtype=np.float64)
    values = values[values > 1e-8]
    if not len(values):
        return 0.0
    p = values / values.sum()
    return float(-np.sum(p * np.log(p + 1e-10)))


def cluster_count(n: int, clustering_threshold: float) -> int:
    """DataFlow-MM's number of clusters: ``max(2, int(n * threshold))``, at most ``n // 2``."""
    return min(max(2, int(n * clustering_threshold)), n // 2)


def cluster_labels(features: np.ndarray, clustering_threshold: float) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine distance, cut at :func:`cluster_count` clusters
    (what scikit-learn's ``AgglomerativeClustering(metric="cosine", linkage="average")`` computes: scipy's
    linkage, then the first ``n - k`` merges); every row in cluster 0 when there are two rows or fewer."""
    n = len(features)
    if n <= 2:
        return np.zeros(n, dtype=int)
    from scipy.cluster.hierarchy import cut_tree, linkage

    if n > LARGE_LINKAGE:
        logger.warning(
            "DataTailor clustering of %d rows holds their %.1f GB of pairwise distances (average linkage)",
            n,
            n * (n - 1) / 2 * 8 / 1e9,
        )
    tree = linkage(np.asarray(features, dtype=np.float64), method="average", metric="cosine")
    return cut_tree(tree, n_clusters=cluster_count(n, clustering_threshold)).ravel().astype(int)


def _weights(informativeness: np.ndarray) -> np.ndarray:
    """A cluster's informativeness as weights summing to 1 (equal weights when it sums to 0)."""
    total = informativeness.sum()
    return informativeness / total if total > 0 else np.full(len(informativeness), 1.0 / len(informativeness))


def uniqueness_scores(features: np.ndarray, labels: np.ndarray, informativeness: np.ndarray) -> np.ndarray:
    """Uniqueness (DataTailor eq. 4): per sample, the Euclidean distances to the other samples of its cluster
    weighted by their share of the cluster's informativeness; 0 alone in a cluster. Distances are taken
    block by block (memory O(block x cluster))."""
    from scipy.spatial.distance import cdist

    out = np.zeros(len(features))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= 1:
            continue
        points = np.asarray(features[members], dtype=np.float64)
        weights = _weights(informativeness[members])
        rows = max(1, DISTANCE_BLOCK // len(members))
        for lo in range(0, len(members), rows):
            # a sample's distance to itself is 0, so it adds nothing to its own sum
            out[members[lo : lo + rows]] = cdist(points[lo : lo + rows], points) @ weights
    return out


def representativeness_scores(features: np.ndarray, labels: np.ndarray, informativeness: np.ndarray) -> np.ndarray:
    """Representativeness (DataTailor eqs. 5-6, as DataFlow-MM computes them): a cluster's association
    ``tau = sum(exp(cos(centroid, other centroids))) / (K - 1)``, its own entry counted as exp(0) = 1, times
    each sample's share of its cluster's informativeness; 1 for every sample when there is one cluster."""
    clusters = np.unique(labels)
    k = len(clusters)
    if k <= 1:
        return np.ones(len(features))
    centroids = np.stack([np.asarray(features[labels == c], dtype=np.float64).mean(axis=0) for c in clusters])
    centroids = centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-8)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit = np.divide(centroids, norms, out=np.zeros_like(centroids), where=norms > 0)
    similarity = unit @ unit.T
    out = np.zeros(len(features))
    for i, c in enumerate(clusters):
        others = similarity[i].copy()
        others[i] = 0.0
        tau = np.exp(others).sum() / (k - 1)
        members = np.flatnonzero(labels == c)
        out[members] = tau * _weights(informativeness[members])
    return out


def collaborative_scores(informativeness, uniqueness, representativeness) -> np.ndarray:
    """DataTailor's selection score: 1/3 of the informativeness rank plus 2/3 of the mean of the uniqueness
    and representativeness ranks, each rank divided by the number of samples."""
    n = len(informativeness)
    metrics = (informativeness, uniqueness, representativeness)
    inf, uni, rep = (np.argsort(np.argsort(np.asarray(v))) / n for v in metrics)
    return (1 / 3) * inf + (2 / 3) * (uni + rep) / 2


def selected(scores: np.ndarray, keep_ratio: float) -> np.ndarray:
    """Positions of the ``max(1, int(n * keep_ratio))`` highest scores, in row order."""
    n_select = max(1, int(len(scores) * keep_ratio))
    return np.sort(np.argsort(scores)[-n_select:])


# ------------------------------------------------------------------------------------------ the operator
@OPERATOR_REGISTRY.register()
class DataTailorFilter(OperatorABC):
    """Keeps the share ``keep_ratio`` of image-question-answer samples that DataTailor's three metrics rank
    highest, from a vision-language model's hidden states (DataFlow-MM's filter, after the DataTailor
    paper).

    Each sample (the image, then the question and the answer joined as they are) goes through the model's
    chat template as one user turn; the hidden states of layer ``extract_layer`` (``-2``: the penultimate)
    over all its tokens, image and text, are its token features, and their mean is its sample feature.

    - **informativeness**: the entropy of the normalised singular values of the token features;
    - **uniqueness**: average-linkage clustering of the sample features on cosine distance into
      ``min(max(2, int(n * clustering_threshold)), n // 2)`` clusters; a sample's Euclidean distances to
      the rest of its cluster, weighted by their share of the cluster's informativeness;
    - **representativeness**: the cluster's mean ``exp`` cosine similarity to the other clusters'
      centroids, times the sample's share of its cluster's informativeness.

    The selection score is 1/3 of the informativeness rank plus 2/3 of the mean of the other two ranks;
    the ``max(1, int(n * keep_ratio))`` best are kept, in their order. Every scored row, kept or rejected,
    carries the three metrics (columns ``informativeness``, ``uniqueness``, ``representativeness``); the
    others are rejected with reason ``low_datatailor_score`` and their score and rank in the detail.
    Rows without features are rejected with why and left out of the metrics: the image loader's reason
    for an unreadable or missing image (``missing``, ``truncated``...), ``feature_failed`` when the model
    raised on that sample alone (a batch that fails runs again one sample at a time).

    Average linkage needs every pairwise distance: memory grows as n^2 / 2 x 8 bytes (400 MB at 10,000
    rows, 10 GB at 50,000), as in DataFlow-MM; split larger sets.

    Differences from DataFlow-MM:

    - the model class is the one its ``config.json`` names (``AutoModelForImageTextToText``), so the
      default ``Qwen/Qwen2-VL-7B-Instruct`` loads as Qwen2-VL (DataFlow-MM loads every model as Qwen2.5-VL);
      without torchvision, Qwen-VL processors are built from their image processor and tokenizer;
    - the model loads on first ``run`` and stays loaded, from a local folder, the local Hugging Face cache,
      or a first-use download where allowed; ``torch_dtype="auto"`` is bfloat16 on a GPU that has it
      (DataFlow-MM: float16, which overflows in Qwen2 models), else float16, and float32 on the cpu;
    - samples run in batches of ``batch_size`` with padding masked out (DataFlow-MM: one at a time, its
      ``batch_size`` unused); each sample's singular values are taken at once and only its mean feature
      is kept (DataFlow-MM keeps every token feature of every sample until the end);
    - clustering is scipy's (the same linkage scikit-learn calls, cut the same way), so scikit-learn is
      not needed; uniqueness distances are taken in blocks;
    - unreadable images, rows without an image and samples the model fails on are rejected with their
      reason (DataFlow-MM drops them without a record); a null question or answer counts as empty text;
      images are turned upright by their EXIF orientation; ``run`` returns None, as DataFlow-MM.

    Parameters:
        model_name: a local folder holding a vision-language model (save_pretrained's files, with its
            processor and chat template) or a Hugging Face repo id (the local cache, or downloaded on first
            use where allowed)
        clustering_threshold: clusters per sample: ``int(n * clustering_threshold)`` clusters (at least 2,
            at most ``n // 2``)
        extract_layer: index into the model's hidden states (0 = the embeddings, -1 = the last layer's
            output, -2 = the penultimate layer's)
        keep_ratio: share of the scored rows kept (at least one), from the best score down (0 to 1)
        batch_size: samples per model forward pass
        device: ``"cuda"``, ``"cpu"`` or None (cuda when available); cuda without a GPU warns and uses the cpu
        torch_dtype: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``
        max_side: longest side, in pixels, of the images given to the processor (larger ones are shrunk
            first, aspect kept); None gives them at full size, as DataFlow-MM, and leaves resizing to the
            processor (Qwen-VL's keeps at most about 12.8 million pixels: thousands of tokens a photo)
        input_image_key: column holding the image: a path (relative to the input file's folder), bytes,
            or a ``{bytes, path}`` dict
        input_question_key: column holding the question, put before the answer; None = no question
        input_answer_key: column holding the answer
    """

    description = (
        "Keeps the top keep_ratio of image-text samples by DataTailor's informativeness, uniqueness and "
        "representativeness, from a vision-language model's hidden states."
    )
    description_zh = (
        "基于视觉语言模型隐藏层特征计算 DataTailor 的信息量、独特性与代表性指标，"
        "保留综合得分最高的 keep_ratio 比例样本。"
    )
    execution = "table"  # clusters and ranks over all rows
    loads_model = True
    model_params = {"model_name": "vlm"}

    example = Example.on_example_data(
        "DataTailorFilter",
        """
        op = DataTailorFilter(model_name="Qwen/Qwen2.5-VL-3B-Instruct", keep_ratio=0.8, max_side=448)
        op.run(storage.step(), input_image_key="image", input_question_key=None, input_answer_key="caption")
        """,
        not_run="needs a local vision-language model (download it once with "
        "`hf download Qwen/Qwen2.5-VL-3B-Instruct` on a machine with network access)",
    )

    def __init__(
        self,
        model_name: str = "Qwen/Qwen2-VL-7B-Instruct",
        clustering_threshold: float = 0.1,
        extract_layer: int = -2,
        keep_ratio: float = 0.8,
        batch_size: int = 4,
        device: str | None = None,
        torch_dtype: str = "auto",
        max_side: int | None = None,
    ):
        from dataflow.models.vlm import DTYPES
        from dataflow.serving.base import check_max_side

        if isinstance(clustering_threshold, bool) or not isinstance(clustering_threshold, (int, float)):
            raise ValueError(f"clustering_threshold must be a number, got {clustering_threshold!r}")
        if isinstance(extract_layer, bool) or not isinstance(extract_layer, int):
            raise ValueError(f"extract_layer must be an integer index into the hidden states, got {extract_layer!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if torch_dtype not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {DTYPES}, got {torch_dtype!r}")
        check_max_side(max_side)
        self.model_name = model_name
        self.clustering_threshold = float(clustering_threshold)
        self.extract_layer = extract_layer
        self.keep_ratio = check_ratio(keep_ratio)
        self.batch_size = batch_size
        self.device = device
        self.torch_dtype = torch_dtype
        self.max_side = max_side
        self._vlm = None

    def vlm(self):
        """The loaded model and processor (:class:`dataflow.models.vlm.VLMFeatures`), loaded on first use."""
        if self._vlm is None:
            from dataflow.models.vlm import load_vlm_features

            vlm = load_vlm_features(self.model_name, self.device, self.torch_dtype)
            vlm.check_layer(self.extract_layer)
            self._vlm = vlm
        return self._vlm

    def __getstate__(self):  # a pickled operator (a Ray actor's copy) loads its own model
        state = dict(self.__dict__)
        state["_vlm"] = None
        return state

    def features(self, images: list, texts: list[str]) -> list[tuple[float, np.ndarray] | tuple[str, str]]:
        """Per sample, ``(informativeness, mean feature)``, or ``("feature_failed", detail)``."""
        import torch

        vlm = self.vlm()

        def reduce(states: torch.Tensor) -> tuple[float, np.ndarray]:
            values = torch.linalg.svdvals(states).cpu().numpy()
            return singular_value_entropy(values, states.shape[0]), states.mean(dim=0).cpu().numpy()

        try:
            return [reduce(s) for s in vlm.token_states(images, texts, self.extract_layer)]
        except Exception as exc:  # out of memory, a sample the processor refuses: find the sample(s) at fault
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(images) > 1:
                logger.warning("DataTailorFilter: a batch of %d failed (%s); one sample at a time", len(images), exc)
                return [out for i in range(len(images)) for out in self.features(images[i : i + 1], texts[i : i + 1])]
            return [("feature_failed", f"{type(exc).__name__}: {exc}"[:500])]

    def run(
        self,
        storage,
        input_image_key: str = "image",
        input_question_key: str | None = "question",
        input_answer_key: str = "answer",
    ) -> None:
        from dataflow.serving.base import load_for_model

        name = type(self).__name__
        df = storage.read("dataframe")
        sources = image_column(df, input_image_key, name)
        for key in (input_question_key, input_answer_key):
            if key and key not in df.columns:
                raise KeyError(f"{name}: {key!r} is not a column (columns: {', '.join(map(str, df.columns))})")
        n = len(df)
        questions = df[input_question_key].tolist() if input_question_key else [None] * n
        texts = [joined_text(q, a) for q, a in zip(questions, df[input_answer_key].tolist())]
        reasons = np.full(n, None, dtype=object)
        details = np.full(n, None, dtype=object)
        informativeness = np.full(n, np.nan)
        vectors: dict[int, np.ndarray] = {}
        base_dir = storage.image_base
        bar = progress(total=n, desc=name, unit="img")
        try:
            for lo in range(0, n, self.batch_size):
                batch, images = [], []
                for i in range(lo, min(n, lo + self.batch_size)):
                    try:
                        images.append(load_for_model(sources[i], base_dir, self.max_side, DEFAULT_MAX_PIXELS))
                        batch.append(i)
                    except ImageLoadError as exc:
                        reasons[i], details[i] = exc.reason, exc.detail or exc.reason
                if batch:
                    for i, out in zip(batch, self.features(images, [texts[i] for i in batch])):
                        if isinstance(out[0], str):
                            reasons[i], details[i] = out
                        else:
                            informativeness[i], vectors[i] = out
                bar.update(min(n, lo + self.batch_size) - lo)
        finally:
            bar.close()

        scored = np.array(sorted(vectors), dtype=int)
        metrics = {m: np.full(n, np.nan) for m in METRICS}
        verdict = Verdict(reasons, details)
        if len(scored):
            features = np.stack([vectors[i] for i in scored]).astype(np.float32)
            inf = informativeness[scored]
            labels = cluster_labels(features, self.clustering_threshold)
            uni = uniqueness_scores(features, labels, inf)
            rep = representativeness_scores(features, labels, inf)
            for metric, values in zip(METRICS, (inf, uni, rep)):
                metrics[metric][scored] = values
            scores = collaborative_scores(inf, uni, rep)
            keep = np.zeros(n, dtype=bool)
            keep[scored[selected(scores, self.keep_ratio)]] = True
            rank = np.empty(len(scored), dtype=int)  # 1 = best, in the order `selected` keeps them
            rank[np.argsort(scores)[::-1]] = np.arange(1, len(scored) + 1)
            position = {int(row): k for k, row in enumerate(scored)}
            kept_count = int(keep.sum())
            verdict.drop(
                np.isin(np.arange(n), scored) & ~keep,
                "low_datatailor_score",
                lambda hit: [
                    f"DataTailor score {scores[position[int(i)]]:.4g} ranks {rank[position[int(i)]]} of "
                    f"{len(scored)}; keep_ratio {self.keep_ratio} keeps {kept_count}"
                    for i in hit
                ],
            )
        for metric in METRICS:
            df[metric] = metrics[metric]
        logger.info("%s: %d of %d row(s) scored, %d kept", name, len(scored), n, int(verdict.kept.sum()))
        out, rejected = verdict.split(df)
        storage.write(out, rejected=rejected)
