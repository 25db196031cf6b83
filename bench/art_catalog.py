"""A catalog of real emoji art the product did not draw, in the Fashion Product Images layout.

    .venv/bin/python bench/art_catalog.py            # small: every 3rd emoji, ~1,800 products (~20 s)
    .venv/bin/python bench/art_catalog.py --full     # all 1,914 base emoji, ~5,400 products (~45 s)
    .venv/bin/python bench/art_catalog.py --out /tmp/art

Each base emoji of OpenMoji 17 (``openmoji.csv``: no skin tones, no OpenMoji extras, no components) is
drawn by up to three vendors, each drawing one product: OpenMoji (``openmoji@17.0.0``), JoyPixels
(``emoji-assets@11.0.0``) and Microsoft Fluent flat (``fluentui-emoji@1.3.0``). The vendors' drawings of
one emoji are "the same product photographed by someone else" (``emoji`` in rows.json), so a similarity
grid can be judged by whether they find each other. Labels follow styles.csv: masterCategory is the
emoji group, subCategory and articleType its subgroup, baseColour is named from the rendered pixels.

The npm tarballs (``npm pack``), ``styles.csv``, ``images/<id>.jpg`` (256 px on white) and ``rows.json``
are cached under ``~/.cache/visual-gallery/bench/art/`` and never committed; a second call returns at once.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import resvg_py
from PIL import Image

logger = logging.getLogger("bench.art_catalog")

CACHE = Path.home() / ".cache" / "visual-gallery" / "bench" / "art"
SIZES = ("small", "full")
VENDORS = ("OpenMoji", "JoyPixels", "Fluent")  # index = vendor_index in the product id
PACKAGES = (("openmoji", "17.0.0"), ("emoji-assets", "11.0.0"), ("fluentui-emoji", "1.3.0"))
SKIP_GROUPS = {"extras-openmoji", "extras-unicode", "component"}
SIDE, COLOUR_SIDE = 256, 64
STYLE_COLUMNS = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour"]
STYLE_COLUMNS += ["season", "year", "usage", "productDisplayName"]
# Typical sRGB of the common styles.csv colour names; baseColour is the nearest of these in CIELAB. Blue has
# a second, light reference: emoji draw shirts and skies sky-blue, which would otherwise be nearest White.
PALETTE = (
    ("Black", (20, 20, 20)), ("White", (250, 250, 250)), ("Grey", (128, 128, 128)), ("Red", (210, 30, 40)),
    ("Orange", (250, 140, 20)), ("Yellow", (250, 215, 40)), ("Green", (50, 160, 60)), ("Blue", (40, 110, 220)),
    ("Blue", (150, 200, 240)), ("Navy Blue", (20, 30, 100)), ("Purple", (130, 60, 170)),
    ("Pink", (245, 150, 180)), ("Brown", (130, 75, 35)), ("Beige", (225, 200, 160)), ("Maroon", (120, 20, 30)),
)  # fmt: skip


def _tarball(name: str, version: str) -> Path:
    """The package's .tgz in the cache, fetched from the npm registry by `npm pack` once."""
    folder = CACHE / "npm"
    path = folder / f"{name}-{version}.tgz"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        raise RuntimeError(f"npm is not installed: cannot fetch {name}@{version} into {folder}")
    logger.info("fetching %s@%s with npm pack into %s", name, version, folder)
    command = ["npm", "pack", f"{name}@{version}", "--pack-destination", str(folder)]
    try:  # captured: npm lists every file of the package (11,000 lines for openmoji)
        subprocess.run(command, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        tail = error.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"npm pack {name}@{version} failed (exit {error.returncode}): {' '.join(tail)}") from error
    if not path.exists():
        raise RuntimeError(f"npm pack {name}@{version} did not write {path}")
    return path


