from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from recommender import runtime, services
from recommender.projection import Projection, ProjectionCorrupt


class Command(BaseCommand):
    help = (
        "Serve vectors projected by a head or PCA file (or 'raw' to go back): projects the stored raw vectors "
        "(no image decoding), builds that space's index, then switches every process to it on its next query."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "projection", help="a projection file (.npz from train_embedding_head), a version, or 'raw'"
        )

    def handle(self, *args, projection: str, **options):
        base = runtime.space_encoder_id(runtime.active_space())
        if projection == "raw":
            space = base
        else:
            path = Path(projection)
            try:
                loaded = Projection.load(path) if path.suffix == ".npz" else runtime.projection_for(projection)
            except (ProjectionCorrupt, OSError) as exc:
                raise CommandError(str(exc)) from exc
            if loaded.encoder_id != base:
                raise CommandError(f"{loaded.version} was trained on {loaded.encoder_id} vectors; the site uses {base}")
            loaded.save(runtime.heads_dir())
            runtime.projection_for.cache_clear()
            space = loaded.space
            if "spread" in loaded.arrays:
                self.stdout.write(f"Near neighbours' cosines spread {loaded.image_spread:.2f}x as wide as raw ones "
                                  "there: the colour weights and the seen penalty are converted by that")  # fmt: skip
            else:
                self.stdout.write(self.style.WARNING(
                    f"{loaded.version} records no cosine spread (fitted before it was measured): colour and the seen "
                    "penalty count for less beside its scores than on raw vectors; fit it again "
                    "with train_embedding_head"
                ))  # fmt: skip
        projected = services.space_reproject(space=space)
        self.stdout.write(f"Projected {projected} stored vectors into {space}")
        meta = services.index_rebuild(space=space)
        if meta is None:
            raise CommandError(f"No vectors in {space}: run embed_catalog first")
        runtime.space_switch_write(space)
        self.stdout.write(self.style.SUCCESS(f"Serving {space}: index {meta.version}, {meta.count} vectors"))
