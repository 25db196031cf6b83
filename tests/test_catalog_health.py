"""Catalog health: the scan (command, Celery task in a real worker), its findings and the admin's actions on them."""

from __future__ import annotations

import io
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.utils.html import escape
from PIL import Image, ImageDraw

from gallery import catalog_health
from gallery.catalog import styles_read
from gallery.health_photos import NOISE_CORRELATION, photo_read, photos_difference
from gallery.models import FindingKind, HealthDismissal, HealthFinding, HealthScan, Product
from gallery.services import catalog_import
from recommender import services
from recommender.scan import pair_groups, vectors_scan
from tests.factories import ProductFactory
from tests.support.catalog_files import write_catalog
from tests.support.processes import celery_broker, wait_for

# Three article types the demo draws as clearly different shapes, ~15 products each.
TYPES = ("Watches", "Handbags", "Jeans")
COPY_ID, EXACT_ID, BLANK_ID, NO_IMAGE_ID, STATIC_ID = 990001, 990002, 990003, 990004, 990005


def _line(pid: int, fields: dict) -> str:
    return ",".join(
        str(v)
        for v in (
            pid,
            fields["gender"],
            fields["master_category"],
            fields["sub_category"],
            fields["article_type"],
            fields["base_colour"],
            fields["season"],
            fields.get("year") or "",
            fields["usage"],
            fields["name"],
        )
    )


