"""best.ckpt is what users ship (weights and the bundle's facts); last.ckpt keeps what resume needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segkit.bundle import load_bundle
from segkit.cli import main
from segkit.config import load_config
from segkit.data.synthetic import make_shapes_dataset
from segkit.training import train
from tests.conftest import shapes_run_config

pytestmark = pytest.mark.slow  # each test trains a run (the fixture) and resumes or exports it


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    data = make_shapes_dataset(root / "data", n_train=8, n_val=2, size=64, seed=0)
    config = load_config(
        shapes_run_config(
            data,
            root / "runs",
            data={"batch_size": 4},
            trainer={"max_epochs": 2},
            run={"name": "r", "plan": False},
        )
    )
    return train(config), data


def test_best_is_at_most_60_percent_of_last_and_holds_no_optimiser_state(run):
    result, _ = run
    best, last = result.best_checkpoint, result.last_checkpoint
    assert best.name == "best.ckpt" and last.name == "last.ckpt"
    assert best.stat().st_size <= 0.6 * last.stat().st_size
    best_dict = torch.load(best, map_location="cpu", weights_only=True)
    last_dict = torch.load(last, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in best_dict and "lr_schedulers" not in best_dict
    assert last_dict["optimizer_states"] and last_dict["lr_schedulers"]
    assert (
        best_dict["hyper_parameters"]["model_card"]["config"]["data"]["classes"]
        == run[1]["classes"]
    )


def test_best_is_a_complete_bundle_for_predict(run, tmp_path):
    result, data = run
    bundle = load_bundle(result.best_checkpoint)
    model = bundle.build_model()
    assert bundle.card.classes == data["classes"] and model is not None
    out = tmp_path / "out"
    assert (
        main(["predict", str(result.best_checkpoint), str(data["val_images"]), "-o", str(out)]) == 0
    )
    masks = sorted(out.glob("*.png"))
    assert len(masks) == 2
    from PIL import Image

    assert np.asarray(Image.open(masks[0])).shape == (64, 64)


def test_last_resumes_the_run(run):
    result, _ = run
    config = load_config(
        result.run_dir / "config.yaml", ["run.resume=last", "trainer.max_epochs=3"]
    )
    resumed = train(config)
    assert resumed.run_dir == result.run_dir
    assert torch.load(resumed.last_checkpoint, weights_only=True)["epoch"] == 2
