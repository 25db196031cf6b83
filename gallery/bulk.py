"""Safe extraction of a catalog zip (styles.csv + images/) uploaded by an admin."""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

MAX_MEMBERS = 200_000
MAX_UNCOMPRESSED_BYTES = 4 * 1024**3
MAX_MEMBER_BYTES = 50 * 1024**2
# Real JPEGs barely compress; a member far beyond this ratio is a zip bomb.
MAX_RATIO = 200
_IMAGE_NAME = re.compile(r"^\d{1,15}\.jpg$", re.IGNORECASE)


class BulkUploadRejected(ValueError):
    """The archive is unsafe or not in the catalog layout; says why."""


def _catalog_root(names: list[PurePosixPath]) -> PurePosixPath:
    """The folder inside the zip that holds styles.csv (the root, or one folder down)."""
    roots = [name.parent for name in names if name.name == "styles.csv" and len(name.parts) <= 2]
    if len(roots) != 1:
        raise BulkUploadRejected("The zip must hold exactly one styles.csv, at its top or in one folder.")
    return roots[0]


def zip_extract_catalog(upload: BinaryIO, *, destination: Path) -> Path:
    """Extract styles.csv and images/<id>.jpg from ``upload`` into ``destination``; returns the catalog folder.

    Everything is checked before a byte is written: member names (no absolute
    paths, no ``..``, no links), count, declared sizes and compression ratios.
    Sizes are checked again while extracting, since a zip can lie about them.
    Other members are ignored.
    """
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BulkUploadRejected("The file is not a readable zip archive.") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BulkUploadRejected(f"The zip holds more than {MAX_MEMBERS} files.")
        names = []
        for info in infos:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if (
                name.is_absolute()
                or ".." in name.parts
                or info.filename.startswith(("/", "\\"))
                or ":" in name.parts[0]
            ):
                raise BulkUploadRejected(f"The zip holds an unsafe path: {info.filename[:100]!r}.")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise BulkUploadRejected(f"The zip holds a symbolic link: {info.filename[:100]!r}.")
            names.append(name)
        root = _catalog_root(names)
        wanted = []
        total = 0
        for info, name in zip(infos, names, strict=True):
            relative = name.relative_to(root) if name.is_relative_to(root) else None
            if relative is None or info.is_dir():
                continue
            is_styles = relative.parts == ("styles.csv",)
            is_image = len(relative.parts) == 2 and relative.parts[0] == "images" and _IMAGE_NAME.match(relative.name)
            if not (is_styles or is_image):
                continue
            if info.flag_bits & 0x1:
                raise BulkUploadRejected(f"{info.filename[:100]} is encrypted; upload the zip without a password.")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BulkUploadRejected(f"{info.filename[:100]} uses a compression method we do not read.")
            if info.file_size > MAX_MEMBER_BYTES:
                raise BulkUploadRejected(f"{info.filename[:100]} is larger than {MAX_MEMBER_BYTES // 1024**2} MB.")
            if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
                raise BulkUploadRejected(f"{info.filename[:100]} expands suspiciously (a zip bomb?).")
            total += info.file_size
            if total > MAX_UNCOMPRESSED_BYTES:
                raise BulkUploadRejected("The zip expands beyond the size limit.")
            wanted.append((info, relative))
        catalog = destination / "catalog"
        (catalog / "images").mkdir(parents=True)
        for info, relative in wanted:
            target = catalog.joinpath(*relative.parts)
            try:
                with archive.open(info) as source, target.open("wb") as out:
                    written = 0
                    while block := source.read(1 << 16):
                        written += len(block)
                        if written > info.file_size or written > MAX_MEMBER_BYTES:
                            raise BulkUploadRejected(f"{info.filename[:100]} is larger than the zip declares.")
                        out.write(block)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                # A bad CRC, a size the headers lie about, a cut-off stream.
                raise BulkUploadRejected(f"The zip is damaged: {info.filename[:100]} cannot be read ({exc}).") from exc
    return catalog
