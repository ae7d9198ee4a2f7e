"""Fixtures of the inference tests: tiny saved bundles."""

from tests.fixtures import bundle_path, gray_bundle_path, trained_bundle_path

__all__ = ["bundle_path", "gray_bundle_path", "trained_bundle_path"]
