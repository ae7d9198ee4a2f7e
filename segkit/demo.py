"""``segkit demo``: the whole loop on a generated dataset, in a few minutes on a CPU.

generate shapes dataset -> check it -> train -> evaluate -> predict a folder (tiled) ->
export ONNX (verified) -> predict the same folder from the ONNX file -> say where everything is.
It is the same code path a user's own config takes; only the dataset and the sizes are fixed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from segkit.config import SegkitConfig, load_config, save_config

DEMO_MODEL: dict[str, Any] = {
    "arch": "Unet",
    "encoder": "resnet18",
    "encoder_weights": None,
    "kwargs": {"decoder_channels": [128, 64, 32, 16, 16]},
}


def demo_config(root: Path, data: dict[str, Any], epochs: int) -> SegkitConfig:
    """The demo's config: a small U-Net trained from scratch on the generated shapes."""
    return load_config(
        {
            "data": {
                "train": {"images": str(data["train_images"]), "masks": str(data["train_masks"])},
                "val": {"images": str(data["val_images"]), "masks": str(data["val_masks"])},
                "classes": data["classes"],
                "palette": data["palette"],
                "in_channels": 3,
                "patch_size": 96,
                "batch_size": 8,
                "steps_per_epoch": 6,  # 48 images: the plan's fixed epoch would be longer
                "num_workers": 0,
            },
            "model": DEMO_MODEL,
            "optimizer": {"lr": 3e-3},
            "scheduler": {"name": "cosine", "warmup_epochs": 1},
            "trainer": {
                "max_epochs": epochs,
                "accelerator": "auto",
                "devices": 1,
                "log_every_n_steps": 5,
            },
            "run": {
                "dir": str(root / "runs"),
                "name": "shapes",
                "seed": 0,
                "val_preview_images": 4,
            },
            "predict": {"tile": 128, "overlap": 0.25, "blend": "gaussian", "batch_size": 8},
        }
    )


def write_demo_data(root: Path) -> tuple[dict[str, Any], Path]:
    """Write the demo's shapes dataset under ``root/data`` (train, val) and, in ``root/data/new``,
    three larger images (no masks) to predict with the tiler.

    Returns the dataset description (:func:`make_shapes_dataset`) and the folder of larger images.
    """
    from segkit.data.synthetic import make_shape_sample, make_shapes_dataset
    from segkit.io.images import write_image

    data = make_shapes_dataset(root / "data", n_train=48, n_val=12, size=128, seed=0)
    new = root / "data" / "new"
    rng = np.random.default_rng(1)
    for i in range(3):
        image, _ = make_shape_sample(rng, 320)
        write_image(new / f"{i:03d}.png", image)
    return data, new


def run_demo(
    output: str | Path = "segkit-demo", epochs: int | None = None, console: Console | None = None
) -> dict[str, Path]:
    """Run the demo into ``output`` and return the paths it wrote."""
    from segkit.data.checks import check_config_data
    from segkit.evaluation import evaluate
    from segkit.export.onnx import export_onnx
    from segkit.pipeline.run import predict_source
    from segkit.training import train

    console = console or Console()
    root = Path(output).resolve()
    epochs = epochs or 12
    start = time.perf_counter()

    console.rule("1/6 generate a shapes dataset")
    data, new_images = write_demo_data(root)
    console.print(
        f"classes {data['classes']}; 48 train + 12 val images of 128x128 in {root / 'data'}"
    )

    console.rule("2/6 check the data")
    config = demo_config(root, data, epochs)
    save_config(config, root / "config.yaml")
    for report in check_config_data(config):
        console.print(report.render())

    console.rule(f"3/6 train a U-Net ({epochs} epochs on {config.trainer.accelerator})")
    result = train(config, config_path=root / "config.yaml")
    console.print(result.metrics.table(title="Validation metrics of the best checkpoint"))

    console.rule("4/6 evaluate the checkpoint")
    metrics_json = root / "metrics.json"
    metrics = evaluate(
        result.best_checkpoint, data["val_images"], data["val_masks"], json_path=metrics_json
    )
    console.print(
        f"val mIoU {metrics.miou:.3f}, pixel accuracy {metrics.pixel_accuracy:.3f} -> {metrics_json}"
    )

    console.rule("5/6 predict a folder of larger (320x320) images with the tiler")
    pred_dir = root / "predictions"
    summary = predict_source(
        result.best_checkpoint, str(new_images), pred_dir, save=["index", "color", "overlay"]
    )
    console.print(summary.describe())

    console.rule("6/6 export ONNX (verified) and predict the same folder with onnxruntime")
    onnx_path = root / "model.onnx"
    diff = export_onnx(result.best_checkpoint, onnx_path)
    onnx_dir = root / "predictions-onnx"
    predict_source(onnx_path, str(new_images), onnx_dir, save=["index"])
    agreement = _agreement(pred_dir, onnx_dir)
    console.print(
        f"{onnx_path}: max abs difference vs torch {diff:.1e}; ONNX and checkpoint masks agree on {agreement:.4%} of pixels"
    )

    paths = {
        "dataset": root / "data",
        "config": root / "config.yaml",
        "run": result.run_dir,
        "checkpoint": result.best_checkpoint,
        "metrics": metrics_json,
        "predictions": pred_dir,
        "onnx": onnx_path,
        "onnx_predictions": onnx_dir,
    }
    console.rule(f"done in {time.perf_counter() - start:.0f} s")
    for name, path in paths.items():
        console.print(f"{name:>16}: {path}")
    return paths


def _agreement(dir_a: Path, dir_b: Path) -> float:
    """Share of pixels on which the index masks in two prediction folders agree."""
    from PIL import Image

    same = total = 0
    for a in sorted(dir_a.rglob("*.png")):
        b = dir_b / a.relative_to(dir_a)
        if not b.exists() or a.stem.endswith(("_color", "_overlay")):
            continue
        ma, mb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        same += int((ma == mb).sum())
        total += ma.size
    return same / max(total, 1)
