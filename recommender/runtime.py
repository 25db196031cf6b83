"""Per-process singletons: the encoder (loaded lazily, once), projections and the index reader.

Nothing here runs at import time or in AppConfig.ready(): ``manage.py migrate``
never loads a model. Importing this module does not import torch either: a web
process that serves text search and clicks never loads it; the first photo
search (or embedding task) does, once.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings

from recommender.delivery import DirStore, S3Store, Store
from recommender.errors import EncoderUnavailable
from recommender.index import IndexReader
from recommender.projection import Projection, ProjectionCorrupt
from recommender.spaces import ENCODER_SPACES, SPACE_ENCODERS, EncoderChoice, encoder_choose, space_encoder_id

if TYPE_CHECKING:
    from recommender.encoders import Encoder

logger = logging.getLogger(__name__)


@functools.cache
def encoder_choice() -> EncoderChoice:
    """Which encoder this process uses, decided without loading any weights (see recommender.spaces)."""
    return encoder_choose(
        name=settings.ENCODER,
        weights_file=settings.RESNET50_WEIGHTS_FILE or None,
        allow_download=settings.ENCODER_ALLOW_DOWNLOAD,
    )


ACTIVE_SPACE_FILE = "ACTIVE_SPACE"
BF16_MIN_COSINE = 0.99


# --- Spaces: an encoder's raw vectors, or those projected by a head -----------------------


def heads_dir() -> Path:
    """Projection files, beside the index builds (shared by every machine the same way)."""
    return settings.INDEX_DIR / "heads"


HEAD_VERSION = re.compile(r"^[a-z]+[0-9]+-[0-9a-f]+$")


def head_path(version: str) -> Path:
    """The file of projection ``version`` (``head256-3f2a9c1b`` -> ``heads/head-head-256-3f2a9c1b.npz``)."""
    if not HEAD_VERSION.match(version):
        raise ProjectionCorrupt(f"{version!r} is not a projection version")
    kind_dim, _, digest = version.rpartition("-")
    kind = kind_dim.rstrip("0123456789")
    return heads_dir() / f"head-{kind}-{kind_dim[len(kind) :]}-{digest}.npz"


@functools.cache
def projection_for(version: str) -> Projection:
    """The projection file named by ``version`` (e.g. ``head256-3f2a9c1b``), loaded once per process."""
    path = head_path(version)
    projection = Projection.load(path)
    if projection.version != version:
        raise ProjectionCorrupt(f"{path} holds {projection.version}, not {version}")
    return projection


def space_known(space: str) -> bool:
    """Whether this process can produce vectors of ``space``: a known encoder, plus a loadable head."""
    base, _, version = space.partition("+")
    if base not in SPACE_ENCODERS:
        return False
    if not version:
        return True
    try:
        return projection_for(version).space == space
    except (ProjectionCorrupt, ValueError):
        return False


def project(space: str, raw: np.ndarray) -> np.ndarray:
    """Vectors of ``space`` from raw encoder vectors (unchanged for a raw space); keeps the input's shape."""
    _, _, version = space.partition("+")
    if not version:
        return raw
    projected = projection_for(version).apply(raw)
    return projected[0] if np.ndim(raw) == 1 else projected


def image_spread(space: str) -> float:
    """How many times wider image cosines spread in ``space`` than in its encoder's raw space (1.0 when raw)."""
    _, _, version = space.partition("+")
    return projection_for(version).image_spread if version else 1.0


