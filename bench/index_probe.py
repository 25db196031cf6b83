"""A stand-in web process for the index section: load a published build, query it, then wait.

Usage: ``python bench/index_probe.py INDEX_DIR VERSION QUERIES.npy``. Loads the build with the product's
``recommender.index.LoadedIndex`` (mmap, as every web process does), runs one query per row of the
queries file, prints ``ready`` and waits until its stdin is closed, so the parent can read its
/proc/<pid>/smaps meanwhile. Needs no Django.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recommender.index import LoadedIndex  # noqa: E402

N_REQUEST = 62  # what similar_products asks for on a click


def main() -> None:
    directory, version, queries_path = sys.argv[1:4]
    loaded = LoadedIndex(Path(directory), version)
    for vector in np.load(queries_path):
        loaded.query(vector, n=N_REQUEST)
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
