"""Small catalogs whose products the tests embed from generated images."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.images import jpeg_bytes

# --- Fixtures: a small embedded catalog, isolated cache, storage guard ------------------------

COLOURS = {
    "Red": (200, 30, 30),
    "Blue": (30, 60, 200),
    "Green": (30, 160, 40),
    "Yellow": (230, 200, 20),
    "Black": (20, 20, 20),
    "Purple": (120, 40, 160),
}
TYPES = {"Tshirts": "box", "Caps": "disc"}
GENDERS = ("Men", "Women")


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    name: str
    gender: str
    article_type: str
    colour: str
    image: bytes


def _catalog_entries() -> list[CatalogEntry]:
    entries = []
    pid = 101
    for colour, rgb in COLOURS.items():
        for article_type, shape in TYPES.items():
            for gender in GENDERS:
                image = jpeg_bytes(colour=rgb, shape=shape, size=(120, 160))
                name = f"{gender} {colour} {article_type} {pid}"
                entries.append(CatalogEntry(pid, name, gender, article_type, colour, image))
                pid += 1
    return entries


CATALOG = _catalog_entries()
CATALOG_IDS = [entry.id for entry in CATALOG]


LONG_ID = 1_000_000_000_000_001  # 16 digits: importable, and once refused by the trail parser
LARGEST_ID = 2**53 - 1  # the largest id catalog import accepts


# --- Fixtures: a few embedded products, the encoder loaded once ----------------------------------------

PRODUCTS = {
    11: ("Men Red Tshirts", (200, 30, 30), "box"),
    12: ("Men Blue Tshirts", (30, 60, 200), "box"),
    13: ("Women Green Caps", (30, 160, 40), "disc"),
    14: ("Women Red Caps", (210, 40, 30), "disc"),
    LONG_ID: ("Men Black Tshirts", (20, 20, 20), "box"),
    LARGEST_ID: ("Women Yellow Caps", (230, 200, 20), "disc"),
}
