"""After training, on the validation set: the TTA mode stored where it measurably pays, the
temperature fitted, and the best checkpoint's metrics (``metrics.json``)."""

from __future__ import annotations

from pathlib import Path

from segkit.config import AugmentConfig
from segkit.models.metrics import SegmentationMetrics
from segkit.training.plan import Decision, Plan

TTA_GAIN = 0.001  # val mIoU a TTA mode must add (over the next cheaper one) to be worth its passes
TTA_PASSES = {"hflip": 2, "flip": 4, "d4": 8}
# The training augmentations each TTA mode's views need (any one set of them suffices): a view the
# model never trained on only hurts it, and undoes what it learned of the masks' conventions.
TTA_NEEDS = {
    "hflip": (("hflip",),),
    "flip": (("hflip", "vflip"), ("hflip", "rotate90"), ("vflip", "rotate90")),
    "d4": (("hflip", "rotate90"), ("vflip", "rotate90")),
}


def tta_candidates(augment: AugmentConfig) -> list[str]:
    """The TTA modes, cheapest first, whose views the training augmentation showed the model."""
    trained = {name for name in ("hflip", "vflip", "rotate90") if getattr(augment, name) > 0}
    return [
        mode for mode in TTA_PASSES if any(trained.issuperset(needs) for needs in TTA_NEEDS[mode])
    ]


def measured_tta(
    checkpoint: Path,
    pairs: list[tuple[Path, Path]],
    without: float,
    device: str | None,
    augment: AugmentConfig,
) -> Decision | None:
    """After training: the TTA mode for ``predict.tta`` that raises the validation mIoU of
    ``checkpoint`` (``without``: its mIoU without TTA) by at least ``TTA_GAIN`` over the next
    cheaper mode (none < hflip < flip < d4), or None when none pays. Only the modes whose views
    ``augment`` trained on are tried."""
    from segkit.evaluation import evaluate_pairs

    best_mode, best = "none", without
    scores = {}
    for mode in tta_candidates(augment):
        scores[mode] = evaluate_pairs(checkpoint, pairs, device=device, tta=mode).miou
        if scores[mode] >= best + TTA_GAIN:
            best_mode, best = mode, scores[mode]
    if best_mode == "none":
        return None
    measured = ", ".join(f"{mode} {score:.4f}" for mode, score in scores.items())
    return Decision(
        "predict.tta",
        best_mode,
        f"measured on validation: mIoU {without:.4f} without TTA, {measured} "
        f"({TTA_PASSES[best_mode]} network passes per tile; --tta none to skip)",
    )


def finish_best(
    best: Path,
    pairs: list[tuple[Path, Path]],
    device: str,
    plan: Plan | None,
    run_dir: Path,
    augment: AugmentConfig,
) -> SegmentationMetrics:
    """The decisions made on the validation set after training, stored in ``best`` (each an
    atomic rewrite), then its metrics (``metrics.json``): the TTA mode where the plan measures
    that it pays, then the temperature, fitted on the predictions users will get."""
    from segkit.bundle import update_card
    from segkit.evaluation import evaluate_pairs, fit_checkpoint_temperature

    if plan is not None and "predict.tta" in plan.reasons():
        without = evaluate_pairs(best, pairs, device=device, tta="none").miou
        decision = measured_tta(best, pairs, without, device, augment)
        if decision is not None:
            update_card(best, lambda card: card.updated(predict={"tta": decision.value}))
            plan.decisions = [d for d in plan.decisions if d.key != decision.key] + [decision]
    fit_checkpoint_temperature(best, pairs, device)
    return evaluate_pairs(best, pairs, device=device, json_path=run_dir / "metrics.json")
