"""manage.py train_embedding_head: fit PCA or a triplet head on the stored raw vectors and save it, versioned."""

import time
from pathlib import Path

import numpy as np
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from lab import evaluation
from lab.heads import fit_pca, train_catalog_head
from recommender import runtime
from recommender.encoders import Encoder, EncoderUnavailable
from recommender.models import Embedding
from recommender.projection import Projection, ProjectionCorrupt
from recommender.services import image_source

# Rows read from the database per query: bounded memory on a catalog of any size.
CHUNK = 5000


def _trained_on(path: Path, raw_space: str) -> bool:
    """Whether the projection file at ``path`` was trained on ``raw_space`` vectors (an unreadable one is not)."""
    try:
        return Projection.load(path).encoder_id == raw_space
    except (ProjectionCorrupt, OSError):
        return False


class Command(BaseCommand):
    help = (
        "Train a projection of the active encoder's stored vectors (a triplet head on articleType|baseColour, "
        "or PCA), compare it with the raw vectors on a held-out split, and save it as a versioned file."
    )

    def add_arguments(self, parser):
        parser.add_argument("--kind", choices=("head", "pca"), default="head", help="what to fit (head)")
        parser.add_argument("--dim", type=int, default=256, help="output dimensions (256)")
        parser.add_argument("--epochs", type=int, default=30, help="training epochs of a head (30)")
        parser.add_argument("--seed", type=int, default=0, help="training seed (0)")
        parser.add_argument("--no-whiten", action="store_true", help="PCA without whitening")
        parser.add_argument("--out", type=Path, default=None, help="directory for the file (INDEX_DIR/heads)")
        parser.add_argument(
            "--use-if-better",
            action="store_true",
            help="serve it (use_projection) if no worse than raw on any held-out metric and better on one",
        )
        parser.add_argument(
            "--unless-trained", action="store_true", help="do nothing when a projection file exists already"
        )
        parser.add_argument("--copies", type=int, default=2, help="distorted copies per sampled product (2)")
        parser.add_argument(
            "--augment", type=int, default=2000, help="training products whose photos get distorted copies (2000)"
        )
        parser.add_argument(
            "--recall-sample", type=int, default=500, help="held-out products searched by a distorted copy (500)"
        )
        parser.add_argument("--k", type=int, default=10, help="cut-off of the comparison metrics (10)")

    def handle(self, *args, **options):
        raw_space = runtime.active_space().partition("+")[0]
        # Per encoder: a site moved from Lite0 to ResNet50 has Lite0 heads that cannot serve the new space.
        if options["unless_trained"] and any(_trained_on(p, raw_space) for p in runtime.heads_dir().glob("head-*.npz")):
            self.stdout.write(
                f"A projection of {raw_space} was trained already ({runtime.heads_dir()}); nothing to do."
            )
            return
        quiet = options["verbosity"] == 0
        try:
            encoder = runtime.encoder_for(runtime.SPACE_ENCODERS[raw_space])
        except (EncoderUnavailable, KeyError) as exc:
            raise CommandError(f"No encoder for the space {raw_space}: {exc}") from exc

        ids, vectors, types, colours, images = self._rows(raw_space)
        if len(ids) < 10:
            raise CommandError(f"Only {len(ids)} stored vectors in {raw_space}: run embed_catalog first")
        catalog = evaluation.LabelledCatalog(ids=ids, article_types=types, colours=colours)
        split = evaluation.split_stratified(ids=ids, strata=types)
        self.stdout.write(
            f"{len(ids)} vectors of {raw_space} ({vectors.shape[1]}-d): {len(split.index)} to train on, "
            f"{len(split.query)} held out (seed {evaluation.SPLIT_SEED})"
        )

        rng = np.random.default_rng(options["seed"])
        with_image = np.array([bool(name) for name in images])
        augmented, augmented_of = np.zeros((0, vectors.shape[1]), np.float32), np.zeros(0, np.int64)
        if options["kind"] == "head" and options["augment"] > 0 and options["copies"] > 0:
            pool = split.index[with_image[split.index]]
            chosen = np.sort(rng.choice(pool, min(options["augment"], len(pool)), replace=False))
            augmented, augmented_of = self._distorted(
                encoder, chosen, ids, images, seed=evaluation.TRAIN_DISTORT_SEED, copies=options["copies"], quiet=quiet
            )
        pool = split.query[with_image[split.query]]
        queries = np.sort(rng.choice(pool, min(options["recall_sample"], len(pool)), replace=False))
        distorted, distorted_of = self._distorted(
            encoder, queries, ids, images, seed=evaluation.EVAL_DISTORT_SEED, copies=1, quiet=quiet
        )

        train = vectors[split.index]
        started = time.perf_counter()
        if options["kind"] == "pca":
            projection = fit_pca(
                train, dim=options["dim"], whiten=not options["no_whiten"], seed=options["seed"], encoder_id=encoder.id
            )
        else:
            position = np.full(len(ids), -1, dtype=np.int64)
            position[split.index] = np.arange(len(split.index))
            with tqdm(total=options["epochs"], unit="epoch", desc="train", disable=quiet) as bar:
                projection, _ = train_catalog_head(
                    train,
                    article_types=types[split.index].tolist(),
                    colours=colours[split.index].tolist(),
                    augmented=augmented if len(augmented) else None,
                    augmented_of=position[augmented_of] if len(augmented) else None,
                    out_dim=options["dim"],
                    epochs=options["epochs"],
                    seed=options["seed"],
                    encoder_id=encoder.id,
                    progress=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")),
                )
        seconds = time.perf_counter() - started
        self.stdout.write(
            f"Fitted {projection.version} in {seconds:.1f}s; near neighbours' cosines spread "
            f"{projection.image_spread:.2f}x as wide as raw ones"
        )

        data = evaluation.EvalSet(
            catalog=catalog,
            vectors=vectors,
            split=split,
            distorted=distorted,
            distorted_of=distorted_of,
            train_augmented=augmented,
            train_augmented_of=augmented_of,
            encoder_id=encoder.id,
        )
        k = options["k"]
        results = evaluation.evaluate_spaces(
            {"raw": evaluation.identity, projection.version: projection.apply}, data=data, k=k
        )
        self.stdout.write("\nHeld-out comparison:\n" + evaluation.results_table(results))
        raw, new = results
        gains = {key: new.metrics[key] - raw.metrics[key] for key in raw.metrics}
        wins = [f"{key} {gain:+.3f}" for key, gain in gains.items() if gain > 0]
        losses = [f"{key} {gain:+.3f}" for key, gain in gains.items() if gain < 0]
        self.stdout.write(f"\nBetter than raw on: {', '.join(wins) or 'nothing'}")
        self.stdout.write(f"Worse than raw on: {', '.join(losses) or 'nothing'}")

        projection = projection.with_metrics(
            {
                "heldout": {"raw": raw.metrics, "projection": new.metrics},
                "annoy": {
                    "raw": {"bytes": raw.index_bytes, "query_ms": raw.query_ms_median},
                    "projection": {"bytes": new.index_bytes, "query_ms": new.query_ms_median},
                },
                "context": evaluation.eval_context(data, k=k),
            }
        )
        path = projection.save(options["out"] or runtime.heads_dir())
        self.stdout.write(self.style.SUCCESS(f"Saved {path}"))
        self.stdout.write(f"version {projection.version}\nspace   {projection.space}")
        if options["use_if_better"]:
            if wins and not losses:
                call_command("use_projection", str(path), stdout=self.stdout, verbosity=options["verbosity"])
            else:
                self.stdout.write("Not served: it does not beat the raw vectors on every held-out metric")

    def _rows(self, space: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Ids, raw vectors, article types, colours and image names of every product with a vector in ``space``."""
        rows = (
            Embedding.objects.filter(space=space, product__isnull=False)
            .order_by("product_id")
            .values_list("product_id", "vector", "product__article_type", "product__base_colour", "product__image")
        )
        ids, vectors, types, colours, images = [], [], [], [], []
        for product_id, vector, article_type, colour, image in rows.iterator(chunk_size=CHUNK):
            ids.append(product_id)
            vectors.append(np.frombuffer(vector, dtype="<f4"))
            types.append(article_type or "")
            colours.append(colour or "")
            images.append(image or "")
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros(0, str), np.zeros(0, str), []
        return (
            np.asarray(ids, dtype=np.int64),
            np.stack(vectors).astype(np.float32),
            np.asarray(types, dtype=str),
            np.asarray(colours, dtype=str),
            images,
        )

    def _distorted(
        self,
        encoder: Encoder,
        rows: np.ndarray,
        ids: np.ndarray,
        images: list[str],
        *,
        seed: int,
        copies: int,
        quiet: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw vectors of distorted copies of the products at ``rows``, and the row each copy belongs to."""
        sources, kept = [], []
        for row in rows:
            try:
                sources.append(image_source(images[int(row)]))
            except OSError as exc:
                self.stderr.write(f"Skipping product {ids[row]}: {exc}")
                continue
            kept.append(int(row))
        desc = "copies (train)" if seed == evaluation.TRAIN_DISTORT_SEED else "copies (held out)"
        with tqdm(total=len(sources) * copies, unit="img", desc=desc, disable=quiet) as bar:
            vectors, positions = evaluation.embed_distorted(
                encoder=encoder,
                sources=sources,
                keys=ids[kept].tolist(),
                seed=seed,
                copies=copies,
                progress=bar.update,
            )
        return vectors, np.asarray(kept, dtype=np.int64)[positions]
