"""Per-process singletons: the encoder (loaded lazily, once) and the index reader.

Nothing here runs at import time or in AppConfig.ready(): ``manage.py migrate``
never loads a model.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from django.conf import settings

from recommender import encoders
from recommender.index import IndexReader

logger = logging.getLogger(__name__)

# ENCODER setting value -> the space id its vectors are stored under.
ENCODER_SPACES = {
    "resnet50": encoders.RESNET50_ID,
    "efficientnet-lite0": encoders.EFFICIENTNET_LITE0_ID,
    "resnet50-random": encoders.RESNET50_ID + encoders.RANDOM_SUFFIX,
    "efficientnet-lite0-random": encoders.EFFICIENTNET_LITE0_ID + encoders.RANDOM_SUFFIX,
}


@dataclass(frozen=True)
class EncoderChoice:
    name: str  # as encoder_load() takes it
    space: str  # the id stored with embeddings and index builds
    note: str | None  # why the preferred encoder is not in use, for footer and admin


@functools.cache
def encoder_choice() -> EncoderChoice:
    """Which encoder this process uses, decided without loading any weights."""
    name = settings.ENCODER
    note = None
    if name == "auto":
        found = encoders.resnet50_weights_path(
            weights_file=settings.RESNET50_WEIGHTS_FILE or None, allow_download=False
        )
        if found or settings.ENCODER_ALLOW_DOWNLOAD:
            name = "resnet50"
        else:
            name = "efficientnet-lite0"
            note = encoders.FALLBACK_NOTE
            logger.warning("ENCODER FALLBACK: %s", note)
    if name not in ENCODER_SPACES:
        raise encoders.EncoderUnavailable(
            f"ENCODER={settings.ENCODER!r} is not one of: auto, {', '.join(sorted(ENCODER_SPACES))}"
        )
    return EncoderChoice(name=name, space=ENCODER_SPACES[name], note=note)


def active_space() -> str:
    return encoder_choice().space


@functools.cache
def encoder() -> encoders.Encoder:
    """The process's encoder, loaded on first use."""
    choice = encoder_choice()
    if settings.ENCODER_THREADS > 0:
        torch.set_num_threads(settings.ENCODER_THREADS)
    loaded = encoders.encoder_load(
        name=choice.name,
        resnet50_weights_file=settings.RESNET50_WEIGHTS_FILE or None,
        allow_download=settings.ENCODER_ALLOW_DOWNLOAD,
        device=settings.ENCODER_DEVICE,
        bf16=settings.ENCODER_BF16,
    )
    if loaded.id != choice.space:
        raise encoders.EncoderUnavailable(f"loaded encoder {loaded.id} but expected {choice.space}")
    return loaded


@functools.cache
def index_reader() -> IndexReader:
    return IndexReader(settings.INDEX_DIR)


def reset() -> None:
    """Forget cached singletons (tests change settings between cases)."""
    encoder_choice.cache_clear()
    encoder.cache_clear()
    index_reader.cache_clear()
