"""Offline retrieval quality of embedding spaces on a labelled catalog (Fashion Product Images layout).

No Django here. A *space* is any function raw encoder vectors -> served unit vectors (identity, PCA, a trained
head). Every space is measured on the same fixed, seeded split: query products (held out) search the index
products, and relevance is "same articleType", "same baseColour" or both. Distorted copies of the query
products' photos (what a shopper's photo does to a picture) search the whole catalog for the product itself.
Each space's Annoy file size and top-25 query time come from a real build with :func:`index_build`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from gallery.catalog import styles_read
from lab.heads import fit_pca, train_catalog_head
from recommender.encoders import Encoder
from recommender.index import LoadedIndex, index_build
from recommender.pipeline import ImageItem, embed_stream
from recommender.projection import Projection

logger = logging.getLogger(__name__)

SPLIT_SEED = 8
QUERY_FRACTION = 0.2
# Distortion seeds: one for the copies searched in the evaluation, another for the copies a head trains on,
# so a head never sees the very photos it is measured with.
EVAL_DISTORT_SEED = 1
TRAIN_DISTORT_SEED = 2
JPEG_QUALITY = 60
TOP_N = 25  # what the gallery shows per click
ANNOY_TREES = 40

Transform = Callable[[np.ndarray], np.ndarray]
Source = Path | bytes


def identity(vectors: np.ndarray) -> np.ndarray:
    """The raw space: the encoder's own unit vectors."""
    return np.asarray(vectors, dtype=np.float32)


# --- Catalog and split ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledCatalog:
    """Labelled products aligned row by row: ids, articleType, baseColour and each image (path or bytes).

    ``images`` may be empty where the caller embeds and distorts the images itself.
    """

    ids: np.ndarray
    article_types: np.ndarray
    colours: np.ndarray
    images: tuple[Source, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> LabelledCatalog:
        return LabelledCatalog(
            ids=self.ids[rows],
            article_types=self.article_types[rows],
            colours=self.colours[rows],
            images=tuple(self.images[int(i)] for i in rows) if self.images else (),
        )


def combined_labels(article_types: Sequence[str], colours: Sequence[str]) -> np.ndarray:
    """ "articleType|baseColour" per product: the fine class a head is trained on."""
    return np.array([f"{t}|{c}" for t, c in zip(article_types, colours, strict=True)], dtype=str)


def catalog_read(directory: Path) -> LabelledCatalog:
    """The valid rows of ``directory/styles.csv`` whose ``images/<id>.jpg`` exists."""
    ids, types, colours, images = [], [], [], []
    for row in styles_read(Path(directory) / "styles.csv"):
        if not hasattr(row, "fields"):
            continue
        image = Path(directory) / "images" / f"{row.id}.jpg"
        if not image.is_file():
            continue
        ids.append(row.id)
        types.append(str(row.fields["article_type"]))
        colours.append(str(row.fields["base_colour"]))
        images.append(image)
    return LabelledCatalog(
        ids=np.asarray(ids, dtype=np.int64),
        article_types=np.asarray(types, dtype=str),
        colours=np.asarray(colours, dtype=str),
        images=tuple(images),
    )


@dataclass(frozen=True)
class Split:
    """Row positions (ascending) of the index products and of the held-out query products."""

    index: np.ndarray
    query: np.ndarray


def _rank_key(seed: int, product_id: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{product_id}".encode(), digest_size=8).digest()


def split_stratified(
    *, ids: Sequence[int], strata: Sequence[str], query_fraction: float = QUERY_FRACTION, seed: int = SPLIT_SEED
) -> Split:
    """Hold out ``query_fraction`` of each stratum (at least one, never all; singletons stay in the index).

    Which products are held out depends only on the seed, the ids and their strata (a keyed hash of each id
    ranks a stratum's members; row order plays no part), so every run and every process gets the same split.
    """
    if not 0.0 < query_fraction < 1.0:
        raise ValueError(f"query_fraction must be between 0 and 1, got {query_fraction}")
    ids = np.asarray(ids, dtype=np.int64)
    strata = np.asarray(strata, dtype=str)
    if ids.shape != strata.shape:
        raise ValueError("ids and strata must have the same length")
    query = np.zeros(len(ids), dtype=bool)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        if len(members) < 2:
            continue
        n_query = min(len(members) - 1, max(1, round(len(members) * query_fraction)))
        ranked = sorted(members, key=lambda row: _rank_key(seed, int(ids[row])))
        query[ranked[:n_query]] = True
    return Split(index=np.flatnonzero(~query), query=np.flatnonzero(query))


# --- Distorted copies -------------------------------------------------------------------------------------------


def distort_photo(image: Image.Image, *, rng: np.random.Generator, jpeg_quality: int = JPEG_QUALITY) -> bytes:
    """A shopper's-photo version of a product picture as JPEG bytes: crop, flip, rescale, colour jitter, JPEG.

    Random crop of 60-95% of the area (aspect 3:4..4:3), horizontal flip half the time, longer side scaled
    to 0.4-1.2x, brightness/contrast/saturation each x0.75-1.25, then re-compressed at ``jpeg_quality``.
    """
    img = image.convert("RGB")
    width, height = img.size
    area = rng.uniform(0.6, 0.95) * width * height
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    crop_w = min(width, max(1, round(np.sqrt(area * aspect))))
    crop_h = min(height, max(1, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    img = img.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.4, 1.2)
    img = img.resize((max(16, round(crop_w * scale)), max(16, round(crop_h * scale))), Image.Resampling.BILINEAR)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.75, 1.25))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=jpeg_quality)
    return out.getvalue()