def _members(tgz: Path, names: set[str]) -> dict[str, bytes]:
    """The wanted members' bytes, read in one streaming pass: gzip has no index, so seeking costs the same."""
    found: dict[str, bytes] = {}
    with tarfile.open(tgz, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name in names:
                found[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return found


def _emoji() -> list[dict[str, str]]:
    """Base emoji of openmoji.csv in its order: the full list that emoji_index counts."""
    tgz = _tarball(*PACKAGES[0])
    text = _members(tgz, {"package/data/openmoji.csv"})["package/data/openmoji.csv"].decode("utf-8")
    rows = csv.DictReader(io.StringIO(text))
    return [row for row in rows if not row["skintone"] and row["group"] not in SKIP_GROUPS]


def _joypixels_names(hexcode: str) -> list[str]:
    # JoyPixels drops the emoji-presentation selector (fe0f) and, in ZWJ sequences, the joiner (200d) too.
    code = hexcode.lower()
    names = [code, code.replace("-fe0f", "")]
    if code.endswith("-fe0f"):
        names.append(code.removesuffix("-fe0f"))
    names.append(code.replace("-fe0f", "").replace("-200d", ""))
    return [f"package/png/64/{name}.png" for name in dict.fromkeys(names)]


def _slug(text: str, apostrophe: str) -> str:
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))  # piñata
    text = text.lower().replace("’", "'").replace("'", apostrophe)
    for symbol, word in (("&", "and"), ("#", "hashtag"), ("*", "asterisk")):  # Fluent spells these out
        text = text.replace(symbol, f" {word} ")
    text = re.sub(r"[^a-z0-9\s-]", " ", text)
    return re.sub(r"[\s-]+", "-", text.strip()).strip("-")


def _fluent_names(annotation: str) -> list[str]:
    # Fluent names files by the CLDR name; emoji with skin tones end in "-default" (the yellow one), and
    # some roles are "person-<role>" ("genie", "deaf person" -> person-genie, person-deaf).
    names = []
    for apostrophe in ("", "-"):
        slug = _slug(annotation, apostrophe)
        for name in (slug, f"person-{slug}", re.sub(r"^(.+)-(person|man|woman)$", r"\2-\1", slug)):
            names += [name, f"{name}-default"]
    return [f"package/icons/flat/{name}.svg" for name in dict.fromkeys(names)]


