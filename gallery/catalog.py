"""Reading the Fashion Product Images layout: ``styles.csv`` plus ``images/<id>.jpg``.

Every physical line of ``styles.csv`` after the header comes out as one
CatalogRow or one RowError, numbered as a person counts lines (the header is
line 1), so an import's counts always add up to the file's data lines. The
real file has lines whose display name holds commas without quotes; the name
is the last column, so any fields past the header's width belong to it and are
joined back. The file is read one line at a time, in constant memory.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

COLUMNS = (
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
)
# CSV column -> Product field, with the longest value each field stores.
FIELDS = {
    "gender": ("gender", 32),
    "masterCategory": ("master_category", 64),
    "subCategory": ("sub_category", 64),
    "articleType": ("article_type", 64),
    "baseColour": ("base_colour", 32),
    "season": ("season", 16),
    "usage": ("usage", 32),
    "productDisplayName": ("name", 255),
}
# Optional columns, read when the header has them: availability (``active``: 1/0, true/false, yes/no)
# and the stock count. A blank cell, like an absent column, leaves the product's value as it is.
OPTIONAL_COLUMNS = ("active", "stock")
_TRUE = frozenset({"1", "true", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "n", "f"})
MAX_STOCK = 2**31 - 1
MAX_ID = 2**53  # ids travel through JSON; larger ones would lose precision
# A valid row is well under 2 KB; a longer line is skipped without being held in memory whole.
# (Below the csv module's field limit of 131,072 characters, so that limit is never what refuses a line.)
MAX_LINE_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"
# The one rule for an image's file name, for the bulk upload's layout check and the import alike:
# ``<id>.jpg`` or ``<id>.jpeg`` in any letter case (ASCII digits only).
_IMAGE_NAME = re.compile(r"([0-9]{1,15})\.jpe?g", re.IGNORECASE)
# What the csv module's strict parser says (CPython's messages), in words a catalog admin can act on.
_CSV_REASONS = {
    "unexpected end of data": "a quoted field is never closed on this line",
    "',' expected after '\"'": "a quoted field is followed by more characters before the next comma",
    "new-line character seen": "the line holds a carriage return (\\r) inside it",
}


@dataclass(frozen=True)
class CatalogRow:
    """One valid line of styles.csv, in Product field names."""

    line: int
    id: int
    fields: dict[str, object]


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (no styles.csv, wrong header)."""


def image_id_of(name: str) -> int | None:
    """The product id an image file's name gives (``15970.jpg``, ``15970.JPEG``), or None if it is no image name."""
    match = _IMAGE_NAME.fullmatch(name)
    return int(match[1]) if match else None


def images_find(directory: Path) -> dict[int, list[str]]:
    """The file names in ``directory/images`` that ``image_id_of`` accepts, by product id (sorted; usually one)."""
    found: dict[int, list[str]] = {}
    try:
        entries = list(os.scandir(directory / "images"))
    except FileNotFoundError:
        return found
    for entry in entries:
        product_id = image_id_of(entry.name)
        if product_id is not None and entry.is_file():
            found.setdefault(product_id, []).append(entry.name)
    for names in found.values():
        names.sort()
    return found


def header_parse(line: bytes) -> list[str]:
    """The column names of the header line ``line`` (a BOM and line ending allowed), in order.

    Raises CatalogError naming the expected columns it lacks.
    """
    text = line.removeprefix(_BOM).decode("utf-8", errors="replace").rstrip("\r\n")
    try:
        names = [name.strip() for name in next(csv.reader([text], strict=True), [])]
    except csv.Error:
        names = [name.strip() for name in text.split(",")]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise CatalogError(f"styles.csv lacks the columns {', '.join(missing)}; its header is {text[:200]!r}")
    return names


