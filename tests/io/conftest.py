"""Fixtures of the io tests: tiny saved bundles (to predict through the readers) and an rng."""

from tests.data.conftest import rng
from tests.fixtures import bundle_path, gray_bundle_path

__all__ = ["bundle_path", "gray_bundle_path", "rng"]
