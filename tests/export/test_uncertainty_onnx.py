"""Entropy and confidence maps from an ONNX export agree with its checkpoint's."""

from __future__ import annotations

import numpy as np
import tifffile

from segkit.pipeline.run import predict_source


def test_onnx_maps_agree_with_the_checkpoint(trained_bundle, exported, test_image, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", test_image)
    maps = {}
    for name, model in (("torch", trained_bundle), ("onnx", exported[0])):
        out = tmp_path / name
        summary = predict_source(
            model,
            src,
            out,
            save=["entropy", "confidence"],
            device="cpu",
            progress=False,
            tile=48,
            overlap=0.25,
        )
        assert summary.ok == 1
        maps[name] = {k: tifffile.imread(out / f"a_{k}.tif") for k in ("entropy", "confidence")}
    for kind in ("entropy", "confidence"):
        assert maps["onnx"][kind].shape == test_image.shape[:2]
        np.testing.assert_allclose(maps["onnx"][kind], maps["torch"][kind], atol=1e-4)
    assert maps["torch"]["entropy"].std() > 0.01  # the comparison covers varied values
