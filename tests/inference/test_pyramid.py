"""Large index masks are pyramidal OME-TIFFs that tifffile (and QuPath, napari) read by level."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from segkit.inference.predictor import Predictor
from segkit.inference.run import predict_source
from segkit.inference.writers import outputs_exist, pyramid_levels

from .conftest import model_card


class ThresholdBackend:
    """A per-pixel two-class model on gray tiles (class 1 where the pixel is bright): cheap enough
    to predict 8192 x 8192 pixels in seconds on a CPU."""

    device = torch.device("cpu")
    card = model_card(2, in_channels=1)

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(tiles[:, :1] * 4)
        return torch.cat([1 - p, p], dim=1)


@pytest.mark.slow
def test_8192_prediction_is_a_pyramid_of_at_least_three_levels(tmp_path):
    side = 8192
    src = tmp_path / "in"
    src.mkdir()
    image = np.zeros((side, side), np.uint8)
    image[:, side // 2 :] = 255  # right half: class 1
    image[: side // 4] = 255 - image[: side // 4]  # top quarter: swapped
    tifffile.imwrite(src / "big.tif", image)  # uncompressed: memory-mapped
    del image
    predictor = Predictor(ThresholdBackend(), tile=2048, overlap=0, blend="constant", batch_size=1)
    out = tmp_path / "out"
    summary = predict_source(predictor, src, out, save=["index"], progress=False)
    assert summary.ok == 1, summary.failures
    path = out / "big.ome.tif"
    assert outputs_exist(out / "big", ["index"], 2)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        assert len(levels) >= 3 and len(levels) == pyramid_levels(side, side)
        shapes = [level.shape for level in levels]
        assert shapes[:3] == [(side, side), (side // 2, side // 2), (side // 4, side // 4)]
        full, third = levels[0].asarray(), levels[2].asarray()
    expected = np.zeros((side, side), np.uint8)
    expected[:, side // 2 :] = 1
    expected[: side // 4] = 1 - expected[: side // 4]
    np.testing.assert_array_equal(full, expected)
    np.testing.assert_array_equal(third, expected[::4, ::4])


def test_small_masks_stay_png(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "small.tif", np.zeros((64, 96), np.uint8))
    predictor = Predictor(ThresholdBackend(), tile=64)
    predict_source(predictor, src, tmp_path / "out", save=["index"], progress=False)
    assert (tmp_path / "out" / "small.png").is_file()
