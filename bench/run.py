"""Run the performance benchmarks: ``.venv/bin/python bench/run.py [--quick] [--only NAME[,NAME]]``.

Sections (in run order): embed, query, index, http, ingest, and ``realscale`` (only when named with
``--only``: it prepares the real catalog's size once, then runs ~15 minutes; see bench/realscale.py). Each
prints its tables and writes ``bench/results/<section>.json``; the whole run also writes
``bench/results/report.md`` (every table in Markdown, with the machine description and the command) for
docs/benchmarks.md. ``--quick`` is the CI-smoke mode: small sizes, a minute or two in all, written under
``bench/results/quick/`` so it never replaces a full run's results. Nothing here asserts on timings.

Everything runs on throwaway state: a temporary directory holds the SQLite database, media, index builds
and logs (removed at the end unless ``--keep``), and Redis database 12 is flushed before and after.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    BenchContext,
    SectionResult,
    django_setup,
    environment_prepare,
    machine_describe,
    redis_flush,
)

SECTIONS = ("embed", "query", "index", "http", "ingest", "realscale")
# Run only when asked for by name: its first run draws, imports and embeds the 44k-row catalog.
OPT_IN = ("realscale",)


def _section_runner(name: str):  # noqa: ANN202
    module = __import__(f"bench.{name}" if name in OPT_IN else f"bench.{name}_bench", fromlist=["run"])
    return module.run


def _report(results: list[SectionResult], machine: dict, command: str, quick: bool) -> str:
    lines = [
        "# Benchmark report",
        "",
        f"Command: `{command}`{' (quick mode)' if quick else ''}",
        "",
        "Machine: "
        + ", ".join(
            [
                machine["cpu_model"],
                f"{machine['cores']} cores",
                f"{machine['ram_gib']} GiB RAM",
                f"flags {' '.join(machine['cpu_flags'])}",
                f"load average at start {machine['load_average_at_start']}",
            ]
        ),
        "",
        "Versions: "
        + ", ".join(
            f"{name} {machine[name]}"
            for name in ("python", "torch", "annoy", "faiss", "numpy", "scikit-learn", "scipy", "pillow", "django")
        )
        + f"; git {machine['git_commit']}",
    ]
    for result in results:
        lines += ["", f"## {result.name} ({result.seconds:.0f} s)", "", result.markdown()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a CI smoke run of a minute or two")
    parser.add_argument("--only", action="append", default=[], help=f"run only these sections: {', '.join(SECTIONS)}")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where to write the JSON and report.md (default bench/results, or bench/results/quick with --quick)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args(argv)
    args.results = args.results or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    chosen = [name.strip() for value in args.only for name in value.split(",") if name.strip()] or [
        name for name in SECTIONS if name not in OPT_IN
    ]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    chosen = [name for name in SECTIONS if name in chosen]

    command = "bench/run.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = f".venv/bin/python {command.strip()}"
    tmp = Path(tempfile.mkdtemp(prefix="gallery-bench-"))
    environment_prepare(tmp)
    django_setup()
    machine = machine_describe()
    args.results.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(quick=args.quick, tmp=tmp, results_dir=args.results)
    print(f"Benchmarks {', '.join(chosen)} ({'quick' if args.quick else 'full'}); scratch in {tmp}")
    print(
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB, "
        f"load {machine['load_average_at_start']}"
    )
    results: list[SectionResult] = []
    failed: list[str] = []
    redis_flush()
    try:
        for name in chosen:
            print(f"\n=== {name} ===", flush=True)
            started = time.perf_counter()
            try:
                result = _section_runner(name)(ctx)
            except Exception:  # one broken section must not hide the others' results  # noqa: BLE001
                traceback.print_exc()
                failed.append(name)
                continue
            result.seconds = time.perf_counter() - started
            results.append(result)
            path = result.write(args.results, quick=args.quick, machine=machine, command=command)
            print(result.text())
            print(
                f"({result.seconds:.0f} s; {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})", flush=True
            )
    finally:
        redis_flush()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = args.results / "report.md"
    report.write_text(_report(results, machine, command, args.quick))
    print(f"\nreport: {report}")
    if failed:
        print(f"FAILED sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
