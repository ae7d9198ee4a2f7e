"""Fixtures of the pipeline tests: a tiny saved bundle."""

from tests.fixtures import bundle_path

__all__ = ["bundle_path"]
