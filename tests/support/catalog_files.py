"""Catalog files for tests: styles.csv lines, image folders, zips, and running an import job in process."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from gallery import tasks
from gallery.catalog import COLUMNS
from gallery.models import ImportJob

HEADER = ",".join(COLUMNS)


def write_catalog(directory: Path, lines: list[str], images: dict[int, bytes]) -> Path:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "styles.csv").write_text("\n".join([HEADER, *lines]) + "\n")
    for product_id, data in images.items():
        (directory / "images" / f"{product_id}.jpg").write_bytes(data)
    return directory


def job_id_of(response) -> int:
    assert response.status_code == 302, response.content.decode()[:2000]
    location = response["Location"]
    assert location.startswith("/admin/gallery/importjob/") and location.endswith("/change/"), location
    return int(location.split("/")[-3])


def run_job_inline(job_id: int) -> ImportJob:
    """The job's Celery task, run eagerly in this process (as a worker would run it)."""
    tasks.import_catalog_job.apply(args=[job_id])
    return ImportJob.objects.get(id=job_id)


# --- Bulk zip -------------------------------------------------------------------------------------------

STYLES_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


def styles_csv(*ids: int) -> bytes:
    rows = "".join(f"{i},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Bulk Tshirt {i}\n" for i in ids)
    return (STYLES_HEADER + rows).encode()


def make_zip(members: list[tuple[str | zipfile.ZipInfo, bytes]], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()
