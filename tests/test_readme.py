"""The README is a user's document: short, and true to the code (set-up commands, config keys)."""

from __future__ import annotations

from pathlib import Path

from segkit.config import config_reference

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIG_DOC = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")


def test_readme_is_at_most_12000_bytes():
    size = len(README.encode("utf-8"))
    assert size <= 12_000, f"README.md is {size} bytes; move details to docs/"


def test_every_config_key_is_in_the_config_reference():
    missing = [key for key, _, _ in config_reference() if f"`{key}`" not in CONFIG_DOC]
    assert not missing, f"docs/config.md lacks {missing}"


def test_the_two_setup_commands_are_the_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_linked_document_exists():
    import re

    links = re.findall(r"\]\(([^)#:]+\.(?:md|png))\)", README)
    assert links, "the README links its docs"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links missing files: {missing}"


def test_user_docs_hold_no_commit_hashes():
    import re

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b[0-9a-f]{40}\b", text), path
