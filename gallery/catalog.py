"""Reading the Fashion Product Images layout: ``styles.csv`` plus ``images/<id>.jpg``.

The real ``styles.csv`` has lines whose display name holds commas without
quotes. The name is the last column, so any fields past the tenth belong to it
and are joined back. Rows are parsed and validated one chunk at a time, so a
catalog of any size streams through in constant memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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
MAX_ID = 2**53  # ids travel through JSON; larger ones would lose precision


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


def _repair_line(fields: list[str]) -> list[str]:
    """Join the fields of an unquoted, comma-holding display name back together."""
    head = fields[: len(COLUMNS) - 1]
    return [*head, ",".join(fields[len(COLUMNS) - 1 :])]


def _header_check(path: Path) -> None:
    with path.open(encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip().lstrip("\ufeff")
    found = [column.strip() for column in header.split(",")]
    missing = [column for column in COLUMNS if column not in found]
    if missing:
        raise CatalogError(f"{path.name} lacks the columns {', '.join(missing)}; its header is {header[:200]!r}")


def _row_parse(line: int, raw: dict[str, object]) -> CatalogRow | RowError:
    text = {key: ("" if value is None or pd.isna(value) else str(value).strip()) for key, value in raw.items()}
    try:
        product_id = int(text["id"])
    except ValueError:
        return RowError(line, f"id {text['id'][:40]!r} is not a whole number")
    if not 0 < product_id < MAX_ID:
        return RowError(line, f"id {product_id} is out of range")
    fields: dict[str, object] = {}
    for column, (field, max_length) in FIELDS.items():
        value = text[column]
        if "\x00" in value:
            return RowError(line, f"{column} holds a NUL byte")
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
    return CatalogRow(line=line, id=product_id, fields=fields)


def styles_read(path: Path, *, chunk_rows: int = 2000) -> Iterator[CatalogRow | RowError]:
    """Yield each data line of ``styles.csv`` as a CatalogRow or the reason it is unusable."""
    if not path.is_file():
        raise CatalogError(f"{path} does not exist")
    _header_check(path)
    reader = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        engine="python",
        on_bad_lines=_repair_line,
        chunksize=chunk_rows,
        encoding="utf-8",
        encoding_errors="replace",
    )
    for chunk in reader:
        chunk.columns = [str(c).strip().lstrip("\ufeff") for c in chunk.columns]
        for position, raw in zip(chunk.index, chunk[list(COLUMNS)].to_dict("records"), strict=True):
            # Line numbers as a person counts them: the header is line 1.
            yield _row_parse(int(position) + 2, raw)


def image_path_for(directory: Path, product_id: int) -> Path:
    return directory / "images" / f"{product_id}.jpg"
