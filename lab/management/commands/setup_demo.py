from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from gallery.models import Product
from lab.demo import demo_catalog_write


class Command(BaseCommand):
    help = "Generate and import the demo catalog, unless the catalog already holds products."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=400)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, count: int, seed: int, **options):
        if Product.objects.exists():
            self.stdout.write(f"The catalog holds {Product.objects.count()} products; no demo catalog needed.")
            return
        directory = Path(settings.VAR_DIR) / "demo-catalog"
        catalog = demo_catalog_write(out_dir=directory, count=count, seed=seed)
        self.stdout.write(f"Generated a demo catalog of {catalog.count} products in {directory}")
        # Left pending, not queued: embed_catalog embeds them in one batched pass next.
        call_command("import_catalog", str(directory), "--no-enqueue", verbosity=options["verbosity"])
