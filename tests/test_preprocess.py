"""recommender.preprocess on real image bytes written by Pillow (no network, no database)."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin, features

from recommender.encoders import batch_to_tensor
from recommender.preprocess import (
    ALLOWED_FORMATS,
    ImageRejected,
    image_open,
    image_prepare,
    image_to_rgb,
    image_to_square,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def close_to(pixel: object, expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))  # type: ignore[call-overload]


def photo_like(width: int, height: int) -> Image.Image:
    """Smooth gradients plus a few solid shapes: compresses like a product photo, not like noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    arr = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], axis=-1)
    img = Image.fromarray(arr.astype(np.uint8), mode="RGB")
    img.paste(RED, (width // 8, height // 8, width // 3, height // 3))
    img.paste(BLUE, (width // 2, height // 2, width * 7 // 8, height * 7 // 8))
    return img


# --- accepted inputs --------------------------------------------------------------------------------


def test_sources_path_str_bytes_and_stream_all_work(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (30, 20), GREEN), "PNG")
    path = write(tmp_path, "a.png", data)
    for source in (path, str(path), data, io.BytesIO(data)):
        img = image_open(source)
        assert img.size == (30, 20)
        assert img.getpixel((5, 5)) == GREEN


@pytest.mark.parametrize("orientation, corner", [(6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_is_applied(orientation: int, corner: str) -> None:
    # Stored landscape 80x40 with a red marker in the stored top-left corner.
    img = Image.new("RGB", (80, 40), WHITE)
    img.paste(RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", exif=exif, quality=95)

    upright = image_to_rgb(image_open(data))
    assert upright.size == (40, 80)
    w, h = upright.size
    corners = {"top-left": (4, 4), "top-right": (w - 5, 4), "bottom-left": (4, h - 5), "bottom-right": (w - 5, h - 5)}
    for name, xy in corners.items():
        assert close_to(upright.getpixel(xy), RED if name == corner else WHITE, tol=40), name


def test_rgba_transparent_background_becomes_white() -> None:
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (5, 5, 15, 15))
    rgb = image_to_rgb(image_open(encode(img, "PNG")))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((10, 10)) == BLUE


def test_half_transparent_pixels_blend_with_white() -> None:
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    rgb = image_to_rgb(image_open(encode(img, "PNG")))
    assert close_to(rgb.getpixel((0, 0)), (127, 127, 127), tol=2)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_becomes_white(fmt: str) -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (5, 5, 15, 15))
    rgb = image_to_rgb(image_open(encode(img, fmt, transparency=0)))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((10, 10)) == RED


def test_la_composites_on_white() -> None:
    img = Image.new("LA", (20, 20), (0, 0))
    img.paste((50, 255), (5, 5, 15, 15))
    rgb = image_to_rgb(image_open(encode(img, "PNG")))
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((10, 10)) == (50, 50, 50)


def test_cmyk_jpeg_colour_survives() -> None:
    # C=0 M=255 Y=255 K=0 is red; Pillow writes Adobe (inverted) CMYK JPEGs.
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    opened = image_open(encode(img, "JPEG", quality=95))
    assert opened.mode == "CMYK"
    assert close_to(image_to_rgb(opened).getpixel((16, 16)), RED, tol=20)


def test_sixteen_bit_png_is_scaled_not_saturated() -> None:
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    data = encode(Image.fromarray(gradient), "PNG")
    opened = image_open(data)
    assert opened.mode in {"I;16", "I;16B", "I"}
    rgb = np.asarray(image_to_rgb(opened))
    row = rgb[4, :, 0].astype(int)
    assert row[0] <= 1
    assert row[-1] >= 254
    assert abs(row[128] - 128) <= 2  # mid grey stays mid grey
    assert (rgb[..., 0] == rgb[..., 1]).all()


def test_other_sixteen_bit_modes_scale() -> None:
    big_endian = Image.frombytes("I;16B", (4, 4), np.full((4, 4), 32896, dtype=">u2").tobytes())
    as_int32 = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).convert("I")
    assert (big_endian.mode, as_int32.mode) == ("I;16B", "I")
    assert image_to_rgb(big_endian).getpixel((0, 0)) == (128, 128, 128)
    assert image_to_rgb(as_int32).getpixel((0, 0)) == (128, 128, 128)


def test_one_bit_and_greyscale() -> None:
    bw = Image.new("1", (10, 10), 0)
    bw.paste(1, (0, 0, 5, 10))
    rgb = image_to_rgb(image_open(encode(bw, "PNG")))
    assert rgb.getpixel((1, 1)) == WHITE
    assert rgb.getpixel((8, 1)) == (0, 0, 0)

    grey = image_to_rgb(image_open(encode(Image.new("L", (10, 10), 77), "PNG")))
    assert grey.mode == "RGB"
    assert grey.getpixel((3, 3)) == (77, 77, 77)


def test_float_images() -> None:
    unit = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    assert unit.mode == "F"
    assert image_to_rgb(unit).getpixel((0, 0)) == (128, 128, 128)
    wide = Image.fromarray(np.array([[-5.0, 100.0, 300.0, np.nan]], dtype=np.float32))
    assert [image_to_rgb(wide).getpixel((x, 0))[0] for x in range(4)] == [0, 100, 255, 0]


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = image_open(data)
    assert getattr(img, "n_frames", 1) == 3
    assert close_to(image_to_rgb(img).getpixel((8, 8)), RED, tol=5)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (GREEN, RED)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert close_to(image_to_rgb(image_open(data)).getpixel((8, 8)), GREEN, tol=5)


def test_tall_image_is_padded_not_cropped() -> None:
    img = Image.new("RGB", (200, 800), BLUE)
    img.paste(RED, (0, 0, 200, 40))
    img.paste(RED, (0, 760, 200, 800))
    square = np.asarray(image_to_square(img, size=224))
    assert square.shape == (224, 224, 3)
    centre = 112
    assert close_to(square[3, centre], RED)
    assert close_to(square[220, centre], RED)
    assert close_to(square[112, centre], BLUE)
    # 200x800 -> 56x224, centred: white margins of 84 px each side.
    assert (square[:, :80] == 255).all()
    assert (square[:, -80:] == 255).all()


def test_wide_image_is_padded_not_cropped() -> None:
    img = Image.new("RGB", (800, 200), BLUE)
    img.paste(RED, (0, 0, 40, 200))
    img.paste(RED, (760, 0, 800, 200))
    square = np.asarray(image_to_square(img, size=224))
    assert close_to(square[112, 3], RED)
    assert close_to(square[112, 220], RED)
    assert (square[:80] == 255).all()
    assert (square[-80:] == 255).all()


def test_small_image_is_scaled_up_to_fill() -> None:
    square = np.asarray(image_to_square(Image.new("RGB", (10, 10), GREEN), size=64))
    assert close_to(square[0, 0], GREEN) and close_to(square[63, 63], GREEN)


def test_image_prepare_shape_and_dtype(tmp_path: Path) -> None:
    path = write(tmp_path, "p.png", encode(Image.new("RGBA", (50, 100), (0, 0, 0, 0)), "PNG"))
    arr = image_prepare(path, size=96)
    assert arr.shape == (96, 96, 3)
    assert arr.dtype == np.uint8
    assert arr.flags.writeable
    assert (arr == 255).all()


def test_jpeg_draft_matches_full_decode() -> None:
    data = encode(photo_like(1600, 1200), "JPEG", quality=92)
    drafted = image_prepare(data, size=224).astype(np.int16)
    full = image_prepare(data, size=224, jpeg_draft=False).astype(np.int16)
    diff = np.abs(drafted - full)
    assert diff.mean() < 2.0
    assert np.percentile(diff, 99) < 20


def test_jpeg_draft_keeps_exif_orientation() -> None:
    img = Image.new("RGB", (1600, 800), WHITE)
    img.paste(RED, (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    arr = image_prepare(encode(img, "JPEG", exif=exif, quality=92), size=224)
    # Upright it is 800x1600 with the marker top-right: fitted to 112x224 at x 56..168.
    assert close_to(arr[5, 160], RED, tol=40)
    assert close_to(arr[5, 60], WHITE, tol=40)


# --- rejections ---------------------------------------------------------------------------------------


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG that claims width x height RGB pixels with a few KB of all-zero scanlines."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_rejected(source: object, fragment: str, **kwargs: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        image_open(source, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)
    with pytest.raises(ImageRejected):
        image_prepare(source, **kwargs)  # type: ignore[arg-type]
    return info.value


def _pillow_writes(fmt: str) -> bytes | None:
    """A small picture in ``fmt``, in the first mode that format takes; None where this Pillow cannot write it."""
    for mode in ("RGB", "L", "1"):
        try:
            return encode(Image.new(mode, (16, 16), 1), fmt)
        except (OSError, ValueError, KeyError):
            continue
    return None


Image.init()
PILLOW_WRITES = {fmt: data for fmt in sorted(Image.SAVE) if (data := _pillow_writes(fmt)) is not None}


@pytest.mark.parametrize("fmt", list(PILLOW_WRITES))
def test_of_every_format_pillow_writes_only_jpeg_png_webp_and_gif_are_read(fmt: str) -> None:
    expected = {"MPO": "JPEG"}.get(fmt, fmt)  # MPO is a JPEG with more frames after it: read as that JPEG
    if expected in ("JPEG", "PNG", "WEBP", "GIF"):
        assert expected in ALLOWED_FORMATS
        assert image_open(PILLOW_WRITES[fmt]).format == expected
    else:
        with pytest.raises(ImageRejected, match="not an image we can read"):
            image_open(PILLOW_WRITES[fmt])


def test_empty_file_rejected(tmp_path: Path) -> None:
    assert str(assert_rejected(b"", "empty")) == "The file is empty"
    assert_rejected(write(tmp_path, "empty.jpg", b""), "empty")
    assert_rejected(io.BytesIO(b""), "empty")


@pytest.mark.parametrize(
    "name, data",
    [
        ("noise.jpg", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("notes.jpg", b"This is not a picture, just some text that someone renamed.\n" * 20),
        ("pic.bmp", encode(Image.new("RGB", (8, 8), RED), "BMP")),
        ("pic.jpg", encode(Image.new("RGB", (8, 8), RED), "BMP")),
        ("pic.tiff", encode(Image.new("RGB", (8, 8), RED), "TIFF")),
        ("vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"></svg>'),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
    ],
)
def test_other_formats_rejected(tmp_path: Path, name: str, data: bytes) -> None:
    exc = assert_rejected(write(tmp_path, name, data), "not an image we can read")
    assert str(exc) == "This file is not an image we can read: JPEG, PNG, WebP or GIF"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_rejected(fmt: str) -> None:
    data = encode(photo_like(320, 240), fmt)
    exc = assert_rejected(data[: len(data) // 2], "truncated or corrupt")
    assert str(exc) == "The image file is truncated or corrupt"


def test_corrupt_png_data_rejected() -> None:
    data = bytearray(encode(photo_like(64, 64), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 64] = bytes(64)  # breaks the zlib stream but keeps the header
    assert_rejected(bytes(data), "truncated or corrupt")


def test_decompression_bomb_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(self: object) -> None:
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    bomb = png_bomb(20_000, 20_000)
    assert len(bomb) < 20_000
    # Bounded by work, not time: nothing decoded (load() raises above), little memory.
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected) as info:
            image_open(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 * 1024
    assert str(info.value).startswith("The image is too large")
    assert "the limit is 40 megapixels" in str(info.value)


def test_image_over_our_limit_but_under_pillows_reports_dimensions() -> None:
    exc = assert_rejected(png_bomb(8000, 6000), "8000x6000 pixels")
    assert str(exc) == "The image is too large: 8000x6000 pixels, the limit is 40 megapixels"


def test_just_over_a_small_pixel_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "small.png", encode(Image.new("RGB", (101, 100), RED), "PNG"))
    exc = assert_rejected(path, "101x100 pixels", max_pixels=10_000)
    assert "the limit is 0.01 megapixels" in str(exc)
    assert image_open(path, max_pixels=10_100).size == (101, 100)


def test_missing_path_is_not_an_image_rejection(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        image_open(tmp_path / "nope.jpg")


# --- tensors ------------------------------------------------------------------------------------------


def test_batch_to_tensor_shape_dtype_and_normalisation() -> None:
    a = np.zeros((8, 6, 3), dtype=np.uint8)
    b = np.full((8, 6, 3), 255, dtype=np.uint8)
    b[0, 0] = (0, 51, 102)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    x = batch_to_tensor([a, b], mean=mean, std=std)
    assert x.shape == (2, 3, 8, 6)
    assert x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x[0, :, 3, 3], torch.tensor([-1.0, -1.0, 0.0]))
    torch.testing.assert_close(x[1, :, 3, 3], torch.tensor([1.0, 3.0, 1.0]))
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([-1.0, -0.2, 0.4]))


def test_batch_to_tensor_accepts_an_array_and_rejects_bad_input() -> None:
    stacked = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    assert batch_to_tensor(stacked, mean=(0, 0, 0), std=(1, 1, 1)).shape == (3, 3, 4, 4)
    with pytest.raises(ValueError):
        batch_to_tensor([], mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError):
        batch_to_tensor([np.zeros((4, 4, 3), dtype=np.float32)], mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError):
        batch_to_tensor([np.zeros((4, 4), dtype=np.uint8)], mean=(0, 0, 0), std=(1, 1, 1))
