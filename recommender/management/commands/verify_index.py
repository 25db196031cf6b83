import numpy as np
from django.core.management.base import BaseCommand, CommandError

from recommender import runtime, selectors
from recommender.index import IndexCorrupt
from recommender.models import Embedding


class Command(BaseCommand):
    help = "Check the published index against the database: checksum, space, and which vectors are missing or stale."

    def add_arguments(self, parser):
        parser.add_argument("--sample", type=int, default=200, help="vectors compared value by value")

    def handle(self, *args, sample: int, **options):
        space = runtime.active_space()
        try:
            loaded = selectors.published_index(space)
        except IndexCorrupt as exc:
            raise CommandError(f"The published index is unusable: {exc}. Run build_index.") from exc
        if loaded is None:
            raise CommandError(f"No index is published for {space}. Run build_index.")
        meta = loaded.meta
        problems = []
        stored = dict(Embedding.objects.filter(space=space).values_list("id", "product_id"))
        indexed = dict(zip(loaded.embedding_ids.tolist(), loaded.product_ids.tolist(), strict=True))
        stale = [eid for eid in indexed if eid not in stored]
        missing = [eid for eid in stored if eid not in indexed]
        rng = np.random.default_rng(0)
        checked = mismatched = 0
        positions = rng.choice(meta.count, size=min(sample, meta.count), replace=False)
        wanted = {int(loaded.embedding_ids[i]): int(i) for i in positions}
        for eid, vector in Embedding.objects.filter(id__in=list(wanted)).values_list("id", "vector"):
            checked += 1
            if not np.allclose(loaded.item_vector(wanted[eid]), np.frombuffer(vector, "<f4"), atol=1e-5):
                mismatched += 1
        self.stdout.write(
            f"Index {meta.version}: {meta.count} vectors of {meta.space}, built {meta.built_at}; "
            f"database: {len(stored)} vectors of {space}"
        )
        self.stdout.write(
            f"  {len(missing)} stored vectors not in the index (served by the exact pass until the next build)"
        )
        self.stdout.write(f"  {len(stale)} indexed vectors no longer stored (filtered out at query time)")
        self.stdout.write(f"  {checked - mismatched}/{checked} sampled vectors identical to the database")
        if mismatched:
            problems.append(f"{mismatched} sampled vectors differ from the database")
        if problems:
            raise CommandError("; ".join(problems))
        self.stdout.write(self.style.SUCCESS("The index is consistent with the database."))