def _render(data: bytes, vendor: int) -> Image.Image:
    """RGB 256x256 on white: SVGs through resvg, JoyPixels' 64 px PNGs upscaled with LANCZOS."""
    if vendor == 1:
        art = Image.open(io.BytesIO(data)).convert("RGBA").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    else:
        png = resvg_py.svg_to_bytes(svg_string=data.decode("utf-8"), width=SIDE, height=SIDE)
        art = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", art.size, "white"), art).convert("RGB")


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255, shape (..., 3)) to CIELAB under D65."""
    c = rgb / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


COLOUR_NAMES = list(dict.fromkeys(name for name, _ in PALETTE))
PALETTE_NAME = np.array([COLOUR_NAMES.index(name) for name, _ in PALETTE])
PALETTE_LAB = _lab(np.array([rgb for _, rgb in PALETTE], dtype=np.float64))


def _base_colour(image: Image.Image) -> str:
    """The fixed rule: on a 64x64 downsample, drop background (all channels > 235), name every other pixel
    by the nearest palette colour in CIELAB, and take the most common name. Black is left out unless over
    60 % of the foreground is black, since most art has black outlines that say nothing of its colour."""
    pixels = np.asarray(image.convert("RGB").resize((COLOUR_SIDE, COLOUR_SIDE), Image.Resampling.BOX))
    pixels = pixels.reshape(-1, 3).astype(np.float64)
    pixels = pixels[~(pixels > 235).all(axis=1)]
    if not len(pixels):
        return "White"
    distance = ((_lab(pixels)[:, None, :] - PALETTE_LAB[None, :, :]) ** 2).sum(axis=2)
    counts = np.bincount(PALETTE_NAME[distance.argmin(axis=1)], minlength=len(COLOUR_NAMES))
    black = COLOUR_NAMES.index("Black")
    if counts[black] <= 0.6 * counts.sum():
        counts[black] = 0
    return COLOUR_NAMES[int(counts.argmax())]


def _words(text: str) -> str:
    # Capitalise each word's first letter only: str.title() would write "Man’S Shoe" and "Côte D’Ivoire".
    return " ".join(word[:1].upper() + word[1:] for word in text.replace("-", " ").split())


def _build(directory: Path, size: str) -> Path:
    emoji = _emoji()
    chosen = [(index, row) for index, row in enumerate(emoji) if size == "full" or index % 3 == 0]
    logger.info("%d base emoji kept, %d of them in the %s catalog", len(emoji), len(chosen), size)
    candidates = [
        lambda row: [f"package/color/svg/{row['hexcode']}.svg"],
        lambda row: _joypixels_names(row["hexcode"]),
        lambda row: _fluent_names(row["annotation"]),
    ]
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for vendor, (package, make_names) in enumerate(zip(PACKAGES, candidates, strict=True)):
        names = {index: make_names(row) for index, row in chosen}
        files = _members(_tarball(*package), {name for options in names.values() for name in options})
        misses = []
        for index, row in chosen:
            member = next((name for name in names[index] if name in files), None)
            if member is None:
                misses.append(row["annotation"])
                continue
            product = 10000 + 3 * index + vendor
            path = images / f"{product}.jpg"
            if not path.exists():  # else an earlier, interrupted build drew it already
                partial = path.with_name(f"{path.name}.partial")  # renamed when whole, so never reused half-written
                try:
                    _render(files[member], vendor).save(partial, "JPEG", quality=92)
                except Exception:  # one broken drawing must not stop the catalog
                    logger.exception("%s %s (%s): cannot render, skipped", VENDORS[vendor], row["hexcode"], member)
                    continue
                partial.replace(path)
            with Image.open(path) as image:  # colour from the saved JPEG, so a reused image names the same
                colour = _base_colour(image)
            subgroup = _words(row["subgroups"])
            rows.append({
                "id": product, "gender": "Unisex", "masterCategory": _words(row["group"]),
                "subCategory": subgroup, "articleType": subgroup, "baseColour": colour, "pattern": "Solid",
                "productDisplayName": f"{VENDORS[vendor]} {_words(row['annotation'])}",
                "emoji": row["hexcode"], "vendor": VENDORS[vendor],
            })  # fmt: skip
        logger.info("%s: %d of %d emoji matched; misses e.g. %s", VENDORS[vendor], len(chosen) - len(misses),
                    len(chosen), ", ".join(misses[:8]) or "none")  # fmt: skip
    rows.sort(key=lambda row: int(row["id"]))  # type: ignore[call-overload]
    with (directory / "styles.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, STYLE_COLUMNS, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    # rows.json last, through a rename: its presence is what says the directory is complete.
    partial = directory / "rows.json.partial"
    partial.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    partial.replace(directory / "rows.json")
    return directory


def _catalog(directory: Path, size: str) -> Path:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    if (directory / "rows.json").exists():
        return directory
    logger.info("building the %s art catalog in %s", size, directory)
    return _build(directory, size)


def art_catalog_dir(*, size: str = "small") -> Path:
    """The catalog's directory (styles.csv, images/<id>.jpg, rows.json), built on first use."""
    return _catalog(CACHE / f"catalog-{size}", size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every base emoji, not every 3rd")
    parser.add_argument("--out", type=Path, default=None, help="build here instead of the cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size = "full" if args.full else "small"
    directory = _catalog(args.out, size) if args.out else art_catalog_dir(size=size)
    rows = json.loads((directory / "rows.json").read_text(encoding="utf-8"))
    vendors = Counter(row["vendor"] for row in rows)
    print(f"{size} art catalog: {len(rows)} products of {len({row['emoji'] for row in rows})} emoji")
    print("  per vendor: " + ", ".join(f"{name} {vendors[name]}" for name in VENDORS))
    groups, subgroups = ({row[key] for row in rows} for key in ("masterCategory", "subCategory"))
    print(f"  {len(groups)} groups, {len(subgroups)} subgroups")
    print("  baseColour: " + ", ".join(f"{k} {n}" for k, n in Counter(r["baseColour"] for r in rows).most_common(8)))
    print(f"  {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
