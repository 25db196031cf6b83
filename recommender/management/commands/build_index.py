from django.core.management.base import BaseCommand, CommandError

from recommender import services
from recommender.tasks import vectors_outside_index


class Command(BaseCommand):
    help = "Build the Annoy index from the stored vectors of the active encoder and publish it atomically."

    def add_arguments(self, parser):
        parser.add_argument("--n-trees", type=int, default=None, help="trees to build (default INDEX_N_TREES)")
        parser.add_argument(
            "--if-needed", action="store_true", help="only when vectors wait outside the published index"
        )

    def handle(self, *args, n_trees: int | None, if_needed: bool, **options):
        if if_needed and vectors_outside_index() == 0:
            self.stdout.write("The published index holds every vector; no build needed.")
            return
        meta = services.index_rebuild(n_trees=n_trees)
        if meta is None:
            raise CommandError("No vectors to index: run embed_catalog first")
        self.stdout.write(
            f"Published index {meta.version}: {meta.count} vectors of {meta.space}, {meta.dim}-d, "
            f"{meta.n_trees} trees, {meta.file_bytes / 1e6:.1f} MB, built in {meta.build_seconds:.1f}s"
        )
