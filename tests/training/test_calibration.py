"""train() fits a temperature on the validation set and stores it in the best checkpoint."""

from __future__ import annotations

import json

import torch

from segkit.config import load_config
from segkit.data.synthetic import make_shapes_dataset
from segkit.training import train
from tests.training.test_train import _config


def test_train_stores_a_fitted_temperature_and_reports_calibration(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", n_train=8, n_val=2, size=64, seed=0)
    config = load_config(_config(data, tmp_path / "runs", trainer={"max_epochs": 1}))
    result = train(config)
    raw = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    temperature = raw["hyper_parameters"]["model_card"]["temperature"]
    assert isinstance(temperature, float) and temperature > 0 and temperature != 1.0
    stored = json.loads((result.run_dir / "metrics.json").read_text())["calibration"]
    assert stored["temperature"] == temperature
    assert 0 <= stored["ece_after"] <= 1 and stored["nll_after"] <= stored["nll_before"] + 1e-6
