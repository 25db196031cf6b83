from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from lab.demo import demo_catalog_write


class Command(BaseCommand):
    help = "Draw an offline demo catalog in the Fashion Product Images layout (styles.csv + images/<id>.jpg)."

    def add_arguments(self, parser):
        parser.add_argument("out_dir", type=Path, help="directory to write styles.csv and images/ into")
        parser.add_argument("--count", type=int, default=400, help="products to draw (default 400)")
        parser.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives identical files")

    def handle(self, *args, out_dir: Path, count: int, seed: int, **options):
        try:
            catalog = demo_catalog_write(out_dir=out_dir, count=count, seed=seed)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        types = ", ".join(f"{name} {n}" for name, n in catalog.article_types.items())
        self.stdout.write(
            f"Wrote {catalog.count} demo products in {len(catalog.article_types)} article types ({types}) "
            f"to {catalog.directory}"
        )
