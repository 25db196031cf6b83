"""The offline demo catalog: Fashion Product Images layout, deterministic, true colours, the real CSV's faults.

None of these tests touch the database.
"""

import ast
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from lab import demo
from lab.demo import PALETTE, STYLES_HEADER, DemoCatalog, demo_catalog_write

COUNT = 72

# Written out independently of the generator: the dataset's own (masterCategory, subCategory) per articleType.
CATEGORIES = {
    "Tshirts": ("Apparel", "Topwear"),
    "Shirts": ("Apparel", "Topwear"),
    "Tops": ("Apparel", "Topwear"),
    "Sweatshirts": ("Apparel", "Topwear"),
    "Jackets": ("Apparel", "Topwear"),
    "Jeans": ("Apparel", "Bottomwear"),
    "Trousers": ("Apparel", "Bottomwear"),
    "Shorts": ("Apparel", "Bottomwear"),
    "Skirts": ("Apparel", "Bottomwear"),
    "Dresses": ("Apparel", "Dress"),
    "Casual Shoes": ("Footwear", "Shoes"),
    "Sports Shoes": ("Footwear", "Shoes"),
    "Heels": ("Footwear", "Shoes"),
    "Formal Shoes": ("Footwear", "Shoes"),
    "Sandals": ("Footwear", "Sandal"),
    "Flip Flops": ("Footwear", "Flip Flops"),
    "Handbags": ("Accessories", "Bags"),
    "Backpacks": ("Accessories", "Bags"),
    "Watches": ("Accessories", "Watches"),
    "Caps": ("Accessories", "Headwear"),
    "Sunglasses": ("Accessories", "Eyewear"),
    "Belts": ("Accessories", "Belts"),
}
WOMEN_ONLY = {"Dresses", "Heels", "Skirts"}
GENDERS = {"Men", "Women", "Boys", "Girls", "Unisex"}
SEASONS = {"Summer", "Winter", "Fall", "Spring"}
USAGES = {"Casual", "Formal", "Sports", "Ethnic", "Party"}
PATTERN_WORDS = ("Striped", "Checked", "Polka Dot", "Printed")


