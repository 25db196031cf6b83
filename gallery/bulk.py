"""Safe reading of a catalog zip (styles.csv + images/) uploaded by an admin.

Two steps: ``zip_inspect_catalog`` checks the archive's directory and the
styles.csv header in the upload request (milliseconds, even for a 44,000-image
zip), so a bad archive is refused at once; ``zip_extract_catalog`` checks again
and writes the files, in the worker that imports them.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from gallery.catalog import CatalogError, header_parse, image_id_of

MAX_MEMBERS = 200_000
MAX_UNCOMPRESSED_BYTES = 4 * 1024**3
MAX_MEMBER_BYTES = 50 * 1024**2
# Real JPEGs barely compress; a member far beyond this ratio is a zip bomb.
MAX_RATIO = 200
_HEADER_MAX_BYTES = 64 * 1024


class BulkUploadRejected(ValueError):
    """The archive is unsafe or not in the catalog layout; says why (never with a server path)."""


@dataclass(frozen=True)
class CatalogZip:
    """What a checked archive holds: the members to extract and how many styles.csv rows it has."""

    members: list[tuple[zipfile.ZipInfo, PurePosixPath]]
    images: int
    rows: int


def _member_names(infos: list[zipfile.ZipInfo]) -> list[PurePosixPath | None]:
    """Each member's path, refusing unsafe ones; None for entries naming nothing (``./``, ``""``)."""
    names: list[PurePosixPath | None] = []
    for info in infos:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if info.filename.startswith(("/", "\\")) or name.is_absolute() or ".." in name.parts:
            raise BulkUploadRejected(f"The zip holds an unsafe path: {info.filename[:100]!r}.")
        if not name.parts:
            # "./" or an empty name: the archive's own top folder, which some zip tools list.
            names.append(None)
            continue
        if ":" in name.parts[0]:
            raise BulkUploadRejected(f"The zip holds an unsafe path: {info.filename[:100]!r}.")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise BulkUploadRejected(f"The zip holds a symbolic link: {info.filename[:100]!r}.")
        names.append(name)
    return names


def _catalog_root(infos: list[zipfile.ZipInfo], names: list[PurePosixPath | None]) -> PurePosixPath:
    """The folder inside the zip that holds styles.csv (the root, or one folder down)."""
    # A folder named styles.csv/ is not the file: only file members count.
    roots = [
        name.parent
        for info, name in zip(infos, names, strict=True)
        if name is not None and not info.is_dir() and name.name == "styles.csv" and len(name.parts) <= 2
    ]
    if len(roots) != 1:
        raise BulkUploadRejected("The zip must hold exactly one styles.csv file, at its top or in one folder.")
    return roots[0]


def _members_check(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BulkUploadRejected(f"The zip holds more than {MAX_MEMBERS} files.")
    names = _member_names(infos)
    root = _catalog_root(infos, names)
    wanted = []
    total = 0
    for info, name in zip(infos, names, strict=True):
        if name is None or info.is_dir() or not name.is_relative_to(root):
            continue
        relative = name.relative_to(root)
        is_styles = relative.parts == ("styles.csv",)
        # The import finds an image by the same rule (gallery.catalog.images_find).
        is_image = len(relative.parts) == 2 and relative.parts[0] == "images" and image_id_of(relative.name) is not None
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
    return wanted


def _damaged(info: zipfile.ZipInfo, exc: Exception) -> BulkUploadRejected:
    # A bad CRC, a size the headers lie about, a cut-off stream.
    return BulkUploadRejected(f"The zip is damaged: {info.filename[:100]} cannot be read ({exc}).")


def _styles_count_rows(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Check styles.csv's header and count its data lines, reading it once (it is at most MAX_MEMBER_BYTES)."""
    head = b""
    newlines = 0
    last = b"\n"
    read = 0
    try:
        with archive.open(info) as source:
            while block := source.read(1 << 20):
                read += len(block)
                if read > MAX_MEMBER_BYTES:
                    raise BulkUploadRejected(f"{info.filename[:100]} is larger than the zip declares.")
                if len(head) < _HEADER_MAX_BYTES:
                    head += block[: _HEADER_MAX_BYTES - len(head)]
                newlines += block.count(b"\n")
                last = block[-1:]
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _damaged(info, exc) from exc
    try:
        # The reader's own header rule (a BOM, quoted names, CRLF), so a header accepted here is read alike.
        header_parse(head.split(b"\n", 1)[0])
    except CatalogError as exc:
        raise BulkUploadRejected(str(exc)) from exc
    lines = newlines + (0 if last == b"\n" else 1)
    return max(0, lines - 1)


def _zip_open(upload: BinaryIO | Path) -> zipfile.ZipFile:
    """``upload`` opened as a zip archive; raises BulkUploadRejected when it is not one."""
    try:
        return zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BulkUploadRejected("The file is not a readable zip archive.") from exc


def zip_inspect_catalog(upload: BinaryIO | Path) -> CatalogZip:
    """Check ``upload`` without extracting it; raises BulkUploadRejected with the reason.

    Checked: it is a zip; member names (no absolute paths, no ``..``, no
    links); count, declared sizes and compression ratios of the members we
    would extract; exactly one styles.csv, whose header has every column. Reads
    the zip's directory and styles.csv only.
    """
    archive = _zip_open(upload)
    with archive:
        members = _members_check(archive)
        styles = next(info for info, relative in members if relative.parts == ("styles.csv",))
        rows = _styles_count_rows(archive, styles)
    return CatalogZip(members=members, images=len(members) - 1, rows=rows)


def zip_extract_catalog(upload: BinaryIO | Path, *, destination: Path) -> Path:
    """Extract styles.csv and images/<id>.jpg from ``upload`` into ``destination``; returns the catalog folder.

    Image names follow ``gallery.catalog.image_id_of`` (``.jpg`` or ``.jpeg``,
    any case). Everything is checked before a byte is written (as
    ``zip_inspect_catalog`` does). Sizes are checked again while extracting,
    since a zip can lie about them. Other members are ignored.
    """
    archive = _zip_open(upload)
    with archive:
        wanted = _members_check(archive)
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
                raise _damaged(info, exc) from exc
    return catalog
