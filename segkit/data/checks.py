"""check-data: find every problem in a dataset up front, one line per file, before training starts.

Unlike the Dataset (which stops at the first bad file), this collects all problems: unpaired
files, unreadable files, size mismatches, mask values that are not classes; it also counts
pixels per class so an unused class or a heavy imbalance is visible before hours of training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segkit.config import DataConfig, SegkitConfig
from segkit.data.dataset import check_same_size, index_by_key, pair_key, unpaired
from segkit.data.masks import load_mask, mask_histogram
from segkit.errors import ConfigError, DataError
from segkit.io.images import LOSSY_SUFFIXES, list_images, read_header, read_image

MAX_LINES = 20


@dataclass
class DataReport:
    """What check-data found in one split (``problems`` make it fail, ``warnings`` do not)."""

    name: str
    images_dir: Path
    masks_dir: Path
    n_images: int = 0
    n_masks: int = 0
    n_pairs: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_pixels: dict[str, int] = field(default_factory=dict)
    ignored_pixels: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings allowed)."""
        return not self.problems

    def render(self, problems: bool = True) -> Any:
        """A rich renderable: counts, the class histogram with pixel shares, problems, warnings.

        ``problems=False`` leaves the problem lines out, for a caller that reports them itself
        (the CLI prints each as an ``error:`` line, once). No pair read, no histogram.
        """
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        status = "[green]ok[/green]" if self.ok else f"[red]{len(self.problems)} problem(s)[/red]"
        summary = Table(
            title=f"check-data: {self.name} — {status}", show_header=False, title_justify="left"
        )
        summary.add_column(style="bold")
        summary.add_column()
        summary.add_row("images", f"{self.n_images}  ({self.images_dir})")
        summary.add_row("masks", f"{self.n_masks}  ({self.masks_dir})")
        summary.add_row("pairs", str(self.n_pairs))
        parts: list[Any] = [summary]
        if self.class_pixels and self.n_pairs:
            total = sum(self.class_pixels.values()) + self.ignored_pixels
            hist = Table(title="pixels per class", title_justify="left")
            hist.add_column("class")
            hist.add_column("pixels", justify="right")
            hist.add_column("share", justify="right")
            rows = [*self.class_pixels.items(), ("(ignored)", self.ignored_pixels)]
            for name, count in rows:
                share = f"{100 * count / total:.2f}%" if total else "—"
                hist.add_row(
                    name,
                    f"{count:,}",
                    share,
                    style="yellow" if count == 0 and name != "(ignored)" else None,
                )
            parts.append(hist)
        for title, lines, style in (
            ("problems", self.problems if problems else [], "red"),
            ("warnings", self.warnings, "yellow"),
        ):
            if lines:
                parts.append(Text(f"{title}:", style=f"bold {style}"))
                parts.extend(Text(f"  {line}", style=style) for line in _clip(lines))
        return Group(*parts)


def _clip(lines: list[str], limit: int = MAX_LINES) -> list[str]:
    if len(lines) <= limit:
        return list(lines)
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


def _scan(folder: Path, report: DataReport, what: str) -> dict[str, Path]:
    try:
        files = list_images(folder)
    except DataError as e:
        report.problems.append(str(e))
        return {}
    if not files:
        report.problems.append(f"{folder}: no {what} found (looked for png, jpg, tif, bmp files)")
        return {}
    try:
        return index_by_key(files, folder)
    except DataError as e:
        report.problems.append(str(e))
        keyed: dict[str, Path] = {}
        for f in files:
            keyed.setdefault(pair_key(f, folder), f)
        return keyed


def check_folders(images: Path, masks: Path, data: DataConfig, name: str = "data") -> DataReport:
    """Read every image and mask of one split and report all problems (never raises DataError)."""
    images, masks = Path(images), Path(masks)
    report = DataReport(name=name, images_dir=images, masks_dir=masks)
    image_files = _scan(images, report, "images")
    mask_files = _scan(masks, report, "masks")
    report.n_images, report.n_masks = len(image_files), len(mask_files)
    if image_files and mask_files:  # an empty folder is reported once, above
        report.problems.extend(unpaired(image_files, mask_files, images, masks))

    counts = np.zeros(data.num_classes, dtype=np.int64)
    alpha: list[Path] = []
    lossy: list[Path] = []
    for key in sorted(image_files.keys() & mask_files.keys()):
        report.n_pairs += 1
        image_path, mask_path = image_files[key], mask_files[key]
        image_size = _check_image(image_path, data, report, alpha)
        if mask_path.suffix.lower() in LOSSY_SUFFIXES:
            lossy.append(mask_path)
        try:
            mask = load_mask(mask_path, data)
        except DataError as e:
            report.problems.append(str(e))
            continue
        if image_size is not None:
            try:
                check_same_size(image_path, image_size, mask_path, mask.shape)
            except DataError as e:
                report.problems.append(str(e))
        counts += mask_histogram(mask, data.num_classes, data.ignore_index)
        report.ignored_pixels += int((mask == data.ignore_index).sum())

    report.class_pixels = {c: int(n) for c, n in zip(data.classes, counts, strict=True)}
    if lossy:
        report.warnings.append(
            _grouped(
                lossy,
                "mask is JPEG, a lossy format: edges get values that are no class (save masks as PNG)",
            )
        )
    if alpha:
        report.warnings.append(_grouped(alpha, "image has an alpha channel, which is dropped"))
    if report.n_pairs and not report.problems:
        unused = [c for c, n in report.class_pixels.items() if n == 0]
        if unused:
            report.warnings.append(f"{masks}: classes {unused} have no pixels in any mask")
    return report


def _grouped(paths: list[Path], message: str) -> str:
    more = f" (and {len(paths) - 1} more files)" if len(paths) > 1 else ""
    return f"{paths[0]}: {message}{more}"


def _check_image(
    path: Path, data: DataConfig, report: DataReport, alpha: list[Path]
) -> tuple[int, int] | None:
    """Fully decode the image (catches truncation); return its ``(H, W)`` or None on a problem."""
    try:
        header = read_header(path, data.max_image_pixels)
        if header.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            alpha.append(path)
        image = read_image(path, data.in_channels, data.max_image_pixels)
    except DataError as e:
        report.problems.append(str(e))
        return None
    return image.shape[0], image.shape[1]


def check_config_data(config: SegkitConfig) -> list[DataReport]:
    """Reports for the train split and, when configured, the val split."""
    data = config.data
    if data.train is None:
        raise ConfigError("data.train is not set: give data.train.images and data.train.masks")
    reports = [check_folders(data.train.images, data.train.masks, data, name="train")]
    if data.val is not None:
        reports.append(check_folders(data.val.images, data.val.masks, data, name="val"))
    return reports


def check_or_raise(config: SegkitConfig) -> list[DataReport]:
    """Run check-data and raise one DataError listing the problems (training calls this first)."""
    reports = check_config_data(config)
    problems = [p for r in reports for p in r.problems]
    if problems:
        lines = "\n".join(f"  {p}" for p in _clip(problems))
        raise DataError(
            f"{len(problems)} problem(s) in the data (see `segkit check-data CONFIG`):\n{lines}"
        )
    return reports
