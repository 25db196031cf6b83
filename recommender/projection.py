"""Projections from raw encoder vectors to served vectors (PCA-whitening or a trained head), as served.

No Django and no torch here: a projection is numpy arithmetic (fitting it is lab code, ``lab.heads``).
The encoder stays frozen: everything is fitted on stored raw vectors. A :class:`Projection` is a versioned
file whose ``version`` is a hash of what it computes, so the served space ``"<encoder id>+<version>"`` names
exactly one mapping and vectors of two different mappings are never mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

KINDS = ("pca", "head")
FORMAT = 1
# Arrays a projection may hold; anything else in a file is refused. "spread" is the measured image_spread.
_ARRAYS = ("mean", "weight", "w1", "b1", "w2", "b2", "spread")
# image_spread is measured on up to SPREAD_SAMPLE of the fitting vectors, each against its SPREAD_POOL nearest
# (the candidates a grid is re-ranked from) among up to SPREAD_REFERENCE of them.
SPREAD_SAMPLE = 500
SPREAD_POOL = 200
SPREAD_REFERENCE = 20_000
_META_KEY = "meta_json"
_NORM_FLOOR = 1e-12


class ProjectionCorrupt(ValueError):
    """A projection file is unreadable, of an unknown format, or its content does not match its version."""


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, _NORM_FLOOR)).astype(np.float32, copy=False)


def _as_matrix(vectors: np.ndarray, *, what: str = "vectors") -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty 2-d array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    return x


def _neighbour_spread(rows: np.ndarray, sample: np.ndarray, *, block: int = 100) -> float:
    """Mean over ``sample`` of the standard deviation of each row's cosines to its SPREAD_POOL nearest others."""
    pool = min(SPREAD_POOL, len(rows) - 1)
    if pool < 2:
        return 1.0
    spreads = []
    for start in range(0, len(sample), block):
        at = sample[start : start + block]
        cosines = rows[at] @ rows.T
        cosines[np.arange(len(at)), at] = -np.inf  # not itself
        nearest = np.partition(cosines, len(rows) - pool, axis=1)[:, -pool:]
        spreads.append(nearest.std(axis=1))
    return float(np.concatenate(spreads).mean())


