"""Lightning callbacks of a segkit run: the per-epoch validation preview grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from PIL import Image

from segkit.card import CARD_KEY, ModelCard
from segkit.utils import atomic_path

IGNORE_COLOR = (128, 128, 128)
GAP = 4


def _display(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 for viewing (grey unless C == 3)."""
    img = image if image.shape[0] == 3 else np.repeat(image[:1], 3, axis=0)
    return (np.clip(img, 0.0, 1.0).transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _colorize(labels: np.ndarray, colors: np.ndarray, ignore_index: int) -> np.ndarray:
    lut = np.zeros(
        (max(int(labels.max(initial=0)), len(colors) - 1, ignore_index) + 1, 3), np.uint8
    )
    lut[ignore_index] = IGNORE_COLOR
    lut[: len(colors)] = colors
    return lut[labels.astype(np.int64)]


def preview_grid(
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    colors: np.ndarray,
    ignore_index: int,
    max_side: int = 256,
) -> Image.Image:
    """One row per sample: image | ground truth | prediction (ignored pixels grey).

    ``samples`` holds ``(image (C,H,W) in [0, 1], mask (H,W), prediction (H,W))``; rows are
    scaled so that their longer side is at most ``max_side`` pixels.
    """
    rows = []
    for image, mask, pred in samples:
        cells = [
            Image.fromarray(_display(image)),
            Image.fromarray(_colorize(mask, colors, ignore_index)),
            Image.fromarray(_colorize(pred, colors, ignore_index)),
        ]
        scale = min(1.0, max_side / max(cells[0].size))
        if scale < 1.0:
            size = (max(1, round(cells[0].width * scale)), max(1, round(cells[0].height * scale)))
            cells = [cells[0].resize(size, Image.Resampling.BILINEAR)] + [
                c.resize(size, Image.Resampling.NEAREST) for c in cells[1:]
            ]
        rows.append(cells)
    width = max(3 * r[0].width + 2 * GAP for r in rows)
    height = sum(r[0].height for r in rows) + GAP * (len(rows) - 1)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for cells in rows:
        for i, cell in enumerate(cells):
            grid.paste(cell, (i * (cell.width + GAP), y))
        y += cells[0].height + GAP
    return grid


class ValidationPreview(L.Callback):
    """Saves ``<root>/previews/epoch_NNN.png`` of the first ``num_images`` validation images each
    validation epoch (rank 0 only, atomic write; skipped during the sanity check).

    Expects ``validation_step`` to return ``{"preds": (N, H, W)}`` and batches with ``image`` / ``mask``.
    """

    def __init__(self, num_images: int, ignore_index: int) -> None:
        self.num_images = num_images
        self.ignore_index = ignore_index
        self._samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            trainer.sanity_checking
            or not trainer.is_global_zero
            or len(self._samples) >= self.num_images
        ):
            return
        if not isinstance(outputs, dict) or "preds" not in outputs:
            return
        room = self.num_images - len(self._samples)
        for image, mask, pred in list(
            zip(batch["image"], batch["mask"], outputs["preds"], strict=True)
        )[:room]:
            self._samples.append(
                (image.float().cpu().numpy(), mask.cpu().numpy(), pred.cpu().numpy())
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples, self._samples = self._samples, []
        if not samples or trainer.sanity_checking or not trainer.is_global_zero:
            return
        card = ModelCard.model_validate(pl_module.hparams[CARD_KEY])
        grid = preview_grid(samples, card.color_table, self.ignore_index)
        path = (
            Path(trainer.default_root_dir) / "previews" / f"epoch_{trainer.current_epoch:03d}.png"
        )
        with atomic_path(path) as tmp:
            grid.save(tmp, format="PNG")
