from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender import runtime, services
from recommender.errors import EncoderUnavailable


class Command(BaseCommand):
    help = (
        "Re-embed the whole catalog with another encoder without downtime: the new space is built beside "
        "the one in service (vectors and index), then every process switches to it on its next query."
    )

    def add_arguments(self, parser):
        parser.add_argument("encoder", choices=sorted(runtime.ENCODER_SPACES), help="the encoder to switch to")
        parser.add_argument("--no-switch", action="store_true", help="build the space but keep serving the old one")

    def handle(self, *args, encoder: str, no_switch: bool, **options):
        space = runtime.ENCODER_SPACES[encoder]
        current = runtime.active_space()
        try:
            model = runtime.encoder_for(encoder)
        except EncoderUnavailable as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Serving {current}; building {space} beside it")
        # Products added while this runs are embedded in the old space by the
        # workers; loop until none is missing, then switch.
        while ids := services.products_needing_embedding(space=space):
            embedded = 0
            with tqdm(total=len(ids), unit="img", desc=space, disable=options["verbosity"] == 0) as bar:
                for start in range(0, len(ids), 1024):
                    part = ids[start : start + 1024]
                    embedded += services.products_embed(product_ids=part, encoder=model, progress=bar.update).embedded
            if embedded == 0:
                break  # what remains cannot be embedded (unreadable images): nothing more to gain
        meta = services.index_rebuild(space=space)
        if meta is None:
            raise CommandError("No vectors were made: nothing to switch to")
        self.stdout.write(f"Published index {meta.version} for {space}: {meta.count} vectors")
        if no_switch:
            self.stdout.write(f"Not switched: still serving {current}")
            return
        runtime.space_switch_write(space)
        self.stdout.write(self.style.SUCCESS(f"Switched to {space}: processes follow on their next query"))
