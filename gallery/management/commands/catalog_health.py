from django.core.management.base import BaseCommand, CommandError

from gallery import catalog_health, tasks
from gallery.models import FindingKind
from recommender.errors import SimilarityUnavailable


def _unit(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(value)
    return number


def _level(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 255.0:
        raise ValueError(value)
    return number


def _positive(value: str) -> float:
    number = float(value)
    if not number >= 0.0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Scan the catalog's published vectors for near-duplicates, suspect labels, outliers and products without a "
        "usable image, and store the findings for the admin's Catalog health page. Runs here, in blocks; "
        "--background queues it for a worker instead, as the admin's button does."
    )

    def add_arguments(self, parser):
        parser.add_argument("--background", action="store_true", help="queue the scan for a Celery worker")
        parser.add_argument(
            "--duplicate-cosine", type=_unit, default=catalog_health.DUPLICATE_COSINE,
            help=f"image-vector cosine above which two photos are compared (default {catalog_health.DUPLICATE_COSINE})",
        )  # fmt: skip
        parser.add_argument(
            "--duplicate-difference", type=_level, default=catalog_health.DUPLICATE_DIFFERENCE,
            help="largest difference (0-255) of two registered photos that are one photo "
            f"(default {catalog_health.DUPLICATE_DIFFERENCE})",
        )  # fmt: skip
        parser.add_argument(
            "--label-ratio", type=_positive, default=catalog_health.LABEL_MIN_RATIO,
            help="natural log of how much likelier a product's look-alikes' labels must be under another label than "
            f"under its own (default {catalog_health.LABEL_MIN_RATIO})",
        )  # fmt: skip
        parser.add_argument(
            "--outlier-isolation", type=_unit, default=catalog_health.OUTLIER_ISOLATION,
            help=f"1 - mean cosine to the nearest products above which an image is an outlier "
            f"(default {catalog_health.OUTLIER_ISOLATION})",
        )  # fmt: skip

    def handle(self, *args, background: bool, duplicate_cosine: float, duplicate_difference: float, label_ratio: float,
               outlier_isolation: float, **options):  # fmt: skip
        if background:
            scan, created = tasks.health_scan_submit()
            self.stdout.write(f"Scan {scan.id} {'queued' if created else 'is already ' + scan.status}.")
            return
        scan = catalog_health.health_scan_create()
        try:
            scan = catalog_health.health_scan_run(
                scan=scan,
                duplicate_cosine=duplicate_cosine,
                duplicate_difference=duplicate_difference,
                label_min_ratio=label_ratio,
                outlier_isolation=outlier_isolation,
            )
        except SimilarityUnavailable as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Scan {scan.id}: {scan.products} products of index {scan.index_version} in {scan.seconds}s")
        for kind in FindingKind:
            counts = scan.counts.get(kind.value, {})
            self.stdout.write(
                f"  {kind.label}: {counts.get('found', 0)} found, {counts.get('dismissed', 0)} dismissed earlier"
            )
