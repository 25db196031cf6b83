"""Fitting projections of raw encoder vectors: PCA(-whitening) and a triplet-trained head.

Lab code, run by ``train_embedding_head`` and the quality harness, never by a
request. What it fits is a :class:`recommender.projection.Projection`, the
file the serving side loads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recommender.projection import Projection, _as_matrix

logger = logging.getLogger(__name__)

MINING = ("batch-hard", "semi-hard")
# Fine classes drawn from each coarse class per batch: enough same-type, other-colour negatives to mine.
FINE_PER_GROUP = 4


# --- PCA ----------------------------------------------------------------------------------------------------


def _principal_axes(
    x: np.ndarray, *, dim: int, max_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, the top ``dim`` eigenvectors as rows, their eigenvalues) of the rows' covariance, exactly."""
    if len(x) > max_samples:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_samples, replace=False))]
    data = x.astype(np.float64)
    mean = data.mean(axis=0)
    centred = data - mean
    scale = max(1, len(data) - 1)
    if len(data) < data.shape[1]:
        # Fewer rows than dimensions: the thin SVD of the rows is far cheaper than the covariance's eigh.
        _, singular, rows_t = np.linalg.svd(centred, full_matrices=False)
        values, axes = singular**2 / scale, rows_t
        if dim > len(values):  # axes beyond the rank carry no variance; complete them to an orthonormal set
            complement = np.linalg.svd(np.eye(data.shape[1]) - axes.T @ axes)[0][:, : dim - len(values)].T
            values = np.concatenate([values, np.zeros(dim - len(values))])
            axes = np.concatenate([axes, complement])
    else:
        values, vectors = np.linalg.eigh(centred.T @ centred / scale)
        axes = vectors.T
    order = np.argsort(values, kind="stable")[::-1][:dim]
    values = np.clip(values[order], 0.0, None)
    axes = axes[order]
    # Eigenvector signs are arbitrary; pin them so the same data always gives the same file.
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    return mean, axes, values


def fit_pca(
    vectors: np.ndarray,
    *,
    dim: int = 256,
    whiten: bool = True,
    seed: int = 0,
    encoder_id: str = "",
    whiten_eps: float = 1e-2,
    max_samples: int = 200_000,
) -> Projection:
    """PCA of raw rows to ``dim`` dims (whitened: each axis scaled to unit variance), unsupervised.

    Whitening divides by sqrt(eigenvalue + whiten_eps * mean kept eigenvalue), so near-empty axes are not
    blown up into noise. Above ``max_samples`` rows, a ``seed``-chosen sample is used.
    """
    x = _as_matrix(vectors)
    if not 1 <= dim <= x.shape[1]:
        raise ValueError(f"dim must be between 1 and the input dimension {x.shape[1]}, got {dim}")
    if dim >= len(x):
        logger.warning("PCA to %d dims from only %d vectors: the last axes hold no variance", dim, len(x))
    mean, axes, values = _principal_axes(x, dim=dim, max_samples=max_samples, seed=seed)
    weight = axes
    if whiten:
        floor = whiten_eps * float(values.mean()) if values.size else 0.0
        weight = axes / np.sqrt(values + max(floor, 1e-12))[:, None]
    total = float(x.astype(np.float64).var(axis=0, ddof=1).sum()) if len(x) > 1 else 0.0
    kept = float(values.sum()) / total if total > 0 else 1.0
    params = {
        "whiten": whiten,
        "whiten_eps": whiten_eps,
        "seed": seed,
        "fitted_on": len(x),
        "explained_variance": round(kept, 6),
    }
    projection = Projection(kind="pca", arrays={"mean": mean, "weight": weight}, encoder_id=encoder_id, params=params)
    return projection.with_spread(x, seed=seed)


# --- Triplet-trained head -----------------------------------------------------------------------------------