def _lines(fh: BinaryIO) -> Iterator[bytes | None]:
    """Each physical line without its ending (LF or CRLF); None for a line longer than MAX_LINE_BYTES."""
    while raw := fh.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            # Too long to be a row: read past the rest of it a piece at a time.
            while (rest := fh.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield raw.removesuffix(b"\n").removesuffix(b"\r")


def _row_parse(line: int, raw: dict[str, str]) -> CatalogRow | RowError:
    text = {key: value.strip() for key, value in raw.items()}
    try:
        product_id = int(text["id"])
    except ValueError:
        return RowError(line, f"id {text['id'][:40]!r} is not a whole number")
    if not 0 < product_id < MAX_ID:
        return RowError(line, f"id {product_id} is out of range")
    fields: dict[str, object] = {}
    for column, (field, max_length) in FIELDS.items():
        value = text[column]
        if len(value) > max_length:
            return RowError(line, f"{column} is longer than {max_length} characters")
        fields[field] = value
    if not fields["name"]:
        return RowError(line, "productDisplayName is empty")
    year = text["year"]
    if year:
        try:
            fields["year"] = int(float(year))
        except ValueError:
            return RowError(line, f"year {year[:20]!r} is not a number")
        if not 1900 <= fields["year"] <= 2100:
            return RowError(line, f"year {fields['year']} is out of range")
    else:
        fields["year"] = None
    active = text.get("active", "")
    if active:
        if active.lower() not in _TRUE | _FALSE:
            return RowError(line, f"active {active[:20]!r} is not one of 1, 0, true, false, yes, no")
        fields["active"] = active.lower() in _TRUE
    stock = text.get("stock", "")
    if stock:
        if not (stock.isascii() and stock.isdigit()) or int(stock) > MAX_STOCK:
            return RowError(line, f"stock {stock[:20]!r} is not a whole number from 0 to {MAX_STOCK}")
        fields["stock"] = int(stock)
    return CatalogRow(line=line, id=product_id, fields=fields)


def _line_parse(line: int, raw: bytes | None, positions: dict[str, int], width: int) -> CatalogRow | RowError:
    """One data line of styles.csv, parsed on its own: a quote never reaches into the next line."""
    if raw is None:
        return RowError(line, f"the line is longer than {MAX_LINE_BYTES} bytes")
    if b"\x00" in raw:
        return RowError(line, "the line holds a NUL byte")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RowError(line, f"the line is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
    if not text.strip():
        return RowError(line, "the line is blank")
    try:
        fields = next(csv.reader((text,), strict=True))
    except csv.Error as exc:
        message = str(exc)
        reason = next((words for key, words in _CSV_REASONS.items() if message.startswith(key)), None)
        return RowError(line, reason or f"the line cannot be read as CSV ({message})")
    if len(fields) < width:
        return RowError(line, f"the line has {len(fields)} fields, the header {width}")
    if len(fields) > width:
        if positions["productDisplayName"] != width - 1:
            return RowError(line, f"the line has {len(fields)} fields, the header {width}")
        # The real file's fault: commas inside the display name (the last column), unquoted.
        fields[width - 1 :] = [",".join(fields[width - 1 :])]
    return _row_parse(line, {column: fields[position] for column, position in positions.items()})


def styles_read(path: Path) -> Iterator[CatalogRow | RowError]:
    """Yield each data line of ``styles.csv``, in order, as a CatalogRow or the reason it is unusable.

    Every line after the header yields exactly one item, numbered by its
    physical line (the header is line 1). Raises CatalogError when the file is
    missing or its header lacks a column.
    """
    # Not pandas.read_csv: it drops lines it cannot parse without calling on_bad_lines (a quoted
    # field followed by more characters vanishes; a quote never closed swallows the lines after it),
    # and then its row numbers are no longer the file's lines. The csv module reads one physical
    # line at a time here, so each line is accounted for and keeps its own number.
    if not path.is_file():
        raise CatalogError(f"{path} does not exist")
    with path.open("rb") as fh:
        lines = _lines(fh)
        header = next(lines, b"")
        if header is None:
            raise CatalogError(f"the first line of styles.csv, its header, is longer than {MAX_LINE_BYTES} bytes")
        names = header_parse(header)
        positions = {column: names.index(column) for column in (*COLUMNS, *OPTIONAL_COLUMNS) if column in names}
        for number, raw in enumerate(lines, start=2):
            yield _line_parse(number, raw, positions, len(names))
