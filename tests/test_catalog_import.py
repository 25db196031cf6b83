from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from gallery.catalog import RowError, styles_read
from gallery.models import Product
from gallery.services import catalog_import
from recommender.models import EmbedStatus
from tests.support.catalog_files import HEADER, write_catalog
from tests.support.engine import embed_status
from tests.support.images import jpeg_bytes


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return write_catalog(
        tmp_path / "cat",
        [
            "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
            "39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Peter England Men Party Blue Jeans",
            # The real file's fault: commas inside the display name, unquoted.
            "59263,Women,Accessories,Watches,Watches,Silver,Winter,2016,Casual,Titan Women Silver Watch, Analog, Steel",
            "21379,Men,Apparel,Bottomwear,Track Pants,Black,Fall,2011,Casual,Manchester United Men Solid Black Pants",
        ],
        {
            15970: jpeg_bytes(colour=(20, 30, 90)),
            39386: jpeg_bytes(colour=(40, 70, 160)),
            59263: jpeg_bytes(colour=(190, 190, 190), shape="disc"),
            21379: jpeg_bytes(colour=(10, 10, 10)),
        },
    )


@pytest.mark.django_db
def test_import_creates_products_with_dataset_ids_and_thumbnails(catalog: Path):
    summary = catalog_import(directory=catalog, enqueue=False, workers=1)

    assert (summary.created, summary.skipped) == (4, 0)
    shirt = Product.objects.get(id=15970)
    assert shirt.name == "Turtle Check Men Navy Blue Shirt"
    assert (shirt.master_category, shirt.article_type, shirt.base_colour, shirt.year) == (
        "Apparel",
        "Shirts",
        "Navy Blue",
        2011,
    )
    assert embed_status(shirt.id) == EmbedStatus.PENDING
    with shirt.thumbnail.open() as fh:
        thumb = Image.open(fh)
        assert max(thumb.size) <= 320
    with shirt.image.open() as fh:
        assert Image.open(fh).format == "JPEG"


@pytest.mark.django_db
def test_import_joins_unquoted_commas_back_into_the_display_name(catalog: Path):
    catalog_import(directory=catalog, enqueue=False, workers=1)

    watch = Product.objects.get(id=59263)
    assert watch.name == "Titan Women Silver Watch, Analog, Steel"
    assert watch.usage == "Casual"


@pytest.mark.django_db
def test_import_skips_missing_corrupt_and_unparseable_rows_and_reports_them(tmp_path: Path):
    good = jpeg_bytes()
    directory = write_catalog(
        tmp_path / "bad",
        [
            "1001,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Good Red Tshirt",
            "1002,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,No Image Tshirt",
            "1003,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Corrupt Image Tshirt",
            "1004,Men,Apparel,Topwear,Tshirts,Red,Summer,20x2,Casual,Bad Year Tshirt",
            "abc,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Bad Id Tshirt",
            "1005,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Truncated Image Tshirt",
            "1006,Men,Apparel",
            "1001,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Duplicate id",
        ],
        {1001: good, 1003: b"this is not a jpeg", 1004: good, 1005: good[: len(good) // 2], 1006: good},
    )

    summary = catalog_import(directory=directory, enqueue=False, workers=2)

    assert summary.created == 1
    assert summary.skipped == 7
    assert list(Product.objects.values_list("id", flat=True)) == [1001]
    reasons = " | ".join(r.reason for r in summary.reasons)
    assert "missing" in reasons
    assert "not an image" in reasons
    assert "truncated" in reasons
    assert "year '20x2'" in reasons
    assert "'abc' is not a whole number" in reasons
    assert "the line has 3 fields, the header 10" in reasons
    assert "appears earlier" in reasons
    text = "\n".join(summary.lines())
    assert "7 skipped" in text
    assert "line 3:" in text  # 1002 sits on line 3 of the file


@pytest.mark.django_db
def test_reimport_updates_by_id_without_duplicates_or_reprocessing(catalog: Path):
    catalog_import(directory=catalog, enqueue=False, workers=1)
    shirt = Product.objects.get(id=15970)
    first_image, first_version = shirt.image.name, shirt.image_version

    again = catalog_import(directory=catalog, enqueue=False, workers=1)

    assert (again.created, again.updated, again.unchanged) == (0, 0, 4)
    assert Product.objects.count() == 4
    shirt.refresh_from_db()
    assert (shirt.image.name, shirt.image_version) == (first_image, first_version)

    # A changed row and a changed image update in place.
    styles = catalog / "styles.csv"
    styles.write_text(styles.read_text().replace("Turtle Check Men Navy Blue Shirt", "Turtle Check Men Navy Shirt"))
    (catalog / "images" / "39386.jpg").write_bytes(jpeg_bytes(colour=(200, 200, 30)))
    third = catalog_import(directory=catalog, enqueue=False, workers=1)

    assert (third.created, third.updated, third.unchanged) == (0, 2, 2)
    assert Product.objects.get(id=15970).name == "Turtle Check Men Navy Shirt"
    jeans = Product.objects.get(id=39386)
    assert jeans.image_version == 2
    assert embed_status(jeans.id) == EmbedStatus.PENDING
    assert Product.objects.count() == 4


@pytest.mark.django_db
def test_import_command_prints_summary_and_refuses_a_missing_catalog(catalog: Path, tmp_path: Path):
    out = io.StringIO()
    call_command("import_catalog", str(catalog), "--no-enqueue", "--workers", "1", stdout=out, verbosity=0)
    assert "4 created" in out.getvalue()
    assert "rows/s" in out.getvalue()

    with pytest.raises(CommandError, match="styles.csv"):
        call_command("import_catalog", str(tmp_path / "nowhere"), verbosity=0)


def test_reader_refuses_a_file_without_the_dataset_columns(tmp_path: Path):
    path = tmp_path / "styles.csv"
    path.write_text("id,name\n1,Shirt\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        list(styles_read(path))


def test_reader_streams_a_long_file_and_keeps_line_numbers(tmp_path: Path):
    lines = [f"{i},Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt {i}" for i in range(1, 5001)]
    lines[2999] = "3000,Men,Apparel,Topwear,Shirts,Blue,Fall,oops,Casual,Shirt 3000"
    path = tmp_path / "styles.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")

    rows = list(styles_read(path))

    errors = [row for row in rows if isinstance(row, RowError)]
    assert len(rows) == 5000
    assert [(e.line, "oops" in e.reason) for e in errors] == [(3001, True)]


@pytest.mark.django_db
def test_demo_catalog_imports_completely(demo_dir: Path):
    summary = catalog_import(directory=demo_dir, enqueue=False, workers=2)

    assert summary.skipped == 0
    assert Product.objects.count() == summary.created > 200
    assert Product.objects.filter(name__contains=",").exists()
