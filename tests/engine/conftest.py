"""Fixtures of the engine tests: tiny saved bundles, one briefly trained."""

from tests.fixtures import bundle_path, gray_bundle_path, trained_bundle_path

__all__ = ["bundle_path", "gray_bundle_path", "trained_bundle_path"]
