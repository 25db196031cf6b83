"""Two runs of ``bench/served_shoppers.py`` on the same seeded paths and shoppers, paired.

    .venv/bin/python bench/served_shoppers.py --catalogs art --strategies neighbours,coherent --json /tmp/raw.json
    .venv/bin/python bench/served_shoppers.py --catalogs art --strategies neighbours,coherent --head pca256 \\
        --json /tmp/pca.json
    .venv/bin/python bench/served_paired.py /tmp/raw.json /tmp/pca.json --markdown /tmp/paired.md
    .venv/bin/python bench/served_shoppers.py --strategies coherent,coherent:overfetch=6 --json /tmp/of.json
    .venv/bin/python bench/served_paired.py /tmp/of.json /tmp/of.json --strategies coherent,coherent:overfetch=6

Both runs answer the same paths and shoppers (the bench seeds them from the catalog), so a difference between
the two servings is read path by path and shopper by shopper: the mean of the per-path differences (second run
minus first) with a 95 % bootstrap interval over paths (5,000 resamples, seeded). That interval is far
narrower than comparing two independent means when both runs mostly agree.

Paired are the readings that exist for the same paths in both runs: the grid after the text search, its
aspects and the fresh click (each path reads them whatever the grid shows), and every shopper's clicks to
the target. The grids at clicks 2-3 are not paired: which product a path clicks next depends on the grid
before, so the two runs' readings are of different clicks (compare those by each run's own summary).

Catalogs are matched by name (the ``, pcaN`` a ``--head`` run adds is left out); strategies present in both
runs are compared, or with ``--strategies FIRST,SECOND`` the first run's FIRST against the second run's SECOND
(two strategies of one run: give its file twice). Nothing here asserts; docs/quality.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Table, outputs_arguments, outputs_write  # noqa: E402

RESAMPLES = 5000
SEED = 11
# Grid kinds read for the same paths in both runs (see the module's doc), and the readings compared.
PAIRED_GRIDS = ("text", "fresh", "aspect: same colour", "aspect: any colour", "aspect: same shape")
READINGS = (("type_share", "type share"), ("few", "grids with < 10 of the type"), ("colour_share", "colour share"),
            ("cosine", "cosine to click"))  # fmt: skip
FOUND_WITHIN = (1, 3, 8)


class NotPaired(ValueError):
    """The two runs did not read the same paths or shoppers."""


def paired_difference(first: Sequence[float], second: Sequence[float], *, resamples: int = RESAMPLES,
                      seed: int = SEED) -> tuple[float, float, float]:  # fmt: skip
    """(mean of second - first, 2.5 % and 97.5 % bootstrap quantiles of that mean), pairs kept together."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if len(a) != len(b):
        raise NotPaired(f"{len(a)} readings against {len(b)}: not the same paths")
    if not len(a):
        return float("nan"), float("nan"), float("nan")
    differences = b - a
    picks = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[picks].mean(axis=1)
    return float(differences.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def found_within(clicks: Sequence[int | None], within: int) -> list[float]:
    """Per shopper, 1.0 when the target was on screen within ``within`` clicks."""
    return [1.0 if c is not None and c <= within else 0.0 for c in clicks]


def _catalogs(run: dict) -> dict[str, dict]:
    """The run's catalogs by name, without the suffix its ``--head`` adds (``art (1,799), pca256``)."""
    suffix = f", {run['head']}" if run.get("head") else ""
    return {name.removesuffix(suffix): measured for name, measured in run["catalogs"].items()}


def compare(
    first: dict, second: dict, *, resamples: int = RESAMPLES, strategies: tuple[str, str] | None = None
) -> tuple[Table, list[dict]]:
    """The paired table of two served_shoppers runs, and its rows as dicts: every strategy both ran, or the first
    run's ``strategies[0]`` against the second's ``strategies[1]``."""
    labels = (first.get("head") or "raw", second.get("head") or "raw")
    if strategies is not None:
        labels = (f"{labels[0]} {strategies[0]}", f"{labels[1]} {strategies[1]}")
    table = Table(
        f"Paired: {labels[1]} against {labels[0]}, the same seeded paths and shoppers",
        ["catalog", "strategy", "measure", labels[0], labels[1], f"{labels[1]} − {labels[0]}, paired [95 %]"],
        note=f"mean of the per-path (per-shopper) differences, bootstrap over paths ({resamples:,} resamples); the "
        "grids at clicks 2-3 are not paired (the runs click different products there)",
    )
    rows: list[dict] = []
    ours, theirs = _catalogs(first), _catalogs(second)
    for catalog in [name for name in ours if name in theirs]:
        a, b = ours[catalog], theirs[catalog]
        pairs = (
            [(name, name) for name in a["coherence"] if name in b["coherence"]] if strategies is None else [strategies]
        )
        for mine, other in pairs:
            if mine not in a["coherence"] or other not in b["coherence"]:
                continue
            strategy = mine if mine == other else f"{mine} → {other}"
            for kind in PAIRED_GRIDS:
                if kind not in a["coherence"][mine] or kind not in b["coherence"][other]:
                    continue
                for key, title in READINGS:
                    x, y = a["coherence"][mine][kind][key], b["coherence"][other][kind][key]
                    rows.append(_row(catalog, strategy, f"{title}, {kind}", x, y, resamples=resamples))
            for start in ("grid", "text"):
                keys = (f"{mine}/{start}", f"{other}/{start}")
                if keys[0] not in a["convergence"] or keys[1] not in b["convergence"]:
                    continue
                for within in FOUND_WITHIN:
                    x, y = (
                        found_within(run["convergence"][key], within) for run, key in zip((a, b), keys, strict=True)
                    )
                    where = "the home page's grid" if start == "grid" else "a text search"
                    rows.append(_row(catalog, strategy, f"found ≤ {within}, from {where}", x, y, resamples=resamples))
    for row in rows:
        table.add(row["catalog"], row["strategy"], row["measure"], f"{row['first']:.3f}", f"{row['second']:.3f}",
                  f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]")  # fmt: skip
    return table, rows


def _row(catalog: str, strategy: str, measure: str, x: Sequence, y: Sequence, *, resamples: int) -> dict:
    try:
        difference, low, high = paired_difference([float(v) for v in x], [float(v) for v in y], resamples=resamples)
    except NotPaired as exc:
        raise NotPaired(f"{catalog} / {strategy} / {measure}: {exc}") from None
    return {"catalog": catalog, "strategy": strategy, "measure": measure, "first": float(np.mean(x)),
            "second": float(np.mean(y)), "difference": difference, "low": low, "high": high}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="served_shoppers --json of the reference run (e.g. raw)")
    parser.add_argument("second", type=Path, help="served_shoppers --json of the run compared (e.g. --head pca256)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    parser.add_argument("--strategies", default=None, metavar="FIRST,SECOND",
                        help="pair the first run's strategy FIRST with the second run's SECOND")  # fmt: skip
    outputs_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs = []
    for path in (args.first, args.second):
        try:
            runs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: not a served_shoppers --json file ({exc})")
    strategies = None
    if args.strategies is not None:
        names = [name.strip() for name in args.strategies.split(",")]
        if len(names) != 2 or not all(names):  # noqa: PLR2004
            parser.error("--strategies takes two names: FIRST,SECOND")
        strategies = (names[0], names[1])
    try:
        table, rows = compare(*runs, resamples=args.resamples, strategies=strategies)
    except NotPaired as exc:
        parser.error(f"the runs are not paired: {exc}")
    if not rows:
        parser.error("the two runs share no catalog and strategy")
    print(table.text())
    outputs_write(args, tables=[table], data={"rows": rows}, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
