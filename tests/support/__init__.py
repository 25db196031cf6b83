"""Helpers the tests share: plain functions and data, imported by name (fixtures are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
