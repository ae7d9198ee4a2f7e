"""The README documents what the code does: every config key, the two set-up commands."""

from __future__ import annotations

from pathlib import Path

from segkit.config import config_reference

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_config_key_is_in_the_reference():
    missing = [key for key, _, _ in config_reference() if f"`{key}`" not in README]
    assert not missing, f"README's config reference lacks {missing}"


def test_the_two_setup_commands_are_the_makefile_targets():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (Path(__file__).parents[1] / ".ci" / "run").read_text()