def distortion_rng(*, seed: int, product_id: int, copy: int) -> np.random.Generator:
    """The generator for one copy of one product: independent of order, batch and which others are drawn."""
    return np.random.default_rng([seed, int(product_id), copy])


def _source_bytes(source: Source) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


# --- Embedding ---------------------------------------------------------------------------------------------------


def embed_sources(
    *,
    encoder: Encoder,
    sources: Sequence[Source],
    batch_size: int = 32,
    decode_workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed image files or bytes; returns (float32 (N, dim) rows, bool (N,) ok). Unreadable rows are zero."""
    items = [ImageItem(key=i, source=source) for i, source in enumerate(sources)]
    vectors = np.zeros((len(items), encoder.dim), dtype=np.float32)
    ok = np.zeros(len(items), dtype=bool)
    for batch in embed_stream(items, encoder=encoder, batch_size=batch_size, decode_workers=decode_workers):
        for result in batch:
            if result.vector is not None:
                vectors[result.item.key] = result.vector
                ok[result.item.key] = True
            else:
                logger.warning("Image %d not embedded: %s", result.item.key, result.error)
        if progress is not None:
            progress(len(batch))
    return vectors, ok


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def embed_distorted(
    *,
    encoder: Encoder,
    sources: Sequence[Source],
    keys: Sequence[int],
    seed: int,
    copies: int = 1,
    jpeg_quality: int = JPEG_QUALITY,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``copies`` distorted copies of each source; returns (rows, position in ``sources`` of each row).

    Copy ``c`` of the source keyed ``k`` is drawn from distortion_rng(seed, k, c), so it is reproducible.
    Sources that cannot be read are left out.
    """
    if len(keys) != len(sources):
        raise ValueError("keys and sources must have the same length")
    jobs = [(position, copy) for position in range(len(sources)) for copy in range(copies)]
    rows: list[np.ndarray] = []
    of: list[int] = []
    # A few hundred JPEGs at a time: memory stays flat on a catalog of any size.
    for chunk in _chunks(len(jobs), 256):
        data, owners = [], []
        for job in chunk:
            position, copy = jobs[job]
            try:
                with Image.open(io.BytesIO(_source_bytes(sources[position]))) as img:
                    img.load()
                    rng = distortion_rng(seed=seed, product_id=int(keys[position]), copy=copy)
                    data.append(distort_photo(img, rng=rng, jpeg_quality=jpeg_quality))
            except (OSError, ValueError) as exc:
                logger.warning("Cannot distort image %s: %s", keys[position], exc)
                continue
            owners.append(position)
        vectors, ok = embed_sources(encoder=encoder, sources=data, batch_size=batch_size, progress=progress)
        rows.append(vectors[ok])
        of.extend(np.asarray(owners, dtype=np.int64)[ok].tolist())
    matrix = np.concatenate(rows) if rows else np.zeros((0, encoder.dim), dtype=np.float32)
    return matrix, np.asarray(of, dtype=np.int64)


# --- Metrics ------------------------------------------------------------------------------------------------------


def top_k(queries: np.ndarray, items: np.ndarray, *, k: int) -> np.ndarray:
    """Row positions in ``items`` of each query's ``k`` highest cosines (exact), best first; ties by position."""
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(items, dtype=np.float32).T
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def precision_at_k(relevant: np.ndarray) -> float:
    """Mean over queries of the share of relevant results; ``relevant`` is bool (queries, K) in rank order."""
    relevant = np.asarray(relevant, dtype=bool)
    return float(relevant.mean()) if relevant.size else 0.0


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """AP@K per query: sum over relevant ranks r of precision@r, divided by min(K, relevant items that exist).

    ``relevant`` is bool (queries, K) in rank order; ``n_relevant`` (queries,) counts the relevant items in
    the searched collection. A query with none gets NaN (it cannot be ranked well or badly).
    """
    relevant = np.asarray(relevant, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    k = relevant.shape[1]
    hits = np.cumsum(relevant, axis=1)
    precision_at_rank = hits / np.arange(1, k + 1)
    summed = (precision_at_rank * relevant).sum(axis=1)
    denominator = np.minimum(k, n_relevant)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, summed / denominator, np.nan)


def mean_average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> float:
    """mAP@K over the queries that have at least one relevant item."""
    ap = average_precision_at_k(relevant, n_relevant)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


def recall_at_k(retrieved: np.ndarray, targets: np.ndarray, *, k: int | None = None) -> float:
    """Share of queries whose own target appears in their first ``k`` results (all columns when None)."""
    retrieved = np.asarray(retrieved)
    if k is not None:
        retrieved = retrieved[:, :k]
    if len(retrieved) == 0:
        return 0.0
    return float((retrieved == np.asarray(targets)[:, None]).any(axis=1).mean())


def ceiling_precision(labels: np.ndarray, split: Split, *, k: int) -> float:
    """The best precision@k any ranking can reach: relevant index products are often fewer than k."""
    values, counts = np.unique(labels[split.index], return_counts=True)
    available = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return float(np.mean([min(k, available.get(label, 0)) / k for label in labels[split.query]]))


def chance_precision(labels: np.ndarray, split: Split) -> float:
    """Expected precision of a random ranking: the mean share of index products sharing a query's label."""
    index_labels = labels[split.index]
    values, counts = np.unique(index_labels, return_counts=True)
    share = dict(zip(values.tolist(), (counts / len(index_labels)).tolist(), strict=True))
    return float(np.mean([share.get(label, 0.0) for label in labels[split.query]]))


# --- The harness -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    """Raw vectors of a catalog, its split, distorted query copies and (for training) distorted index copies."""

    catalog: LabelledCatalog
    vectors: np.ndarray
    split: Split
    distorted: np.ndarray
    distorted_of: np.ndarray
    train_augmented: np.ndarray
    train_augmented_of: np.ndarray
    encoder_id: str = ""
    split_seed: int = SPLIT_SEED

    @property
    def relevances(self) -> dict[str, np.ndarray]:
        c = self.catalog
        return {
            "type": c.article_types,
            "colour": c.colours,
            "type+colour": combined_labels(c.article_types, c.colours),
        }


@dataclass
class SpaceResult:
    name: str
    dim: int
    metrics: dict[str, float]
    index_bytes: int
    query_ms_median: float
    annoy_recall: float
    notes: dict[str, Any] = field(default_factory=dict)


def prepare_eval_set(
    *,
    catalog: LabelledCatalog,
    encoder: Encoder,
    split_seed: int = SPLIT_SEED,
    query_fraction: float = QUERY_FRACTION,
    train_copies: int = 1,
    train_sample: int | None = None,
    recall_sample: int | None = None,
    decode_workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> EvalSet:
    """Embed a catalog, split it (stratified by articleType) and embed the distorted copies.

    ``recall_sample`` caps how many query products get a distorted copy to search with; ``train_sample``
    caps how many index products get ``train_copies`` copies for head training (seeded choices).
    """
    vectors, ok = embed_sources(
        encoder=encoder, sources=catalog.images, decode_workers=decode_workers, progress=progress
    )
    if not ok.all():
        catalog, vectors = catalog.subset(np.flatnonzero(ok)), vectors[ok]
    return eval_set_from_vectors(
        catalog=catalog,
        vectors=vectors,
        encoder=encoder,
        split_seed=split_seed,
        query_fraction=query_fraction,
        train_copies=train_copies,
        train_sample=train_sample,
        recall_sample=recall_sample,
        progress=progress,
    )


def _sample(rows: np.ndarray, limit: int | None, *, seed: int) -> np.ndarray:
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


def eval_set_from_vectors(
    *,
    catalog: LabelledCatalog,
    vectors: np.ndarray,
    encoder: Encoder | None,
    split_seed: int = SPLIT_SEED,
    query_fraction: float = QUERY_FRACTION,
    train_copies: int = 1,
    train_sample: int | None = None,
    recall_sample: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalSet:
    """As prepare_eval_set with the catalog's raw vectors given; without an encoder no copies are made."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(catalog):
        raise ValueError("vectors must hold one row per catalog product")
    split = split_stratified(
        ids=catalog.ids, strata=catalog.article_types, query_fraction=query_fraction, seed=split_seed
    )
    dim = vectors.shape[1]
    empty = (np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.int64))
    distorted, distorted_of = empty
    augmented, augmented_of = empty
    if encoder is not None:

        def copies_of(rows: np.ndarray, *, seed: int, copies: int) -> tuple[np.ndarray, np.ndarray]:
            """Distorted copies of the catalog's ``rows`` and the row each copy belongs to."""
            vectors, positions = embed_distorted(
                encoder=encoder,
                sources=[catalog.images[int(r)] for r in rows],
                keys=catalog.ids[rows].tolist(),
                seed=seed,
                copies=copies,
                progress=progress,
            )
            return vectors, rows[positions]

        queries = _sample(split.query, recall_sample, seed=split_seed)
        distorted, distorted_of = copies_of(queries, seed=EVAL_DISTORT_SEED, copies=1)
        if train_copies:
            train = _sample(split.index, train_sample, seed=split_seed + 1)
            augmented, augmented_of = copies_of(train, seed=TRAIN_DISTORT_SEED, copies=train_copies)
    return EvalSet(
        catalog=catalog,
        vectors=vectors,
        split=split,
        distorted=distorted,
        distorted_of=distorted_of,
        train_augmented=augmented,
        train_augmented_of=augmented_of,
        encoder_id=encoder.id if encoder is not None else "",
        split_seed=split_seed,
    )


def annoy_cost(
    *, vectors: np.ndarray, queries: np.ndarray, n: int = TOP_N, n_trees: int = ANNOY_TREES, repeats: int = 3
) -> tuple[int, float, np.ndarray]:
    """Build an Annoy index of ``vectors`` in a temp dir: (file bytes, median ms per top-``n`` query, results)."""
    with tempfile.TemporaryDirectory(prefix="eval-annoy-") as directory:
        meta = index_build(
            directory=Path(directory),
            vectors=vectors,
            product_ids=np.arange(len(vectors)),
            embedding_ids=np.arange(1, len(vectors) + 1),
            space="evaluation",
            n_trees=n_trees,
            search_k=-1,
            watermark=0,
        )
        loaded = LoadedIndex(Path(directory), meta.version)
        results = np.array([[h.product_id for h in loaded.query(q, n=n)] for q in queries]).reshape(len(queries), -1)
        timings = []
        for _ in range(repeats):
            for q in queries:
                started = time.perf_counter()
                loaded.query(q, n=n)
                timings.append(time.perf_counter() - started)
        return meta.file_bytes, statistics.median(timings) * 1000.0 if timings else 0.0, results


def evaluate_space(
    *, name: str, transform: Transform, data: EvalSet, k: int = 10, n_trees: int = ANNOY_TREES
) -> SpaceResult:
    """Every metric of one space on ``data``: exact top-k quality, distorted-copy recall, Annoy cost."""
    served = np.asarray(transform(data.vectors), dtype=np.float32)
    split = data.split
    index_vectors, query_vectors = served[split.index], served[split.query]
    ranked = top_k(query_vectors, index_vectors, k=k)
    metrics: dict[str, float] = {}
    for relevance, labels in data.relevances.items():
        query_labels, index_labels = labels[split.query], labels[split.index]
        relevant = index_labels[ranked] == query_labels[:, None]
        values, counts = np.unique(index_labels, return_counts=True)
        available = dict(zip(values.tolist(), counts.tolist(), strict=True))
        n_relevant = np.array([available.get(label, 0) for label in query_labels])
        metrics[f"p@{k} {relevance}"] = precision_at_k(relevant)
        metrics[f"map@{k} {relevance}"] = mean_average_precision_at_k(relevant, n_relevant)
    if len(data.distorted):
        copies = np.asarray(transform(data.distorted), dtype=np.float32)
        found = top_k(copies, served, k=k)
        metrics["copy r@1"] = recall_at_k(found, data.distorted_of, k=1)
        metrics[f"copy r@{k}"] = recall_at_k(found, data.distorted_of, k=k)
    size, query_ms, approx = annoy_cost(vectors=served, queries=query_vectors, n=TOP_N, n_trees=n_trees)
    exact = top_k(query_vectors, served, k=TOP_N)
    overlap = np.mean([len(set(a.tolist()) & set(e.tolist())) / e.size for a, e in zip(approx, exact, strict=True)])
    return SpaceResult(
        name=name,
        dim=served.shape[1],
        metrics=metrics,
        index_bytes=size,
        query_ms_median=query_ms,
        annoy_recall=float(overlap),
    )


def evaluate_spaces(
    spaces: Mapping[str, Transform], *, data: EvalSet, k: int = 10, n_trees: int = ANNOY_TREES
) -> list[SpaceResult]:
    """evaluate_space for each named space, in order."""
    return [evaluate_space(name=n, transform=t, data=data, k=k, n_trees=n_trees) for n, t in spaces.items()]


def results_table(results: Sequence[SpaceResult]) -> str:
    """A fixed-width text table: one row per space, one column per metric, then index size and query time."""
    if not results:
        return "(no spaces)"
    keys = list(results[0].metrics)
    header = ["space", "dim", *keys, "ann MB", "ann ms", "ann@25"]
    rows = [
        [
            r.name,
            str(r.dim),
            *(f"{r.metrics.get(key, float('nan')):.3f}" for key in keys),
            f"{r.index_bytes / 1e6:.2f}",
            f"{r.query_ms_median:.3f}",
            f"{r.annoy_recall:.3f}",
        ]
        for r in results
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def eval_context(data: EvalSet, *, k: int) -> dict[str, Any]:
    """What the numbers were measured on: sizes, seeds, chance levels."""
    return {
        "encoder_id": data.encoder_id,
        "products": len(data.catalog),
        "index_products": len(data.split.index),
        "query_products": len(data.split.query),
        "distorted_queries": len(data.distorted),
        "train_augmented": len(data.train_augmented),
        "k": k,
        "split_seed": data.split_seed,
        "eval_distort_seed": EVAL_DISTORT_SEED,
        "jpeg_quality": JPEG_QUALITY,
        "chance": {name: chance_precision(labels, data.split) for name, labels in data.relevances.items()},
        "ceiling": {name: ceiling_precision(labels, data.split, k=k) for name, labels in data.relevances.items()},
    }


def results_json(results: Sequence[SpaceResult], *, context: Mapping[str, Any]) -> dict[str, Any]:
    return {"context": dict(context), "spaces": [asdict(r) for r in results]}


def standard_spaces(
    data: EvalSet,
    *,
    dim: int = 256,
    epochs: int = 30,
    seed: int = 0,
    train_head: bool = True,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[dict[str, Transform], dict[str, Projection]]:
    """Raw, PCA-``dim`` whitened and not, and a triplet head, all fitted on the index products only.

    Returns the spaces by name and the fitted projections by the same names.
    """
    rows = data.split.index
    train = data.vectors[rows]
    projections = {
        f"pca{dim}-whiten": fit_pca(train, dim=dim, whiten=True, seed=seed, encoder_id=data.encoder_id),
        f"pca{dim}": fit_pca(train, dim=dim, whiten=False, seed=seed, encoder_id=data.encoder_id),
    }
    if train_head:
        position = np.full(len(data.catalog), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        keep = position[data.train_augmented_of] >= 0
        head, _ = train_catalog_head(
            train,
            article_types=data.catalog.article_types[rows].tolist(),
            colours=data.catalog.colours[rows].tolist(),
            augmented=data.train_augmented[keep] if keep.any() else None,
            augmented_of=position[data.train_augmented_of[keep]] if keep.any() else None,
            out_dim=dim,
            epochs=epochs,
            seed=seed,
            encoder_id=data.encoder_id,
            progress=progress,
        )
        projections[f"head{dim}"] = head
    spaces: dict[str, Transform] = {"raw": identity}
    spaces.update({name: projection.apply for name, projection in projections.items()})
    return spaces, projections
