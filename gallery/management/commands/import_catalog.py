from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery.catalog import CatalogError
from gallery.jobs import import_job_command_run, import_job_command_start
from gallery.services import catalog_import


class Command(BaseCommand):
    help = (
        "Import a catalog in the Fashion Product Images layout: DIR/styles.csv and DIR/images/<id>.jpg "
        "(.jpg or .jpeg, any case). Every line of styles.csv is imported or skipped with its line number and "
        "reason. The run is recorded as a catalog import in the admin, with its progress and summary."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--workers", type=int, default=2, help="processes decoding images (default 2)")
        parser.add_argument(
            "--no-enqueue",
            action="store_true",
            help="leave new images pending instead of queueing them (embed_catalog or the sweep takes them)",
        )
        parser.add_argument("--no-job", action="store_true", help="do not record the run as a catalog import")

    def handle(self, *args, directory: Path, workers: int, no_enqueue: bool, no_job: bool, **options):
        styles = directory / "styles.csv"
        if not styles.is_file():
            raise CommandError(f"{styles} not found: expected DIR/styles.csv and DIR/images/<id>.jpg")
        with styles.open("rb") as fh:
            # Physical lines, as the reader numbers them and the bulk upload counts them: each is one row.
            total = max(0, sum(1 for _ in fh) - 1)
        with tqdm(total=total, unit="row", desc="import", disable=options["verbosity"] == 0) as bar:
            try:
                if no_job:
                    summary = catalog_import(
                        directory=directory, enqueue=not no_enqueue, workers=workers, progress=bar.update
                    )
                else:
                    job = import_job_command_start(directory=directory.resolve(), rows_total=total)
                    summary = import_job_command_run(
                        job=job, directory=directory, enqueue=not no_enqueue, workers=workers, progress=bar.update
                    )
            except CatalogError as exc:
                raise CommandError(str(exc)) from exc
        for line in summary.lines():
            self.stdout.write(line)
        if not no_job:
            self.stdout.write(f"Recorded as catalog import {job.id} in the admin.")