class Projection:
    """A fixed mapping raw encoder vectors (N, in_dim) -> unit served vectors (N, out_dim).

    ``z = normalise((x - mean) @ weight.T [+ relu((x - mean) @ w1.T + b1) @ w2.T + b2])``: PCA is the linear
    part alone, the trained head may add the residual MLP branch. ``version`` hashes the arrays, kind and
    encoder id (not the creation time, parameters or metrics), so equal mappings share a version.
    """

    def __init__(
        self,
        *,
        kind: str,
        arrays: dict[str, np.ndarray],
        encoder_id: str = "",
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        created_at: str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        unknown = set(arrays) - set(_ARRAYS)
        if unknown or not {"mean", "weight"} <= set(arrays):
            raise ValueError(
                f"a projection needs mean and weight (and optionally w1, b1, w2, b2), got {sorted(arrays)}"
            )
        self.kind = kind
        self.arrays = {name: np.ascontiguousarray(value, dtype="<f4") for name, value in arrays.items()}
        for value in self.arrays.values():
            value.setflags(write=False)
        weight = self.arrays["weight"]
        self.out_dim, self.in_dim = (int(n) for n in weight.shape)
        if self.arrays["mean"].shape != (self.in_dim,):
            raise ValueError("mean must have one value per input dimension")
        branch = [name for name in ("w1", "b1", "w2", "b2") if name in self.arrays]
        if branch and len(branch) != 4:
            raise ValueError("the MLP branch needs all of w1, b1, w2, b2")
        if "spread" in self.arrays and (self.arrays["spread"].shape != (1,) or not self.arrays["spread"][0] > 0):
            raise ValueError("spread must be one positive number")
        if branch:
            hidden = self.arrays["w1"].shape[0]
            shapes = {
                "w1": (hidden, self.in_dim),
                "b1": (hidden,),
                "w2": (self.out_dim, hidden),
                "b2": (self.out_dim,),
            }
            if any(self.arrays[name].shape != shape for name, shape in shapes.items()):
                raise ValueError("the MLP branch's shapes do not fit the linear part")
        self.encoder_id = encoder_id
        self.params = dict(params or {})
        self.metrics = dict(metrics or {})
        self.created_at = created_at or datetime.now(tz=UTC).isoformat(timespec="seconds")
        self.version = self._version()

    def __repr__(self) -> str:
        return f"<Projection {self.version} {self.in_dim}->{self.out_dim} on {self.encoder_id or '?'}>"

    def _version(self) -> str:
        digest = hashlib.sha256()
        head = {"kind": self.kind, "encoder_id": self.encoder_id, "in_dim": self.in_dim, "out_dim": self.out_dim}
        digest.update(json.dumps(head, sort_keys=True).encode())
        for name in sorted(self.arrays):
            value = self.arrays[name]
            digest.update(f"\0{name}:{value.dtype.str}:{value.shape}\0".encode())
            digest.update(value.tobytes())
        return f"{self.kind}{self.out_dim}-{digest.hexdigest()[:8]}"

    @property
    def space(self) -> str:
        """The embedding-space id of projected vectors: ``"<encoder id>+<version>"``."""
        if not self.encoder_id:
            raise ValueError("this projection records no encoder id, so it names no space")
        return f"{self.encoder_id}+{self.version}"

    @property
    def filename(self) -> str:
        return f"head-{self.kind}-{self.out_dim}-{self.version.rsplit('-', 1)[1]}.npz"

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project raw rows (N, in_dim) or one raw vector (in_dim,) to float32 unit rows (N, out_dim)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected vectors with {self.in_dim} dimensions, got shape {np.shape(vectors)}")
        a = self.arrays
        centred = x - a["mean"]
        z = centred @ a["weight"].T
        if "w1" in a:
            z = z + np.maximum(centred @ a["w1"].T + a["b1"], 0.0) @ a["w2"].T + a["b2"]
        return _unit_rows(z)

    @property
    def image_spread(self) -> float:
        """How many times wider the cosines of a product's near neighbours spread in this space than in the raw
        one (1.0 where not measured). The colour blend's weights and the seen penalty were chosen on raw cosines:
        the refinement converts them with this, so that they count as much beside projected scores (feedback)."""
        return float(self.arrays["spread"][0]) if "spread" in self.arrays else 1.0

    def with_spread(self, raw: np.ndarray, *, seed: int = 0) -> Projection:
        """This mapping carrying its ``image_spread`` measured on ``raw`` (the vectors it was fitted on).

        The spread is part of the version: it changes the grids a space serves. Per space, the mean over a
        seeded sample of rows of the standard deviation of each row's cosines to its SPREAD_POOL nearest.
        """
        x = _unit_rows(_as_matrix(raw, what="raw vectors"))
        rng = np.random.default_rng(seed)
        if len(x) > SPREAD_REFERENCE:
            x = x[np.sort(rng.choice(len(x), SPREAD_REFERENCE, replace=False))]
        sample = np.sort(rng.choice(len(x), min(SPREAD_SAMPLE, len(x)), replace=False))
        ratio = _neighbour_spread(self.apply(x), sample) / max(_neighbour_spread(x, sample), _NORM_FLOOR)
        arrays = {**{k: v for k, v in self.arrays.items() if k != "spread"}, "spread": np.array([ratio], "<f4")}
        return Projection(
            kind=self.kind,
            arrays=arrays,
            encoder_id=self.encoder_id,
            params=self.params,
            metrics=self.metrics,
            created_at=self.created_at,
        )

    def with_metrics(self, metrics: dict[str, Any]) -> Projection:
        """The same mapping (same version) carrying ``metrics`` in its file."""
        return Projection(
            kind=self.kind,
            arrays=self.arrays,
            encoder_id=self.encoder_id,
            params=self.params,
            metrics={**self.metrics, **metrics},
            created_at=self.created_at,
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "version": self.version,
            "encoder_id": self.encoder_id,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "created_at": self.created_at,
            "params": self.params,
            "metrics": self.metrics,
        }

    def save(self, directory: Path) -> Path:
        """Write ``directory/head-<kind>-<dim>-<sha8>.npz`` (weights + JSON metadata) atomically; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = np.frombuffer(json.dumps(self.metadata(), sort_keys=True).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays, **{_META_KEY: meta})
        final = directory / self.filename
        tmp = directory / f".{self.filename}.{uuid.uuid4().hex}"
        try:
            with tmp.open("wb") as fh:
                fh.write(buffer.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("Saved projection %s to %s", self.version, final)
        return final

    @classmethod
    def load(cls, path: Path) -> Projection:
        """Read a file written by :meth:`save`; raises ProjectionCorrupt if it is not one or was altered."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                contents = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ProjectionCorrupt(f"{path} is not a readable projection file: {exc}") from exc
        try:
            meta = json.loads(contents.pop(_META_KEY).tobytes().decode())
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise ProjectionCorrupt(f"{path} has no readable metadata") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ProjectionCorrupt(f"{path} is of an unknown projection format: {meta.get('format')!r}")
        try:
            projection = cls(
                kind=meta["kind"],
                arrays=contents,
                encoder_id=meta["encoder_id"],
                params=meta.get("params"),
                metrics=meta.get("metrics"),
                created_at=meta.get("created_at"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ProjectionCorrupt(f"{path} does not hold a valid projection: {exc}") from exc
        if projection.version != meta.get("version"):
            raise ProjectionCorrupt(f"{path} claims version {meta.get('version')} but holds {projection.version}")
        return projection