def _resized_copy(data: bytes) -> bytes:
    """The same photo, lightly cropped, resized to 70 % and re-encoded at quality 60: other bytes, same picture."""
    with Image.open(io.BytesIO(data)) as image:
        w, h = image.size
        image = image.convert("RGB").crop((w // 30, h // 30, w - w // 30, h - h // 30))
        image = image.resize((int(image.width * 0.7), int(image.height * 0.7)))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=60)
    return out.getvalue()


@pytest.fixture
def health_catalog(demo_dir: Path, tmp_path: Path) -> dict[str, int]:
    """Demo watches, handbags and jeans with real image files, embedded and indexed, plus what the scan must find:
    a resized re-encoded copy, a byte-identical copy, a watch labelled as a handbag, a blank photo, no photo."""
    rows = [r for r in styles_read(demo_dir / "styles.csv") if hasattr(r, "fields")]
    rows = [r for r in rows if r.fields["article_type"] in TYPES]
    images = {r.id: (demo_dir / "images" / f"{r.id}.jpg").read_bytes() for r in rows}
    # The demo draws one type in one colour nearly alike (those pairs are grouped too); the copies are made of
    # products whose type and colour no other product shares, so their groups are exactly the injected pairs.
    looks = Counter((r.fields["article_type"], r.fields["base_colour"]) for r in rows)
    unique = [r for r in rows if looks[(r.fields["article_type"], r.fields["base_colour"])] == 1]
    jeans, bag = unique[0], unique[1]
    watches = [r for r in rows if r.fields["article_type"] == "Watches" and r.id not in (jeans.id, bag.id)]
    flipped = watches[len(watches) // 2]
    lines = [_line(r.id, {**r.fields, "article_type": "Handbags"} if r.id == flipped.id else r.fields) for r in rows]
    lines.append(_line(COPY_ID, jeans.fields))
    images[COPY_ID] = _resized_copy(images[jeans.id])
    lines.append(_line(EXACT_ID, bag.fields))
    images[EXACT_ID] = images[bag.id]
    lines.append(_line(BLANK_ID, {**bag.fields, "name": "Placeholder"}))
    blank = io.BytesIO()
    Image.new("RGB", (300, 400), (255, 255, 255)).save(blank, "JPEG")
    images[BLANK_ID] = blank.getvalue()
    lines.append(_line(STATIC_ID, {**jeans.fields, "name": "Blue Jeans (upload failed)"}))
    images[STATIC_ID] = _static()
    write_catalog(tmp_path / "cat", lines, images)
    catalog_import(directory=tmp_path / "cat", enqueue=False, workers=1)
    ProductFactory(id=NO_IMAGE_ID, name="Announced, no photo yet")
    services.products_embed(product_ids=list(Product.objects.exclude(image="").values_list("id", flat=True)))
    services.index_rebuild()
    return {"copied": jeans.id, "exact_source": bag.id, "flipped": flipped.id, "products": len(rows) + 5}


def _static(seed: int = 3) -> bytes:
    """A photo that decoded to static: random pixels, as a corrupted upload shows."""
    noise = np.random.default_rng(seed).integers(0, 256, (400, 300, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise, "RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def _scan() -> HealthScan:
    return catalog_health.health_scan_run(scan=catalog_health.health_scan_create())


def _finding(scan: HealthScan, kind: str, product_id: int) -> HealthFinding | None:
    """The scan's finding of ``kind`` holding ``product_id``; for labels, the article type's."""
    findings = scan.findings.filter(kind=kind)
    if kind == FindingKind.LABEL:
        findings = findings.filter(detail__field="article_type")
    return next((f for f in findings if product_id in f.product_ids), None)


# --- The engine's scan, on arrays --------------------------------------------------------------------------------


def test_the_block_scan_equals_all_pairs_and_never_holds_the_full_matrix():
    rng = np.random.default_rng(3)
    n, d = 3000, 32
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    vectors[17] = vectors[2900] + 0.01 * rng.standard_normal(d).astype(np.float32)
    vectors[400] = vectors[2900]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 7 + 5

    tracemalloc.start()
    result = vectors_scan(vectors=vectors, product_ids=ids, k=5, duplicate_cosine=0.95, block_rows=64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The n x n float32 matrix alone would be 36 MB; the scan holds a 64-row block of it at a time.
    assert peak < n * n * 4 / 8

    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    expected = ids[np.argsort(-sims, axis=1, kind="stable")[:, :5]]
    assert (result.neighbour_ids == expected).mean() > 0.999  # ties aside, the exact neighbours
    assert {tuple(p) for p in result.pairs.tolist()} == {
        (ids[17], ids[400]),
        (ids[17], ids[2900]),
        (ids[400], ids[2900]),
    }
    assert pair_groups(result.pairs.tolist()) == [sorted([int(ids[17]), int(ids[400]), int(ids[2900])])]
    assert np.allclose(result.isolation, 1 - result.neighbour_cosines.mean(axis=1))
    assert set(np.argsort(result.isolation)[:3].tolist()) == {17, 400, 2900}  # the copies are the least isolated


def test_the_calibrated_label_rule_raises_a_flip_but_not_a_type_that_always_looks_like_another():
    # Shirts and T-shirts look like their own kind; every kurta looks like shirts (8 of its 10 nearest are shirts,
    # as drawn catalogs draw them). One T-shirt is labelled Shirts: its look-alikes are all T-shirts.
    labels = ["Shirts"] * 40 + ["Tshirts"] * 40 + ["Kurtas"] * 20
    shirts, tshirts, kurtas = range(40), range(40, 80), range(80, 100)
    rng = np.random.default_rng(5)
    rows = np.zeros((len(labels) + 1, 10), dtype=np.int64)
    for row in shirts:
        rows[row] = rng.choice([i for i in shirts if i != row], 10, replace=False)
    for row in tshirts:
        rows[row] = rng.choice([i for i in tshirts if i != row], 10, replace=False)
    for row in kurtas:
        others = rng.choice([i for i in kurtas if i != row], 2, replace=False)
        rows[row] = np.concatenate([rng.choice(list(shirts), 8, replace=False), others])
    labels.append("Shirts")  # the flip
    rows[-1] = rng.choice(list(tshirts), 10, replace=False)

    suspects = catalog_health.label_suspects(labels=labels, neighbour_rows=rows)
    assert [(s.row, s.suggested) for s in suspects] == [(100, "Tshirts")]
    assert (suspects[0].votes, suspects[0].share, suspects[0].own_share) == (10, 1.0, 0.0)
    assert suspects[0].ratio >= catalog_health.LABEL_MIN_RATIO
    # The rule it replaces (most of the ten nearest carry another label) raised every kurta.
    assert all(sum(labels[j] == "Shirts" for j in rows[row]) >= 7 for row in kurtas)
    # A product whose look-alikes carry no label, or too few of them, is not judged.
    rows[-1, :6] = -1
    assert catalog_health.label_suspects(labels=labels, neighbour_rows=rows) == []


def test_the_name_is_a_second_witness_beside_the_look_alikes():
    # Shirts and T-shirts, each named as what it is. Row 80 is a T-shirt labelled Shirts whose look-alikes are
    # split (6 T-shirts, 4 shirts): its look alone does not raise it, its name says T-shirt. Row 81 is a shirt,
    # named one, that looks like T-shirts: the look alone raises it; its name speaks for its own label, and
    # weighed beside it (LOOK_WEIGHT: ten look-alikes are not ten independent witnesses) the look does not.
    labels = ["Shirts"] * 40 + ["Tshirts"] * 40
    shirts, tshirts = range(40), range(40, 80)
    rng = np.random.default_rng(5)
    rows = np.zeros((82, 10), dtype=np.int64)
    for row in shirts:
        rows[row] = rng.choice([i for i in shirts if i != row], 10, replace=False)
    for row in tshirts:
        rows[row] = rng.choice([i for i in tshirts if i != row], 10, replace=False)
    names = ["Arrow Men Checked Formal Shirt"] * 40 + ["Nike Men Round-Neck T-Shirts"] * 40
    labels.append("Shirts")
    names.append("Puma Men Solid Round Neck Tshirt")
    rows[80] = np.concatenate([rng.choice(list(tshirts), 6, replace=False), rng.choice(list(shirts), 4, replace=False)])
    labels.append("Shirts")
    names.append("Arrow Men Formal Shirt")
    rows[81] = rng.choice(list(tshirts), 10, replace=False)

    looks = {s.row: s for s in catalog_health.label_suspects(labels=labels, neighbour_rows=rows)}
    both = {s.row: s for s in catalog_health.label_suspects(labels=labels, neighbour_rows=rows, names=names)}
    assert set(looks) == {81} and set(both) == {80}
    assert both[80].suggested == "Tshirts" and both[80].name_ratio >= catalog_health.LABEL_MIN_RATIO
    assert both[80].look_ratio < catalog_health.LABEL_MIN_RATIO <= both[80].ratio
    # "T-Shirts" and "Tshirt" are one word (the text search's words and stems): the name fits Tshirts. Row 81's
    # name fits Shirts: the ratio is the weighed look plus the name's (negative) part, below the minimum.
    every = {
        s.row: s for s in catalog_health.label_suspects(labels=labels, neighbour_rows=rows, names=names, min_ratio=-1e9)
    }
    assert every[81].suggested == "Tshirts" and every[81].name_ratio < 0
    assert every[81].look_ratio == pytest.approx(catalog_health.LOOK_WEIGHT * looks[81].ratio)
    assert every[81].ratio == pytest.approx(every[81].look_ratio + every[81].name_ratio)
    assert every[81].ratio < catalog_health.LABEL_MIN_RATIO
    # Judged by look-alikes alone (no names: colour), nothing is weighed against them: their full ratio counts.
    assert looks[81].name_ratio == 0.0 and looks[81].ratio == pytest.approx(
        every[81].look_ratio / catalog_health.LOOK_WEIGHT
    )
    # Without its name's word for the kind, the T-shirt is judged by its look alone again.
    names[80] = "Puma Men Solid Round Neck"
    assert 80 not in {s.row for s in catalog_health.label_suspects(labels=labels, neighbour_rows=rows, names=names)}


def _drawing(path: Path, *, detail: bool = False) -> Path:
    """A flag-like drawing on white, as a catalog photo: three bands, and (``detail``) a star-sized disc."""
    image = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate([(20, 140, 60), (250, 215, 40), (210, 30, 40)]):
        draw.rectangle([40 + 80 * i, 70, 120 + 80 * i, 250], fill=colour)
    if detail:
        draw.ellipse([145, 140, 175, 170], fill=(20, 140, 60))
    image.save(path, "JPEG", quality=92)
    return path


def test_a_resized_cropped_copy_is_one_photo_and_a_drawing_one_detail_apart_is_not(demo_dir, tmp_path):
    flag = _drawing(tmp_path / "flag.jpg")
    starred = _drawing(tmp_path / "starred.jpg", detail=True)
    demo = sorted((demo_dir / "images").glob("*.jpg"))[:3]
    for original in [flag, *demo]:
        copy = tmp_path / f"copy-{original.name}"
        copy.write_bytes(_resized_copy(original.read_bytes()))
        match = photos_difference(photo_read(original), photo_read(copy))
        assert match is not None and match.same_view, original
        assert match.difference <= catalog_health.DUPLICATE_DIFFERENCE, (original, match)
    # The one-detail drawing: its small fingerprint is nearly the copy's, the registered difference is not.
    one, other = photo_read(flag), photo_read(starred)
    assert float(one.fingerprint @ other.fingerprint) > 0.9
    match = photos_difference(one, other)
    assert match is not None and match.difference > 2 * catalog_health.DUPLICATE_DIFFERENCE
    # A smaller drawing of the same shape (a small square against a large one) is not a crop of it.
    small = Image.new("RGB", (320, 320), "white")
    ImageDraw.Draw(small).rectangle([120, 120, 200, 200], fill=(20, 20, 20))
    large = Image.new("RGB", (320, 320), "white")
    ImageDraw.Draw(large).rectangle([40, 40, 280, 280], fill=(20, 20, 20))
    small.save(tmp_path / "small.jpg")
    large.save(tmp_path / "large.jpg")
    match = photos_difference(photo_read(tmp_path / "small.jpg"), photo_read(tmp_path / "large.jpg"))
    assert match is None or not match.same_view
    # Blank or unreadable photos are never matched.
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    assert photo_read(tmp_path / "broken.jpg") is None
    Image.new("RGB", (100, 100), "white").save(tmp_path / "white.jpg")
    assert (
        photo_read(tmp_path / "white.jpg").blank and photos_difference(one, photo_read(tmp_path / "white.jpg")) is None
    )


def test_static_is_told_from_pictures_and_from_a_blank_photo(demo_dir, tmp_path):
    (tmp_path / "static.jpg").write_bytes(_static())
    static = photo_read(tmp_path / "static.jpg")
    assert static.noise and not static.blank and static.correlation < NOISE_CORRELATION
    # Every demo photo and a flat drawing are pictures; a blank photo is blank, not static.
    for path in [_drawing(tmp_path / "flag.jpg"), *sorted((demo_dir / "images").glob("*.jpg"))[:40]]:
        assert not photo_read(path).noise, path
    Image.new("RGB", (100, 100), (200, 200, 200)).save(tmp_path / "grey.jpg")
    grey = photo_read(tmp_path / "grey.jpg")
    assert grey.blank and not grey.noise
    # Static blurred into blobs (a picture of nothing, but regions) is not static: the rule is about neighbours.
    with Image.open(tmp_path / "static.jpg") as image:
        image.resize((40, 30)).resize((400, 300), Image.Resampling.BICUBIC).save(tmp_path / "blobs.jpg")
    assert not photo_read(tmp_path / "blobs.jpg").noise


# --- The scan over a catalog ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_command_finds_the_copies_the_flipped_label_the_blank_and_the_missing_photo(health_catalog):
    out = io.StringIO()
    call_command("catalog_health", stdout=out)
    scan = HealthScan.objects.get()
    assert scan.status == HealthScan.Status.DONE and scan.seconds is not None and scan.finished_at
    assert scan.products == health_catalog["products"] - 1  # every product with a photo
    assert f"Scan {scan.id}:" in out.getvalue() and "Near-duplicates:" in out.getvalue()

    copy = _finding(scan, FindingKind.DUPLICATE, COPY_ID)
    assert copy is not None and copy.product_ids == sorted([health_catalog["copied"], COPY_ID])
    assert copy.detail["exact"] is False
    exact = _finding(scan, FindingKind.DUPLICATE, EXACT_ID)
    assert exact is not None and exact.product_ids == sorted([health_catalog["exact_source"], EXACT_ID])
    assert exact.detail["exact"] is True and exact.confidence == 1.0

    label = next(
        f
        for f in scan.findings.filter(kind=FindingKind.LABEL)
        if f.product_ids == [health_catalog["flipped"]] and f.detail["field"] == "article_type"
    )
    assert (label.detail["current"], label.detail["suggested"]) == ("Handbags", "Watches")
    assert label.detail["ratio"] >= catalog_health.LABEL_MIN_RATIO and label.detail["share"] > 0.5
    # Its name (a watch's) speaks for the suggestion too; the two parts add up to the ratio ranked by.
    flipped = Product.objects.get(id=health_catalog["flipped"])
    assert label.detail["name"] == flipped.name and label.detail["name_ratio"] > 0
    assert label.detail["look_ratio"] + label.detail["name_ratio"] == pytest.approx(label.detail["ratio"], abs=0.02)
    # Only the flipped product's type is suspect.
    assert [f.product_ids for f in scan.findings.filter(kind=FindingKind.LABEL, detail__field="article_type")] == [
        [health_catalog["flipped"]]
    ]

    outliers = list(scan.findings.filter(kind=FindingKind.OUTLIER).order_by("-confidence"))
    assert outliers and {BLANK_ID, STATIC_ID} >= set(outliers[0].product_ids)
    missing = _finding(scan, FindingKind.NO_IMAGE, NO_IMAGE_ID)
    assert missing is not None and missing.detail["reason"] == "no image"
    blank = _finding(scan, FindingKind.NO_IMAGE, BLANK_ID)
    assert blank is not None and blank.detail["reason"] == "the photo is blank (a single colour)"
    static = _finding(scan, FindingKind.NO_IMAGE, STATIC_ID)
    assert static is not None and static.detail["reason"] == "the photo is noise (no picture in it)"
    # Its look-alikes are chance: its label is not judged by them (the one suspect label is the flip's, above).
    assert scan.counts[FindingKind.NO_IMAGE]["found"] == 3  # nothing else: every other photo is a product


def test_fingerprints_are_read_for_a_bounded_number_of_products_the_first_pairs_by_priority():
    rng = np.random.default_rng(5)
    pairs = np.unique(np.sort(rng.integers(0, 300, (2000, 2)), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    cosines = rng.uniform(0.8, 1.0, len(pairs)).astype(np.float32)
    order = catalog_health.pairs_prioritised(pairs=pairs, value=cosines)
    # Each pair's rank in its products' own lists comes first: the first pair of a product is ahead of the
    # second pair of every product, whatever their cosines.
    best: dict[int, int] = {}  # product -> its most alike pair
    for i, (a, b) in enumerate(pairs.tolist()):
        for product in (a, b):
            if product not in best or cosines[i] > cosines[best[product]]:
                best[product] = i
    firsts = set(best.values())
    assert set(order[: len(firsts)].tolist()) == firsts

    for limit in (2, 7, 50, 299):
        chosen = catalog_health.pairs_to_fingerprint(pairs=pairs, cosines=cosines, limit=limit)
        assert len(np.unique(pairs[chosen])) <= limit
        # The first pairs by priority, as many as fit: one more would read a product beyond the bound.
        assert sorted(chosen.tolist()) == sorted(order[: len(chosen)].tolist())
        assert len(np.unique(pairs[order[: len(chosen) + 1]])) > limit
    # Within the bound, every pair is read.
    everything = catalog_health.pairs_to_fingerprint(pairs=pairs, cosines=cosines, limit=300)
    assert everything.tolist() == list(range(len(pairs)))


@pytest.mark.django_db
def test_a_scan_at_its_fingerprint_bound_reads_no_more_and_still_finds_the_copy(health_catalog, monkeypatch):
    read: list[str] = []
    reader = catalog_health._thumbnail_read
    monkeypatch.setattr(catalog_health, "_thumbnail_read", lambda name: read.append(name) or reader(name))
    seen: dict[str, np.ndarray] = {}
    choose = catalog_health.pairs_to_fingerprint

    def spied(*, pairs: np.ndarray, cosines: np.ndarray, limit: int) -> np.ndarray:
        seen.update(pairs=pairs, cosines=cosines)
        return choose(pairs=pairs, cosines=cosines, limit=limit)

    monkeypatch.setattr(catalog_health, "pairs_to_fingerprint", spied)
    _scan()
    unbounded = len(read)
    # The bound that just reaches the copy pair: the products read by the pairs ranked up to it.
    order = catalog_health.pairs_prioritised(pairs=seen["pairs"], value=seen["cosines"])
    copy_pair = sorted([health_catalog["copied"], COPY_ID])
    at = next(i for i, p in enumerate(order.tolist()) if seen["pairs"][p].tolist() == copy_pair)
    bound = len(np.unique(seen["pairs"][order[: at + 1]]))

    read.clear()
    monkeypatch.setattr(catalog_health, "MAX_FINGERPRINTS", bound)
    scan = _scan()
    outliers = scan.findings.filter(kind=FindingKind.OUTLIER).count()
    # The demo draws many look-alikes: the bound binds, and reads no more (the outliers' own photos are read
    # to tell a blank one).
    assert len(read) <= bound + outliers < unbounded
    copy = _finding(scan, FindingKind.DUPLICATE, COPY_ID)
    assert copy is not None and copy.product_ids == copy_pair
    exact = _finding(scan, FindingKind.DUPLICATE, EXACT_ID)
    assert exact is not None and exact.detail["exact"] is True


@pytest.mark.django_db
def test_a_broken_photo_raised_only_as_a_suspect_label_is_read_and_found_unusable(health_catalog, monkeypatch):
    # With no outliers, the static photo is neither an outlier nor a duplicate candidate: its look-alikes (chance)
    # make its labels suspect, so its photo is read before a label is raised from them.
    read: list[str] = []
    reader = catalog_health._thumbnail_read
    monkeypatch.setattr(catalog_health, "_thumbnail_read", lambda name: read.append(name) or reader(name))
    scan = catalog_health.health_scan_run(scan=catalog_health.health_scan_create(), outlier_isolation=2.0)
    assert not scan.findings.filter(kind=FindingKind.OUTLIER).exists()
    static = _finding(scan, FindingKind.NO_IMAGE, STATIC_ID)
    assert static is not None and static.detail["reason"] == "the photo is noise (no picture in it)"
    assert not any(STATIC_ID in f.product_ids for f in scan.findings.filter(kind=FindingKind.LABEL))
    assert Product.objects.get(id=STATIC_ID).thumbnail.name in read
    # Bounded: with no reads allowed for suspects, it is raised as a suspect label again.
    monkeypatch.setattr(catalog_health, "MAX_LABEL_READS", 0)
    scan = catalog_health.health_scan_run(scan=catalog_health.health_scan_create(), outlier_isolation=2.0)
    assert _finding(scan, FindingKind.NO_IMAGE, STATIC_ID) is None
    assert any(STATIC_ID in f.product_ids for f in scan.findings.filter(kind=FindingKind.LABEL))


def _placeholder_picture() -> bytes:
    """A shop's "no image" picture: a grey frame crossed by a diagonal, a caption under it."""
    image = Image.new("RGB", (300, 400), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([40, 60, 260, 320], outline=(150, 150, 150), width=5)
    draw.line([40, 60, 260, 320], fill=(150, 150, 150), width=4)
    draw.text((100, 340), "NO IMAGE", fill=(90, 90, 90))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.django_db
def test_one_picture_shown_for_products_of_three_kinds_is_a_placeholder_and_a_mislabelled_copy_is_not(
    health_catalog, demo_dir, tmp_path
):
    rows = {r.id: r for r in styles_read(demo_dir / "styles.csv") if hasattr(r, "fields")}
    watch = next(
        r for r in rows.values() if r.fields["article_type"] == "Watches" and r.id != health_catalog["flipped"]
    )
    kinds = {"Watches": 990011, "Handbags": 990012, "Jeans": 990013}
    picture = _placeholder_picture()
    lines = [_line(pid, {**watch.fields, "article_type": kind, "name": f"New {kind}"}) for kind, pid in kinds.items()]
    images = dict.fromkeys(kinds.values(), picture)
    # The same photo of a watch under a second id, that one labelled jeans: two kinds, one of them a slip.
    lines.append(_line(990014, {**watch.fields, "article_type": "Jeans"}))
    images[990014] = (demo_dir / "images" / f"{watch.id}.jpg").read_bytes()
    write_catalog(tmp_path / "more", lines, images)
    catalog_import(directory=tmp_path / "more", enqueue=False, workers=1)
    services.products_embed(product_ids=[*kinds.values(), 990014])
    services.index_rebuild()

    scan = _scan()
    # Three products sharing a placeholder are not copies of one product: no group to keep one of.
    assert not any(_finding(scan, FindingKind.DUPLICATE, pid) for pid in kinds.values())
    for pid in kinds.values():
        finding = _finding(scan, FindingKind.NO_IMAGE, pid)
        assert finding is not None, pid
        assert finding.detail["reason"] == "the same picture is shown for products of 3 kinds (a placeholder)"
        # Its look-alikes are chance: its label is not judged.
        assert _finding(scan, FindingKind.LABEL, pid) is None
    copy = _finding(scan, FindingKind.DUPLICATE, 990014)
    assert copy is not None and copy.product_ids == sorted([watch.id, 990014])
    assert (
        _finding(scan, FindingKind.NO_IMAGE, 990014) is None and _finding(scan, FindingKind.NO_IMAGE, watch.id) is None
    )
    # The copy's label is the slip: the duplicate and its suspect label are both the admin's to see.
    assert _finding(scan, FindingKind.LABEL, 990014) is not None


@pytest.mark.django_db
def test_the_command_without_a_published_index_says_so():
    ProductFactory()
    with pytest.raises(CommandError, match="No index is published"):
        call_command("catalog_health", stdout=io.StringIO())
    scan = HealthScan.objects.get()
    assert scan.status == HealthScan.Status.FAILED and "No index is published" in scan.error


@pytest.mark.django_db(transaction=True)
def test_the_admin_button_runs_the_scan_in_a_real_worker(health_catalog, staff, start_worker):
    start_worker()
    response = staff.post("/admin/gallery/healthscan/run/")
    assert response.status_code == 302
    scan = HealthScan.objects.get()
    # A second click while it is queued or running starts nothing more.
    staff.post("/admin/gallery/healthscan/run/")
    assert HealthScan.objects.count() == 1

    wait_for(
        lambda: HealthScan.objects.filter(id=scan.id, status__in=["done", "failed"]).exists(),
        timeout=120,
        what="the worker to finish the scan",
    )
    scan.refresh_from_db()
    assert scan.status == HealthScan.Status.DONE, scan.error
    assert scan.claimed_by and _finding(scan, FindingKind.DUPLICATE, COPY_ID) is not None
    page = staff.get("/admin/gallery/healthscan/").content.decode()
    assert f"scan {scan.id}" in page and f"{scan.seconds} s" in page


@pytest.mark.django_db
def test_a_scan_started_while_the_queue_is_down_ends_failed_with_the_reason(staff, django_capture_on_commit_callbacks):
    with celery_broker("redis://127.0.0.1:1/0"), django_capture_on_commit_callbacks(execute=True):
        response = staff.post("/admin/gallery/healthscan/run/")
    assert response.status_code == 302
    scan = HealthScan.objects.get()
    assert scan.status == HealthScan.Status.FAILED and "task queue is unreachable" in scan.error
    assert "task queue is unreachable" in staff.get("/admin/gallery/healthscan/").content.decode()


# --- The admin pages and actions -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_kind_has_a_page_with_thumbnails_side_by_side(health_catalog, staff):
    scan = _scan()
    overview = staff.get("/admin/gallery/healthscan/")
    assert overview.status_code == 200
    text = overview.content.decode()
    assert scan.finished_at.strftime("%Y-%m-%d %H:%M") in text and f"{scan.seconds} s" in text
    for kind in FindingKind:
        page = staff.get(f"/admin/gallery/healthscan/kind/{kind.value}/")
        assert page.status_code == 200, kind
    duplicates = staff.get("/admin/gallery/healthscan/kind/duplicate/").content.decode()
    for pid in (COPY_ID, health_catalog["copied"]):
        assert Product.objects.get(id=pid).thumbnail.url in duplicates
    assert "Keep this one" in duplicates and "Exact copies" in duplicates
    labels = staff.get("/admin/gallery/healthscan/kind/label/").content.decode()
    assert "Accept Watches" in labels
    flipped = Product.objects.get(id=health_catalog["flipped"])
    assert f"from its name, “{escape(flipped.name)}”" in labels
    # Beside the product, the look-alikes it was judged by.
    label = _finding(scan, FindingKind.LABEL, health_catalog["flipped"])
    assert Product.objects.get(id=label.detail["neighbours"][0]).thumbnail.url in labels


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["off sale", "delete"])
def test_keep_one_retires_the_rest_of_the_group(health_catalog, staff, monkeypatch, mode):
    # The shop has availability, so the others go off sale; without it they are deleted after a confirmation.
    assert catalog_health.duplicates_retire_mode() == "off sale"
    monkeypatch.setattr(catalog_health, "duplicates_retire_mode", lambda: mode)
    scan = _scan()
    finding = _finding(scan, FindingKind.DUPLICATE, COPY_ID)
    url = f"/admin/gallery/healthscan/finding/{finding.id}/keep/"
    keep = health_catalog["copied"]
    if catalog_health.duplicates_retire_mode() == "delete":
        confirm = staff.post(url, {"keep": keep})
        assert confirm.status_code == 200 and "Yes, delete them" in confirm.content.decode()
        assert Product.objects.filter(id=COPY_ID).exists()  # nothing deleted before the confirmation
        done = staff.post(url, {"keep": keep, "confirm": "yes"})
        assert done.status_code == 302
        assert not Product.objects.filter(id=COPY_ID).exists() and Product.objects.filter(id=keep).exists()
        assert LogEntry.objects.filter(object_id=str(COPY_ID), action_flag=DELETION).exists()
    else:
        done = staff.post(url, {"keep": keep})
        assert done.status_code == 302
        assert not Product.objects.get(id=COPY_ID).active and Product.objects.get(id=keep).active
        assert LogEntry.objects.filter(object_id=str(COPY_ID), action_flag=CHANGE).exists()
    finding.refresh_from_db()
    assert finding.status == HealthFinding.Status.RESOLVED
    assert staff.post(url, {"keep": keep, "confirm": "yes"}).status_code == 409


@pytest.mark.django_db
def test_accepting_a_label_changes_it_and_records_the_edit(health_catalog, staff):
    scan = _scan()
    flipped = health_catalog["flipped"]
    finding = _finding(scan, FindingKind.LABEL, flipped)
    assert finding.detail["field"] == "article_type"
    response = staff.post(f"/admin/gallery/healthscan/finding/{finding.id}/accept/")
    assert response.status_code == 302
    assert Product.objects.get(id=flipped).article_type == "Watches"
    entry = LogEntry.objects.get(object_id=str(flipped), action_flag=CHANGE)
    assert "'Handbags' -> 'Watches'" in entry.change_message and entry.user.username == "admin"
    # The product's own admin history shows the edit.
    assert "Watches" in staff.get(f"/admin/gallery/product/{flipped}/history/").content.decode()
    assert staff.post(f"/admin/gallery/healthscan/finding/{finding.id}/accept/").status_code == 409


@pytest.mark.django_db
def test_accepting_a_label_edited_since_the_scan_changes_nothing(health_catalog, staff):
    scan = _scan()
    flipped = health_catalog["flipped"]
    finding = _finding(scan, FindingKind.LABEL, flipped)
    Product.objects.filter(id=flipped).update(article_type="Wallets")
    response = staff.post(f"/admin/gallery/healthscan/finding/{finding.id}/accept/")
    assert response.status_code == 409 and "changed since the scan" in response.content.decode()
    assert Product.objects.get(id=flipped).article_type == "Wallets"
    assert not LogEntry.objects.filter(object_id=str(flipped)).exists()


@pytest.mark.django_db
def test_a_dismissed_finding_is_not_raised_by_the_next_scan(health_catalog, staff):
    first = _scan()
    label = _finding(first, FindingKind.LABEL, health_catalog["flipped"])
    copy = _finding(first, FindingKind.DUPLICATE, COPY_ID)
    for finding in (label, copy):
        assert staff.post(f"/admin/gallery/healthscan/finding/{finding.id}/dismiss/").status_code == 302
    assert HealthDismissal.objects.count() == 2

    second = _scan()
    assert _finding(second, FindingKind.LABEL, health_catalog["flipped"]) is None
    assert _finding(second, FindingKind.DUPLICATE, COPY_ID) is None
    assert _finding(second, FindingKind.DUPLICATE, EXACT_ID) is not None  # the other group is still raised
    assert second.counts[FindingKind.DUPLICATE]["dismissed"] == 1
    assert second.counts[FindingKind.LABEL]["dismissed"] == 1
    # The page shows one scan: the first scan's findings are gone.
    assert not HealthFinding.objects.filter(scan=first).exists()


@pytest.mark.django_db
def test_bad_input_to_the_actions_is_refused_with_a_4xx(health_catalog, staff, client):
    scan = _scan()
    duplicate = _finding(scan, FindingKind.DUPLICATE, COPY_ID)
    label = _finding(scan, FindingKind.LABEL, health_catalog["flipped"])
    base = "/admin/gallery/healthscan"
    cases = [
        ("get", f"{base}/finding/{label.id}/accept/", {}, 405),
        ("post", f"{base}/finding/abc/accept/", {}, 400),
        ("post", f"{base}/finding/99999999/accept/", {}, 404),
        ("post", f"{base}/finding/99999999/dismiss/", {}, 404),
        ("post", f"{base}/finding/{duplicate.id}/accept/", {}, 400),  # not a label finding
        ("post", f"{base}/finding/{label.id}/keep/", {"keep": health_catalog["flipped"], "confirm": "yes"}, 400),
        ("post", f"{base}/finding/{duplicate.id}/keep/", {}, 400),
        ("post", f"{base}/finding/{duplicate.id}/keep/", {"keep": "x' or 1=1"}, 400),
        ("post", f"{base}/finding/{duplicate.id}/keep/", {"keep": "1" * 40}, 400),
        (
            "post",
            f"{base}/finding/{duplicate.id}/keep/",
            {"keep": health_catalog["exact_source"], "confirm": "yes"},
            400,
        ),
        ("get", f"{base}/kind/nonsense/", {}, 404),
    ]
    for method, url, data, status in cases:
        response = getattr(staff, method)(url, data)
        assert response.status_code == status, (url, data, response.status_code)
    assert Product.objects.filter(id__in=[COPY_ID, health_catalog["copied"]]).count() == 2
    assert HealthFinding.objects.filter(status=HealthFinding.Status.OPEN).count() == scan.findings.count()

    # Staff who may only view products read the pages but change nothing.
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_product"))
    client.login(username="viewer", password="pw")
    assert client.get(f"{base}/kind/label/").status_code == 200
    assert client.post(f"{base}/finding/{label.id}/accept/").status_code == 403
    assert client.post(f"{base}/finding/{label.id}/dismiss/").status_code == 403
    assert client.post(f"{base}/run/").status_code == 403
    assert Product.objects.get(id=health_catalog["flipped"]).article_type == "Handbags"