class _Head(nn.Module):
    """Linear projection (started from PCA) plus an optional residual MLP branch started at zero."""

    def __init__(self, *, mean: np.ndarray, axes: np.ndarray, hidden: int) -> None:
        super().__init__()
        out_dim, in_dim = axes.shape
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, dtype=np.float32)))
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(np.asarray(axes, dtype=np.float32)))
        self.branch: nn.Sequential | None = None
        if hidden:
            self.branch = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
            # Zero output layer: training starts exactly at the PCA projection and moves only where labels say.
            nn.init.zeros_(self.branch[2].weight)
            nn.init.zeros_(self.branch[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self.mean
        z = self.linear(centred)
        if self.branch is not None:
            z = z + self.branch(centred)
        return F.normalize(z, dim=1)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean.numpy().copy(), "weight": self.linear.weight.detach().numpy().copy()}
        if self.branch is not None:
            out |= {
                "w1": self.branch[0].weight.detach().numpy().copy(),
                "b1": self.branch[0].bias.detach().numpy().copy(),
                "w2": self.branch[2].weight.detach().numpy().copy(),
                "b2": self.branch[2].bias.detach().numpy().copy(),
            }
        return out


@contextlib.contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    # One thread: float reductions then run in one order on every machine, so a seed gives one result.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _label_codes(labels: Sequence[str], *, n: int, what: str) -> np.ndarray:
    """Integer class per row; an empty label makes the row a class of its own (only its copies match it)."""
    if len(labels) != n:
        raise ValueError(f"{what} must have one entry per vector ({n}), got {len(labels)}")
    names = np.array([str(label) for label in labels], dtype=str)
    empty = names == ""
    _, codes = np.unique(names, return_inverse=True)
    codes = codes.astype(np.int64)
    codes[empty] = codes.max(initial=0) + 1 + np.flatnonzero(empty)
    return codes


class _Batches:
    """P x K sampling: classes of coarse labels, several fine classes in each, K rows per fine class.

    Rows are pool items (vectors and augmented copies). Hard mining needs every batch to hold positives for
    its anchors and near negatives (same coarse class, other fine class), which uniform batches rarely do.
    """

    def __init__(
        self, *, fine: np.ndarray, coarse: np.ndarray, batch_size: int, per_class: int, rng: np.random.Generator
    ) -> None:
        self.rng = rng
        self.per_class = per_class
        order = np.argsort(fine, kind="stable")
        classes, starts = np.unique(fine[order], return_index=True)
        self.members = {int(c): rows for c, rows in zip(classes, np.split(order, starts[1:]), strict=True)}
        fine_of_coarse: dict[int, list[int]] = {}
        for c in self.members:
            fine_of_coarse.setdefault(int(coarse[self.members[c][0]]), []).append(c)
        self.fine_of_coarse = {k: np.array(sorted(v)) for k, v in fine_of_coarse.items()}
        self.coarse_ids = np.array(sorted(self.fine_of_coarse))
        self.batch_size = batch_size

    def sample(self) -> np.ndarray:
        rows: list[np.ndarray] = []
        total = 0
        coarse_order = self.rng.permutation(self.coarse_ids)
        position = 0
        while total < self.batch_size:
            if position == len(coarse_order):
                coarse_order, position = self.rng.permutation(self.coarse_ids), 0
            fine = self.fine_of_coarse[int(coarse_order[position])]
            position += 1
            chosen = self.rng.choice(fine, min(FINE_PER_GROUP, len(fine)), replace=False)
            for c in chosen:
                members = self.members[int(c)]
                take = self.rng.choice(members, min(self.per_class, len(members)), replace=False)
                rows.append(take)
                total += len(take)
        return np.concatenate(rows)[: self.batch_size]


def _triplet_loss(
    z: torch.Tensor, *, classes: torch.Tensor, instances: torch.Tensor, margin: float, mining: str
) -> torch.Tensor:
    """Triplet loss over a batch of unit rows; positives share a class (or are copies of the same item)."""
    dist = torch.cdist(z, z).clamp_min(0.0)
    same = (classes[:, None] == classes[None, :]) | (instances[:, None] == instances[None, :])
    eye = torch.eye(len(z), dtype=torch.bool)
    positive = same & ~eye
    negative = ~same
    if mining == "batch-hard":
        anchors = positive.any(dim=1) & negative.any(dim=1)
        if not anchors.any():
            return z.sum() * 0.0
        hardest_positive = torch.where(positive, dist, torch.zeros_like(dist)).amax(dim=1)
        hardest_negative = torch.where(negative, dist, torch.full_like(dist, float("inf"))).amin(dim=1)
        return F.relu(hardest_positive - hardest_negative + margin)[anchors].mean()
    # Semi-hard (FaceNet): per anchor-positive pair, the nearest negative farther than the positive; where
    # there is none, the farthest negative.
    a, p = torch.nonzero(positive, as_tuple=True)
    if len(a) == 0 or not negative.any():
        return z.sum() * 0.0
    d_ap = dist[a, p][:, None]
    d_an = dist[a]
    neg = negative[a]
    outside = neg & (d_an > d_ap)
    nearest_outside = torch.where(outside, d_an, torch.full_like(d_an, float("inf"))).amin(dim=1)
    farthest_inside = torch.where(neg, d_an, torch.full_like(d_an, -float("inf"))).amax(dim=1)
    chosen = torch.where(outside.any(dim=1), nearest_outside, farthest_inside)
    valid = neg.any(dim=1)
    return F.relu(d_ap[:, 0] - chosen + margin)[valid].mean()


def train_triplet_head(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    extra_labels: Sequence[tuple[Sequence[str], float]] = (),
    augmented: np.ndarray | None = None,
    augmented_of: np.ndarray | None = None,
    out_dim: int = 256,
    hidden: int = 0,
    epochs: int = 30,
    batch_size: int = 128,
    per_class: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    margin: float = 0.2,
    mining: str = "batch-hard",
    seed: int = 0,
    encoder_id: str = "",
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Projection, list[float]]:
    """Train a head on frozen raw vectors with a triplet loss; returns it and the mean loss of each epoch.

    Positives share ``labels`` (e.g. "articleType|baseColour"); ``augmented`` rows (copies of distorted
    photos) are extra positives of the row ``augmented_of`` names (aligned with ``vectors`` when None). Each
    ``(labels, weight)`` of ``extra_labels`` (e.g. articleType alone) adds a triplet term of that weight; the
    first also groups batches. The head starts as PCA to ``out_dim``; ``hidden`` > 0 adds a residual MLP.
    Deterministic for a given seed (trains single-threaded); ``progress(epoch, loss)`` after each epoch.
    """
    x = _as_matrix(vectors)
    n, in_dim = x.shape
    if mining not in MINING:
        raise ValueError(f"mining must be one of {', '.join(MINING)}, got {mining!r}")
    if not 1 <= out_dim <= in_dim:
        raise ValueError(f"out_dim must be between 1 and {in_dim}, got {out_dim}")
    if epochs < 1 or batch_size < 2 or per_class < 1:
        raise ValueError("epochs and per_class must be at least 1, batch_size at least 2")
    fine = _label_codes(labels, n=n, what="labels")
    extra_codes = [(_label_codes(names, n=n, what="extra_labels"), float(w)) for names, w in extra_labels]
    coarse = extra_codes[0][0] if extra_codes else fine
    instance = np.arange(n)
    pool = x
    if augmented is not None:
        copies = _as_matrix(augmented, what="augmented")
        of = np.arange(len(copies)) if augmented_of is None else np.asarray(augmented_of, dtype=np.int64)
        if copies.shape[1] != in_dim or of.shape != (len(copies),) or not 0 <= of.min() <= of.max() < n:
            raise ValueError("augmented must be (M, in_dim) rows with augmented_of giving each one's row in vectors")
        pool = np.concatenate([x, copies])
        instance = np.concatenate([instance, of])
    # Rows and their copies alike carry the classes of the product they show.
    pool_fine, pool_coarse = fine[instance], coarse[instance]
    pool_extra = [(torch.from_numpy(codes[instance]), weight) for codes, weight in extra_codes if weight]

    started = time.perf_counter()
    mean, axes, _ = _principal_axes(x, dim=out_dim, max_samples=200_000, seed=seed)
    history: list[float] = []
    with _deterministic_torch(seed):
        rng = np.random.default_rng(seed)
        net = _Head(mean=mean, axes=axes, hidden=hidden)
        optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        batches = _Batches(fine=pool_fine, coarse=pool_coarse, batch_size=batch_size, per_class=per_class, rng=rng)
        steps = max(1, -(-len(pool) // batch_size))
        pool_t = torch.from_numpy(pool)
        fine_t, instance_t = torch.from_numpy(pool_fine), torch.from_numpy(instance)
        for epoch in range(1, epochs + 1):
            total = 0.0
            for _ in range(steps):
                rows = torch.from_numpy(batches.sample())
                z = net(pool_t[rows])
                loss = _triplet_loss(z, classes=fine_t[rows], instances=instance_t[rows], margin=margin, mining=mining)
                for codes, weight in pool_extra:
                    loss = loss + weight * _triplet_loss(
                        z, classes=codes[rows], instances=instance_t[rows], margin=margin, mining=mining
                    )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach())
            history.append(total / steps)
            if progress is not None:
                progress(epoch, history[-1])
    seconds = time.perf_counter() - started
    params = {
        "extra_label_weights": [weight for _, weight in extra_codes],
        "hidden": hidden,
        "epochs": epochs,
        "batch_size": batch_size,
        "per_class": per_class,
        "lr": lr,
        "weight_decay": weight_decay,
        "margin": margin,
        "mining": mining,
        "seed": seed,
        "trained_on": n,
        "augmented": len(pool) - n,
        "train_seconds": round(seconds, 2),
        "final_loss": round(history[-1], 6),
    }
    logger.info("Trained a %d->%d head on %d vectors in %.1f s (loss %.4f)", in_dim, out_dim, n, seconds, history[-1])
    projection = Projection(kind="head", arrays=net.arrays(), encoder_id=encoder_id, params=params)
    return projection.with_spread(x, seed=seed), history


# The label recipe chosen on an inner validation split of the demo catalog (docs/quality.md): fine classes
# "articleType|baseColour" plus an articleType term at half weight. Fine classes alone scatter products of one
# type; articleType alone leaves colour where the encoder has it.
TYPE_WEIGHT = 0.5


def train_catalog_head(
    vectors: np.ndarray,
    *,
    article_types: Sequence[str],
    colours: Sequence[str],
    augmented: np.ndarray | None = None,
    augmented_of: np.ndarray | None = None,
    out_dim: int = 256,
    epochs: int = 30,
    seed: int = 0,
    encoder_id: str = "",
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Projection, list[float]]:
    """train_triplet_head with the catalog recipe: "articleType|baseColour" classes + articleType at TYPE_WEIGHT."""
    fine = [f"{t}|{c}" if t and c else "" for t, c in zip(article_types, colours, strict=True)]
    return train_triplet_head(
        vectors,
        fine,
        extra_labels=[(list(article_types), TYPE_WEIGHT)],
        augmented=augmented,
        augmented_of=augmented_of,
        out_dim=out_dim,
        epochs=epochs,
        seed=seed,
        encoder_id=encoder_id,
        progress=progress,
    )
