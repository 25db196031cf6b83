"""Batched embedding of image files: decoding in worker processes feeds the model.

No Django here: callers pass sources (paths or bytes) and get vectors back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from recommender.colour import colour_descriptor
from recommender.encoders import Encoder
from recommender.preprocess import ImageRejected, image_prepare


@dataclass(frozen=True)
class ImageItem:
    key: int
    source: Path | bytes
    version: int = 0


@dataclass(frozen=True)
class Embedded:
    item: ImageItem
    vector: np.ndarray | None
    error: str = ""
    # The colour descriptor of the same decoded square (recommender.colour), stored beside the vector.
    colour: np.ndarray | None = None


class _Decoded(Dataset):
    def __init__(self, items: Sequence[ImageItem], *, size: int, max_pixels: int) -> None:
        self.items = items
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Prepared:
        item = self.items[index]
        try:
            square = image_prepare(item.source, size=self.size, max_pixels=self.max_pixels)
        except ImageRejected as exc:
            return index, None, None, str(exc)
        except FileNotFoundError:
            return index, None, None, "The image file is missing."
        # Computed where the image was decoded (a decode worker when there is one), from the very square the
        # model sees: the colour never comes from another version of the image.
        return index, square, colour_descriptor(square), ""


# (position in the batch's items, the prepared square or None, its colour descriptor, the reason it failed)
_Prepared = tuple[int, np.ndarray | None, np.ndarray | None, str]


def _collate(batch: list[_Prepared]) -> list[_Prepared]:
    return batch


def embed_stream(
    items: Sequence[ImageItem],
    *,
    encoder: Encoder,
    batch_size: int = 32,
    decode_workers: int = 0,
    max_pixels: int = 40_000_000,
) -> Iterator[list[Embedded]]:
    """Yield one list of results per batch, in input order within the batch.

    With ``decode_workers`` > 0, JPEG decoding and resizing run in that many
    processes ahead of the model, so the forward pass never waits on them.
    Unreadable images come back with ``vector=None`` and the reason.
    """
    loader = DataLoader(
        _Decoded(items, size=encoder.input_size, max_pixels=max_pixels),
        batch_size=batch_size,
        num_workers=decode_workers,
        collate_fn=_collate,
        prefetch_factor=4 if decode_workers else None,
        persistent_workers=False,
    )
    for batch in loader:
        good = [(index, array) for index, array, _, _ in batch if array is not None]
        vectors = encoder.embed_images([array for _, array in good]) if good else np.zeros((0, encoder.dim), np.float32)
        by_index = {index: vectors[row] for row, (index, _) in enumerate(good)}
        yield [Embedded(items[index], by_index.get(index), error, colour) for index, _, colour, error in batch]
