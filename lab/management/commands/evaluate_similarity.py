"""manage.py evaluate_similarity: retrieval quality of raw, PCA and trained-head spaces on a labelled catalog."""

import json
import tempfile
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery.catalog import CatalogError
from lab import evaluation
from lab.demo import demo_catalog_write
from recommender import runtime
from recommender.encoders import EncoderUnavailable
from recommender.projection import Projection, ProjectionCorrupt


class Command(BaseCommand):
    help = (
        "Measure retrieval quality (precision@K, mAP@K by articleType and colour, recall of distorted copies) "
        "and Annoy size/speed of the raw encoder space, PCA and a triplet head, on a held-out split."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--catalog", type=Path, default=None, help="a styles.csv + images/ directory (default: the demo catalog)"
        )
        parser.add_argument("--count", type=int, default=400, help="demo catalog size when no --catalog (400)")
        parser.add_argument("--demo-seed", type=int, default=7, help="demo catalog seed when no --catalog (7)")
        parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
        parser.add_argument("--k", type=int, default=10, help="cut-off of the metrics (10)")
        parser.add_argument("--dim", type=int, default=256, help="dimensions of the PCA and head spaces (256)")
        parser.add_argument("--epochs", type=int, default=30, help="head training epochs (30)")
        parser.add_argument("--seed", type=int, default=0, help="PCA/head training seed (0)")
        parser.add_argument("--no-head", action="store_true", help="do not train a head (raw and PCA only)")
        parser.add_argument(
            "--head",
            type=Path,
            action="append",
            default=[],
            help="also evaluate this saved projection file (repeatable); one trained on this very catalog has "
            "seen the query products, so its numbers are optimistic",
        )
        parser.add_argument("--train-copies", type=int, default=2, help="distorted copies per product to train on")
        parser.add_argument("--train-sample", type=int, default=2000, help="index products that get copies (2000)")
        parser.add_argument("--recall-sample", type=int, default=1000, help="query products searched by copy (1000)")
        parser.add_argument("--decode-workers", type=int, default=0, help="processes decoding catalog images")

    def handle(self, *args, **options):
        quiet = options["verbosity"] == 0
        k = options["k"]
        if k < 1:
            raise CommandError("--k must be at least 1")
        try:
            encoder = runtime.encoder_for(runtime.SPACE_ENCODERS[runtime.active_space().partition("+")[0]])
        except (EncoderUnavailable, KeyError) as exc:
            raise CommandError(f"No encoder for the active space: {exc}") from exc
        extra: dict[str, Projection] = {}
        for path in options["head"]:
            try:
                projection = Projection.load(path)
            except (ProjectionCorrupt, OSError) as exc:
                raise CommandError(str(exc)) from exc
            if projection.encoder_id != encoder.id:
                raise CommandError(f"{path} projects {projection.encoder_id} vectors; the encoder is {encoder.id}")
            extra[f"file:{projection.version}"] = projection

        with tempfile.TemporaryDirectory(prefix="evaluate-similarity-") as scratch:
            directory = options["catalog"]
            if directory is None:
                directory = Path(scratch) / "demo"
                demo_catalog_write(out_dir=directory, count=options["count"], seed=options["demo_seed"])
                self.stdout.write(f"Demo catalog: {options['count']} products, seed {options['demo_seed']}")
            try:
                catalog = evaluation.catalog_read(directory)
            except CatalogError as exc:
                raise CommandError(str(exc)) from exc
            if len(catalog) < 10:
                raise CommandError(f"{directory} has only {len(catalog)} products with images; 10 at least")
            self.stdout.write(
                f"Encoder {encoder.id} ({encoder.dim}-d, bf16 {'on' if encoder.bf16 else 'off'}); "
                f"{len(catalog)} products in {directory}"
            )
            started = time.perf_counter()
            with tqdm(unit="img", desc="embed", disable=quiet) as bar:
                data = evaluation.prepare_eval_set(
                    catalog=catalog,
                    encoder=encoder,
                    train_copies=0 if options["no_head"] else options["train_copies"],
                    train_sample=options["train_sample"],
                    recall_sample=options["recall_sample"],
                    decode_workers=options["decode_workers"],
                    progress=bar.update,
                )
        embed_seconds = time.perf_counter() - started
        self.stdout.write(
            f"Split: {len(data.split.index)} index / {len(data.split.query)} query products (seed "
            f"{data.split_seed}); {len(data.distorted)} distorted queries; embedded in {embed_seconds:.0f}s"
        )

        with tqdm(total=options["epochs"], unit="epoch", desc="head", disable=quiet or options["no_head"]) as bar:
            started = time.perf_counter()
            spaces, projections = evaluation.standard_spaces(
                data,
                dim=options["dim"],
                epochs=options["epochs"],
                seed=options["seed"],
                train_head=not options["no_head"],
                progress=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}")),
            )
            fit_seconds = time.perf_counter() - started
        for name, projection in extra.items():
            spaces[name] = projection.apply
            projections[name] = projection
        results = evaluation.evaluate_spaces(spaces, data=data, k=k)
        for result in results:
            if result.name in projections:
                result.notes = {"version": projections[result.name].version, **projections[result.name].params}

        context = evaluation.eval_context(data, k=k)
        context |= {
            "catalog": str(options["catalog"] or f"demo(count={options['count']}, seed={options['demo_seed']})"),
            "encoder_bf16": encoder.bf16,
            "embed_seconds": round(embed_seconds, 1),
            "fit_seconds": round(fit_seconds, 1),
        }
        self.stdout.write("")
        self.stdout.write(evaluation.results_table(results))
        chance = ", ".join(f"{name} {value:.3f}" for name, value in context["chance"].items())
        ceiling = ", ".join(f"{name} {value:.3f}" for name, value in context["ceiling"].items())
        self.stdout.write(f"\nchance p@{k}: {chance}\nceiling p@{k} (relevant items that exist): {ceiling}")
        if options["json"]:
            options["json"].parent.mkdir(parents=True, exist_ok=True)
            options["json"].write_text(json.dumps(evaluation.results_json(results, context=context), indent=2))
            self.stdout.write(f"Wrote {options['json']}")
