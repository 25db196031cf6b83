"""Image bytes for tests: product-like JPEGs, real-world variants, hostile and malformed files."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def jpeg_bytes(
    *, colour: tuple[int, int, int] = (200, 30, 30), shape: str = "box", size: tuple[int, int] = (240, 320), **save
) -> bytes:
    """A product-like JPEG: a coloured shape on white."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    if shape == "box":
        draw.rectangle([w * 0.2, h * 0.15, w * 0.8, h * 0.85], fill=colour)
    elif shape == "disc":
        draw.ellipse([w * 0.15, h * 0.25, w * 0.85, h * 0.75], fill=colour)
    else:
        draw.polygon([(w * 0.5, h * 0.1), (w * 0.9, h * 0.9), (w * 0.1, h * 0.9)], fill=colour)
    out = io.BytesIO()
    img.save(out, format=save.pop("format", "JPEG"), **save)
    return out.getvalue()


SHAPES = ("box", "disc", "tri")


# --- Real image bytes ---------------------------------------------------------------------


def pil_bytes(img: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def product_picture(
    colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (120, 160), mode: str = "RGB"
) -> Image.Image:
    img = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(img).rectangle([w * 0.2, h * 0.15, w * 0.8, h * 0.85], fill=colour)
    return img.convert(mode) if mode != "RGB" else img


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_by_hand(width: int, height: int, *, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A ~1 KB greyscale PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    return png_by_hand(width, height, bit_depth=8, colour_type=0, idat=zlib.compress(b"\0" * (width + 1) * 8, 9))


def png_bomb_valid(side: int = 9000) -> bytes:
    """A complete, valid all-black PNG of side x side pixels that compresses to well under 100 KB."""
    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return png_by_hand(side, side, bit_depth=8, colour_type=0, idat=idat)


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen claims width x height, holding a single 1x1 frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b"\x3b"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header was edited to claim width x height."""
    data = bytearray(pil_bytes(product_picture(size=(32, 32)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png16_rgb_by_hand(width: int = 60, height: int = 80) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): red box on white, big-endian samples."""
    pixels = np.full((height, width, 3), 65535, dtype=">u2")
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (52000, 8000, 8000)
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(height))
    return png_by_hand(width, height, bit_depth=16, colour_type=2, idat=zlib.compress(raw))


def png16_grey(value: int = 32768) -> bytes:
    """A 16-bit greyscale PNG of one mid-grey value (Pillow's own convert would clip it to white)."""
    return pil_bytes(Image.fromarray(np.full((80, 60), value, dtype=np.uint16)), "PNG")


def cmyk_jpeg() -> bytes:
    img = Image.new("CMYK", (120, 160), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([24, 24, 96, 136], fill=(0, 255, 255, 0))  # red in CMYK
    return pil_bytes(img, "JPEG")


def palette_png_transparent() -> bytes:
    """A palette PNG whose background index is transparent (and black in the palette)."""
    img = Image.new("P", (120, 160), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    ImageDraw.Draw(img).rectangle([24, 24, 96, 136], fill=1)
    return pil_bytes(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    img = Image.new("RGBA", (120, 160), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([24, 24, 96, 136], fill=(30, 60, 200, 255))
    return pil_bytes(img, "PNG")


def animated_gif() -> bytes:
    """Three frames: red, green, blue. Only the first (red) may be used."""
    frames = [product_picture(colour=c).convert("P") for c in ((220, 20, 20), (20, 200, 20), (20, 20, 220))]
    return pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def exif_jpeg(*, orientation: int | None = None, gps: bool = False, size: tuple[int, int] = (160, 100)) -> bytes:
    """A JPEG carrying EXIF: camera make, optionally orientation and a GPS position."""
    img = product_picture(size=size)
    # A marker in the stored top-left corner, to check the rotation.
    ImageDraw.Draw(img).rectangle([0, 0, 15, 15], fill=(20, 200, 20))
    exif = Image.Exif()
    exif[0x010F] = "HackCam"
    exif[0x0110] = "Model X"
    if orientation:
        exif[0x0112] = orientation
    if gps:
        exif.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 39.0)})
    return pil_bytes(img, "JPEG", exif=exif)


def webp_bytes() -> bytes:
    return pil_bytes(product_picture(colour=(30, 160, 40)), "WEBP")


def bmp_bytes() -> bytes:
    return pil_bytes(product_picture(), "BMP")


def tiff_bytes() -> bytes:
    return pil_bytes(product_picture(), "TIFF")


def ico_bytes() -> bytes:
    return pil_bytes(product_picture(size=(64, 64)), "ICO")


def pdf_bytes() -> bytes:
    return pil_bytes(product_picture(), "PDF")


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
    b'<script>alert(document.cookie)</script><rect width="100" height="100" fill="red"/></svg>'
)
HTML = b"<!doctype html><html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>"
TEXT = b"This is not a picture, just some text.\n" * 20


def executable_bytes() -> bytes:
    """The first 8 KB of the Python interpreter: a real ELF executable header."""
    return Path(sys.executable).resolve().read_bytes()[:8192]


def noise_image(size: tuple[int, int] = (200, 200)) -> Image.Image:
    """Incompressible pixels, so that half the file is half the picture."""
    return Image.frombytes("RGB", size, np.random.default_rng(7).integers(0, 256, size[0] * size[1] * 3, np.uint8))


def first_half(img: Image.Image, fmt: str) -> bytes:
    data = pil_bytes(img, fmt)
    return data[: len(data) // 2]


def gif_php_polyglot() -> bytes:
    return b"GIF89a<?php system($_GET['c']); ?>" + b"\0" * 64
