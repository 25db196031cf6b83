"""Performance benchmarks: run `.venv/bin/python bench/run.py` (see bench/run.py)."""
