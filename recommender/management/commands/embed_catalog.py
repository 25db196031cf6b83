from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from recommender import runtime, services, state
from recommender.models import EmbedStatus


class Command(BaseCommand):
    help = "Embed every product that has no vector for the active encoder yet (resumable, batched)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--decode-workers",
            type=int,
            default=settings.ENCODER_DECODE_WORKERS,
            help="processes decoding images ahead of the model",
        )
        parser.add_argument("--retry-failed", action="store_true", help="try products that failed before again")

    def handle(self, *args, decode_workers: int, retry_failed: bool, **options):
        space = runtime.active_space()
        if retry_failed:
            state.states_retry(product_ids=state.states_ids(status=EmbedStatus.FAILED))
        reprojected = services.space_reproject(space=space)
        if reprojected:
            self.stdout.write(f"Projected {reprojected} stored raw vectors into {space}")
        ids = services.products_needing_embedding(space=space)
        encoder = runtime.encoder()
        self.stdout.write(f"Encoder {encoder.id} ({encoder.dim}-d on {encoder.device}); {len(ids)} products to embed")
        if encoder.note:
            self.stderr.write(f"NOTE: {encoder.note}")
        report = services.EmbedReport()
        chunk = 1024
        with tqdm(total=len(ids), unit="img", desc="embed", disable=options["verbosity"] == 0) as bar:
            for start in range(0, len(ids), chunk):
                part = services.products_embed(
                    product_ids=ids[start : start + chunk], decode_workers=decode_workers, progress=bar.update
                )
                report.embedded += part.embedded
                report.failed += part.failed
                report.skipped += part.skipped
            rate = bar.format_dict["n"] / bar.format_dict["elapsed"] if bar.format_dict["elapsed"] else 0
        self.stdout.write(
            f"{report.embedded} embedded, {report.failed} failed, {report.skipped} skipped ({rate:.1f} images/s)"
        )
        # Products embedded before colour descriptors were kept get theirs (trails blend colour per step).
        missing = services.products_without_colour()
        if missing:
            with tqdm(total=len(missing), unit="img", desc="colour", disable=options["verbosity"] == 0) as bar:
                added = services.colours_backfill(product_ids=missing, progress=bar.update)
            self.stdout.write(f"{added} colour descriptors added")