def space_switch_read() -> str | None:
    """The space reembed_catalog or use_projection switched the site to, if any (overrides the settings)."""
    try:
        space = (settings.INDEX_DIR / ACTIVE_SPACE_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    if not space_known(space):
        logger.error("Ignoring %s: unknown space %r", ACTIVE_SPACE_FILE, space)
        return None
    return space


def space_switch_write(space: str) -> None:
    """Switch every process to ``space`` on its next query (atomic rename of one small file).

    With an index store, every node follows (``recommender.services.index_sync``): the head's file
    and then the space's name are published there first; a store that cannot be written raises
    StoreUnavailable and nothing is switched.
    """
    if not space_known(space):
        raise EncoderUnavailable(f"unknown space {space!r}")
    store = index_store()
    if store is not None:
        _, _, version = space.partition("+")
        if version:
            head = head_path(version)
            store.file_write(f"{head.parent.name}/{head.name}", head.read_bytes())
        store.file_write(ACTIVE_SPACE_FILE, space.encode())
    space_switch_local(space)


def space_switch_local(space: str) -> None:
    """Switch this machine's processes to ``space`` (its INDEX_DIR's ``ACTIVE_SPACE``)."""
    settings.INDEX_DIR.mkdir(parents=True, exist_ok=True)
    tmp = settings.INDEX_DIR / f".{ACTIVE_SPACE_FILE}.tmp"
    tmp.write_text(space)
    tmp.replace(settings.INDEX_DIR / ACTIVE_SPACE_FILE)


def active_space() -> str:
    """The space this site serves and embeds into: the switched-to one, else ENCODER's.

    Read on every call (one small file), so a switch reaches running processes
    without a restart.
    """
    return space_switch_read() or configured_space()


def configured_space() -> str:
    """The space the settings ask for: ENCODER's, projected by EMBEDDING_HEAD when set."""
    space = encoder_choice().space
    if settings.EMBEDDING_HEAD:
        space = f"{space}+{settings.EMBEDDING_HEAD}"
        if not space_known(space):
            raise EncoderUnavailable(
                f"EMBEDDING_HEAD={settings.EMBEDDING_HEAD!r} names no projection file for {encoder_choice().space} "
                f"in {heads_dir()}"
            )
    return space


def encoder() -> Encoder:
    """The encoder of the active space, loaded once per process on first use."""
    return encoder_for(SPACE_ENCODERS[space_encoder_id(active_space())])


def query_vectors(images: list[np.ndarray]) -> np.ndarray:
    """Vectors of the active space for prepared images (a shopper's photo)."""
    return project(active_space(), encoder().embed_images(images))


@functools.cache
def encoder_for(name: str) -> Encoder:
    """The encoder named ``name`` (as ENCODER takes it), loaded once per process; torch is imported here."""
    # torch is imported lazily: a web process that serves text search and clicks never loads it.
    import torch

    from recommender import encoders

    if settings.ENCODER_THREADS > 0:
        torch.set_num_threads(settings.ENCODER_THREADS)
    mode = settings.ENCODER_BF16
    loaded = encoders.encoder_load(
        name=name,
        resnet50_weights_file=settings.RESNET50_WEIGHTS_FILE or None,
        allow_download=settings.ENCODER_ALLOW_DOWNLOAD,
        device=settings.ENCODER_DEVICE,
        bf16=mode == "on",
    )
    if loaded.id != ENCODER_SPACES[name]:
        raise EncoderUnavailable(f"loaded encoder {loaded.id} but expected {ENCODER_SPACES[name]}")
    if mode == "auto" and (loaded.device.type == "cuda" or encoders.cpu_has_native_bf16()):
        # bfloat16 roughly doubles throughput where the hardware has it; keep it
        # only while its vectors stay interchangeable with float32 ones.
        agreement = encoders.bf16_agreement(loaded)
        loaded.bf16 = agreement >= BF16_MIN_COSINE
        logger.info("bf16 autocast %s (cosine to float32 >= %.4f)", "on" if loaded.bf16 else "off", agreement)
    return loaded


def index_dir(space: str) -> Path:
    """Each space has its own builds, so a new space is built beside the one in service."""
    return settings.INDEX_DIR / space


@functools.cache
def index_store() -> Store | None:
    """The store builds are published to and fetched from; None when INDEX_DIR itself is it (nothing copied)."""
    configured = settings.INDEX_STORE
    if configured == "s3":
        # Imported lazily: django-storages and botocore are optional (requirements-s3.txt), for an S3 store only.
        from botocore.config import Config
        from storages.backends.s3 import S3Storage

        # Short connection timeouts and few retries: a fetcher that cannot reach the store says so
        # within seconds and keeps serving; the next look tries again.
        storage = S3Storage(
            bucket_name=settings.INDEX_S3_BUCKET,
            endpoint_url=settings.INDEX_S3_ENDPOINT_URL,
            region_name=settings.INDEX_S3_REGION,
            client_config=Config(connect_timeout=3, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"}),
        )
        return S3Store(storage.bucket, prefix=settings.INDEX_S3_PREFIX)
    if configured.startswith("dir:"):
        root = Path(configured[4:])
        if root.resolve() != settings.INDEX_DIR.resolve():
            return DirStore(root)
    return None


def index_reader(space: str | None = None) -> IndexReader:
    return _index_reader(index_dir(space or active_space()))


@functools.cache
def _index_reader(directory: Path) -> IndexReader:
    return IndexReader(directory)


def reset() -> None:
    """Forget cached singletons (tests change settings between cases)."""
    encoder_choice.cache_clear()
    encoder_for.cache_clear()
    projection_for.cache_clear()
    _index_reader.cache_clear()
    index_store.cache_clear()
