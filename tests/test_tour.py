"""The README tour runs word for word in a folder with only configs/ in it (no ../shared data).

The commands are read from README.md's "## Tour" code block, so the README and this test cannot
drift. Training gets a tiny model and one short epoch appended as overrides, to stay fast.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from segkit.cli import main
from tests.conftest import TINY_MODEL

ROOT = Path(__file__).parents[1]

FAST_TRAINING = [
    f"model.encoder={TINY_MODEL['encoder']}",
    f"model.kwargs={TINY_MODEL['kwargs']}",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.accelerator=cpu",
]


def tour_commands() -> list[list[str]]:
    """The ``segkit ...`` lines of the README's tour block, split like a shell would."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^## Tour\n.*?```bash\n(.*?)```", readme, re.S | re.M)
    assert block, "README.md has a '## Tour' section with a bash block"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [line for line in lines if line and line[0] == "segkit"]


def test_the_tour_starts_with_writing_its_data():
    first = tour_commands()[0]
    assert first[:3] == ["segkit", "demo", "--data-only"]


@pytest.mark.slow
def test_the_readme_tour_runs_word_for_word(tmp_path, monkeypatch, capfd):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    commands = tour_commands()
    assert [c[1] for c in commands] == [
        "demo",
        "check-data",
        "train",
        "train",
        "evaluate",
        "predict",
        "export",
        "predict",
    ]
    for argv in commands:
        args = argv[1:]
        if args[0] == "train" and "--print-config" not in args:
            args = [*args, *FAST_TRAINING]
        code = main(args)
        out, err = capfd.readouterr()
        assert code == 0, f"{shlex.join(argv)} exited {code}: {err}"
        if args[0] == "train" and "--print-config" not in args:
            # quiet by default, and a log-friendly progress line per epoch (output is no terminal)
            assert out.count("epoch 1/1 ") == 1, out
            line = next(x for x in out.splitlines() if x.startswith("epoch 1/1 "))
            assert line.count("train/loss ") == 1 and line.count("val/mIoU ") == 1, line
            for noise in ("Tip:", "GPU available", "FLOPs", "Sanity Checking", "Warning"):
                assert noise not in out + err, noise
    assert (tmp_path / "runs" / "shapes" / "best.ckpt").is_file()
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "shapes.onnx").is_file()
    for out in ("masks", "masks-onnx"):
        assert sorted(p.name for p in (tmp_path / out).glob("*.png") if "_" not in p.stem) == [
            "000.png",
            "001.png",
            "002.png",
        ]


@pytest.mark.parametrize("config", ["shapes.yaml"])
def test_the_tour_config_matches_the_demo(config, tmp_path):
    """configs/shapes.yaml and `segkit demo` train the same model on the same classes."""
    from segkit.config import load_config
    from segkit.demo import DEMO_MODEL, demo_config, write_demo_data

    data, _ = write_demo_data(tmp_path)
    demo = demo_config(tmp_path, data, epochs=1)
    tour = load_config(ROOT / "configs" / config)
    assert tour.model.model_dump() == load_config({"model": DEMO_MODEL}).model.model_dump()
    assert tour.data.classes == demo.data.classes and tour.data.palette == demo.data.palette
    assert tour.data.patch_size == demo.data.patch_size