def _rows(directory: Path) -> list[list[str]]:
    """styles.csv parsed the only safe way: the first nine commas separate fields, the rest belong to the name."""
    lines = (directory / "styles.csv").read_text(encoding="utf-8").splitlines()
    return [line.split(",", 9) for line in lines[1:]]


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0-255, last axis) to CIELAB (D65), so 'closer colour' means closer as seen, not as stored."""
    c = np.asarray(rgb, float) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ to_xyz.T / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _product_pixels(path: Path) -> np.ndarray:
    """RGB of the pixels that differ from the background (estimated from two corners)."""
    a = np.asarray(Image.open(path).convert("RGB"), float)
    corners = np.concatenate([a[:8, :8].reshape(-1, 3), a[-8:, -8:].reshape(-1, 3)])
    bg = np.median(corners, axis=0)
    return a[np.linalg.norm(a - bg, axis=2) > 12]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> DemoCatalog:
    return demo_catalog_write(out_dir=tmp_path_factory.mktemp("demo_a"), count=COUNT, seed=7)


def test_generator_has_no_django_imports():
    tree = ast.parse(Path(demo.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names]
    assert not [m for m in modules if m.split(".")[0] == "django"]


def test_same_seed_gives_byte_identical_files(catalog, tmp_path):
    again = demo_catalog_write(out_dir=tmp_path, count=COUNT, seed=7)
    assert (again.directory / "styles.csv").read_bytes() == (catalog.directory / "styles.csv").read_bytes()
    names = sorted(p.name for p in (catalog.directory / "images").iterdir())
    assert names == sorted(p.name for p in (again.directory / "images").iterdir())
    for name in names:
        assert (again.directory / "images" / name).read_bytes() == (catalog.directory / "images" / name).read_bytes()
    assert again.article_types == catalog.article_types


def test_different_seed_gives_a_different_catalog(catalog, tmp_path):
    other = demo_catalog_write(out_dir=tmp_path, count=24, seed=8)
    ids_a = {row[0] for row in _rows(catalog.directory)}
    ids_b = {row[0] for row in _rows(other.directory)}
    assert len(ids_a & ids_b) < 3
    first_a = (catalog.directory / "images" / f"{_rows(catalog.directory)[0][0]}.jpg").read_bytes()
    first_b = (other.directory / "images" / f"{_rows(other.directory)[0][0]}.jpg").read_bytes()
    assert first_a != first_b


def test_header_and_summary(catalog):
    lines = (catalog.directory / "styles.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == STYLES_HEADER
    assert (
        STYLES_HEADER
        == "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
    )
    assert len(lines) == COUNT + 1
    assert catalog.count == COUNT
    counted: dict[str, int] = {}
    for row in _rows(catalog.directory):
        counted[row[4]] = counted.get(row[4], 0) + 1
    assert catalog.article_types == counted
    assert set(counted) == set(CATEGORIES), "every article type appears once the count allows"


def test_rows_are_consistent(catalog):
    for row in _rows(catalog.directory):
        assert len(row) == 10
        pid, gender, master, sub, article, colour, season, year, usage, name = row
        assert (master, sub) == CATEGORIES[article], row
        assert gender in GENDERS
        if article in WOMEN_ONLY:
            assert gender == "Women", row
        assert colour in PALETTE
        assert season in SEASONS
        assert 2011 <= int(year) <= 2018
        assert usage in USAGES
        assert f" {gender} {colour} " in name, name
        assert '"' not in name


def test_ids_are_unique_dataset_like_numbers(catalog):
    ids = [int(row[0]) for row in _rows(catalog.directory)]
    assert len(set(ids)) == len(ids)
    assert all(1000 <= i <= 99999 for i in ids)
    assert ids != sorted(ids), "ids are drawn, not 1..n"


def test_every_id_has_a_portrait_jpeg(catalog):
    ids = {row[0] for row in _rows(catalog.directory)}
    assert {p.stem for p in (catalog.directory / "images").iterdir()} == ids
    sizes = set()
    for pid in ids:
        with Image.open(catalog.directory / "images" / f"{pid}.jpg") as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            width, height = im.size
            assert 440 <= width <= 520 and 580 <= height <= 700
            assert 0.70 <= width / height <= 0.80
            sizes.add(im.size)
    assert len(sizes) > 1, "sizes vary a little, as photos do"


def test_names_carry_the_real_files_bare_commas(catalog):
    path = catalog.directory / "styles.csv"
    text = path.read_text(encoding="utf-8")
    assert '"' not in text, "no quoting at all, like the real styles.csv"
    lines = text.splitlines()[1:]
    comma_names = [line for line in lines if line.count(",") > 9]
    assert 1 <= len(comma_names) <= max(2, round(0.06 * COUNT))
    for line in comma_names:
        assert "," in line.split(",", 9)[9]
    # a naive read chokes on them, so the importer has to split on the first nine commas itself
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(path)


def test_colours_are_true(catalog):
    """Solid products: the mean colour of the product's pixels is nearest its baseColour (CIELAB distance).
    Patterned ones: the secondary colour legitimately shifts the mean, so the most common colour must be it."""
    names = list(PALETTE)
    palette = _lab(np.array([PALETTE[n] for n in names], float))
    wrong = []
    for row in _rows(catalog.directory):
        pixels = _product_pixels(catalog.directory / "images" / f"{row[0]}.jpg")
        assert len(pixels) > 2000, row
        if any(word in row[9] for word in PATTERN_WORDS):
            nearest = np.linalg.norm(_lab(pixels[::5])[:, None, :] - palette[None], axis=2).argmin(axis=1)
            seen = names[int(np.bincount(nearest, minlength=len(names)).argmax())]
        else:
            seen = names[int(np.linalg.norm(palette - _lab(pixels.mean(axis=0)), axis=1).argmin())]
        if seen != row[5]:
            wrong.append((row[0], row[4], row[5], seen))
    assert not wrong


def test_products_are_not_near_duplicates(catalog):
    thumbs = {}
    for row in _rows(catalog.directory):
        with Image.open(catalog.directory / "images" / f"{row[0]}.jpg") as im:
            thumbs[row[0]] = np.asarray(im.convert("RGB").resize((24, 32)), float)
    ids = list(thumbs)
    closest = min(np.abs(thumbs[a] - thumbs[b]).mean() for i, a in enumerate(ids) for b in ids[i + 1 :])
    assert closest > 2.0


def test_rejects_a_count_below_one(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        demo_catalog_write(out_dir=tmp_path, count=0)


def test_management_command(tmp_path):
    out = io.StringIO()
    call_command("make_demo_catalog", str(tmp_path / "demo"), "--count", "5", "--seed", "3", stdout=out)
    summary = out.getvalue().strip()
    assert summary.startswith("Wrote 5 demo products")
    assert str(tmp_path / "demo") in summary
    assert len(_rows(tmp_path / "demo")) == 5
    assert len(list((tmp_path / "demo" / "images").glob("*.jpg"))) == 5
    with pytest.raises(CommandError):
        call_command("make_demo_catalog", str(tmp_path / "none"), "--count", "0", stdout=io.StringIO())
