"""The ``segkit`` command: parse arguments, load the config, call one library function per subcommand.

Library code raises ``SegkitError``; this module turns it into one clear line on stderr and an exit
code (0 success, 1 some inputs failed, 2 usage, config or model error). ``--debug`` shows the
traceback; ``--verbose`` lets Lightning's tips and library warnings through.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin

from segkit import __version__
from segkit.config import MASK_ENCODINGS
from segkit.engine.options import InferenceOptions, Options, PredictOptions, flag_name
from segkit.errors import ConfigError, SegkitError

OptionsT = TypeVar("OptionsT", bound=Options)

if TYPE_CHECKING:
    from segkit.training import TrainResult

EXAMPLES = {
    "train": "example: segkit train configs/shapes.yaml trainer.max_epochs=5 model.encoder=resnet18",
    "plan": "example: segkit plan configs/shapes.yaml trainer.max_time=00:00:05:00",
    "evaluate": "example: segkit evaluate runs/shapes/best.ckpt --images data/val/images --masks data/val/masks --json metrics.json",
    "predict": "example: segkit predict runs/shapes/best.ckpt photos/ --output masks/ --save index color --tile 512 --overlap 0.25",
    "export": "example: segkit export runs/shapes/best.ckpt --output model.onnx --head labels",
    "check-data": "example: segkit check-data configs/shapes.yaml   or   segkit check-data --images imgs/ --masks masks/ --classes bg fg",
    "demo": "example: segkit demo --output segkit-demo   or   segkit demo --data-only --output segkit-demo",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segkit",
        description="Train U-Net-style segmentation models on your masks, predict any-size images, export ONNX.",
        epilog="Run `segkit COMMAND --help` for the options of a command. Start with `segkit demo`.",
    )
    parser.add_argument("--version", action="version", version=f"segkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--verbose", action="store_true", help="show Lightning's tips and library warnings"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show full tracebacks on errors",
        )
        p.add_argument(
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show Lightning's tips and library warnings",
        )
        return p

    p = add(
        "train",
        "Train a model from a YAML config; writes best.ckpt, last.ckpt, config.yaml and metrics to the run folder.",
    )
    _config_arguments(p)
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (the plan's choices marked with their reasons) and exit",
    )

    p = add(
        "plan",
        "Show what segkit reads from the training data and device, and the recipe it chooses for "
        "the keys the config leaves unset (train applies it when run.plan is true).",
    )
    _config_arguments(p)

    p = add(
        "evaluate", "Per-class IoU/Dice/precision/recall of a model on an image+mask folder pair."
    )
    p.add_argument("model", type=Path, help="a segkit .ckpt bundle or .onnx export")
    p.add_argument("--images", type=Path, required=True, help="image folder")
    p.add_argument(
        "--masks", type=Path, required=True, help="mask folder (same stems as the images)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON here")
    _option_flags(p, InferenceOptions)

    p = add(
        "predict",
        "Predict masks for an image, a folder (recursive) or a glob with the tiled engine.",
    )
    p.add_argument("model", type=Path, help="a segkit .ckpt bundle or .onnx export")
    p.add_argument("source", help="image file, folder or glob pattern (quote it)")
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        required=True,
        help="output folder (the source's relative layout is kept)",
    )
    _option_flags(p, PredictOptions)

    p = add("export", "Export a checkpoint to ONNX and verify it against torch with onnxruntime.")
    p.add_argument("model", type=Path, help="a segkit .ckpt bundle")
    p.add_argument("--output", "-o", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--head",
        default="logits",
        choices=["logits", "probs", "labels"],
        help="graph output: logits, softmax probs, or argmax labels",
    )
    p.add_argument(
        "--static",
        action="store_true",
        help="fixed input shape instead of dynamic batch/height/width",
    )
    p.add_argument(
        "--normalize-in-graph",
        action="store_true",
        help="take raw uint8-range images; scaling and mean/std happen inside the graph",
    )
    p.add_argument(
        "--fp16", action="store_true", help="half-precision weights (for GPU deployment)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max abs difference allowed in verification (default 1e-3, 1e-1 for fp16)",
    )

    p = add(
        "check-data",
        "Validate a dataset: pairing, sizes, readability, mask values, class histogram.",
    )
    p.add_argument(
        "config", type=Path, nargs="?", default=None, help="YAML config whose data section to check"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--images", type=Path, default=None, help="image folder (instead of a config)")
    p.add_argument("--masks", type=Path, default=None, help="mask folder (instead of a config)")
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="class names (with --images/--masks; default: background foreground)",
    )
    p.add_argument(
        "--mask-encoding",
        default=None,
        choices=MASK_ENCODINGS,
        help="mask encoding (with --images/--masks)",
    )

    p = add(
        "demo",
        "The whole loop on a generated dataset: train, evaluate, predict a folder, export ONNX.",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("segkit-demo"),
        help="folder for everything the demo writes",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: a few minutes on CPU)"
    )
    p.add_argument(
        "--data-only",
        action="store_true",
        help="only write the generated dataset (OUTPUT/data: train, val, new), for the README tour",
    )
    return parser


def _option_flags(p: argparse.ArgumentParser, options: type[Options]) -> None:
    """One flag per field of ``options``: ``--batch-size`` for ``batch_size``, its type, default
    and help from the field, choices from a Literal, ``nargs="+"`` for a list, a switch for a
    bool. The model validates the values (:func:`_options_from`); argparse only parses them."""
    for name, field in options.model_fields.items():
        kind: Any = field.annotation
        if get_origin(kind) in (Union, types.UnionType):  # X | None: None is the default
            kind = next(a for a in get_args(kind) if a is not type(None))
        flag: dict[str, Any] = {"dest": name, "default": field.default, "help": field.description}
        if kind is bool:
            p.add_argument(flag_name(name), action="store_true", **flag)
            continue
        if get_origin(kind) is list:
            flag["nargs"] = "+"
            kind = get_args(kind)[0]
        if get_origin(kind) is Literal:
            flag["choices"] = get_args(kind)
        else:
            flag["type"] = kind
        p.add_argument(flag_name(name), **flag)


def _options_from(args: argparse.Namespace, options: type[OptionsT]) -> OptionsT:
    """The validated options model of a command from its parsed flags."""
    return options.parse(**{name: getattr(args, name) for name in options.model_fields})


def _config_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG and its KEY=VALUE overrides (train, plan)."""
    p.add_argument("config", type=Path, help="YAML config file (see configs/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override any config key by its dotted path",
    )


def _console():
    from rich.console import Console

    return Console()


def cmd_train(args: argparse.Namespace) -> int:
    from segkit.config import load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        from segkit.training.plan import annotated_yaml, plan_config

        plan = None
        if config.run.plan and config.data.train is not None:  # the plan reads the data
            config, plan = plan_config(config)
        print(annotated_yaml(config, plan), end="")
        return 0
    from lightning.pytorch.utilities import rank_zero_only

    from segkit.training import train

    # DDP: every process returns the same result; rank 0, as Lightning counts, reports it
    rank_zero_only(_report_training)(train(config, config_path=args.config))
    return 0


def _report_training(result: TrainResult) -> None:
    """The best checkpoint's metrics, where the run is and its warnings."""
    console = _console()
    console.print(result.metrics.table(title="Validation metrics of the best checkpoint"))
    console.print(f"run folder: {result.run_dir}\nbest checkpoint: {result.best_checkpoint}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.table import Table

    from segkit.config import load_config
    from segkit.training.plan import plan_config

    config = load_config(args.config, args.overrides)
    config, plan = plan_config(config)
    console = _console()
    facts = Table(title="Dataset and device", show_header=False)
    for what, value in plan.fingerprint.rows(config.data.classes):
        facts.add_row(what, value)
    device = plan.device
    memory = f", {device.gpu_memory_gb:.0f} GB" if device.accelerator == "gpu" else ""
    facts.add_row("device", f"{device.accelerator}, {device.cpu_cores} CPU cores{memory}")
    console.print(facts)
    choices = Table(title="Recipe: keys the config leaves unset")
    for column in ("key", "value", "why"):
        choices.add_column(column)
    for d in plan.decisions:
        choices.add_row(d.key, str(d.value), d.reason)
    console.print(choices)
    if plan.kept:
        console.print(f"kept from your config: {', '.join(plan.kept)}", highlight=False)
    if not config.run.plan:
        console.print("run.plan is false: segkit train will not apply this plan")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segkit.evaluation import evaluate

    options = _options_from(args, InferenceOptions)
    metrics = evaluate(args.model, args.images, args.masks, json_path=args.json, **dict(options))
    console = _console()
    console.print(metrics.table(title=f"{args.model.name} on {args.images}"))
    if args.json:
        console.print(f"metrics written to {args.json}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from segkit.pipeline.run import predict_source

    options = _options_from(args, PredictOptions)
    summary = predict_source(args.model, args.source, args.output, options)
    for failure in summary.failures:
        print(f"error: {failure}", file=sys.stderr)
    print(summary.describe())
    return 1 if summary.failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from segkit.export.onnx import export_onnx

    diff = export_onnx(
        args.model,
        args.output,
        opset=args.opset,
        head=args.head,
        dynamic=not args.static,
        normalize_in_graph=args.normalize_in_graph,
        fp16=args.fp16,
        tolerance=args.tolerance,
    )
    print(f"exported {args.output} (verified with onnxruntime: max abs difference {diff:.2e})")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from segkit.config import load_config
    from segkit.data.checks import check_config_data, check_folders

    if args.images or args.masks:
        if not (args.images and args.masks):
            raise ConfigError("check-data: give both --images and --masks (or a config file)")
        overrides = list(args.overrides)
        if args.config is not None:  # argparse puts a stray KEY=VALUE into `config`
            overrides.insert(0, str(args.config))
        if args.classes:
            overrides.append(f"data.classes={args.classes}")
        if args.mask_encoding:
            overrides.append(f"data.mask_encoding={args.mask_encoding}")
        config = load_config(None, overrides)
        reports = [check_folders(args.images, args.masks, config.data)]
    elif args.config is not None:
        config = load_config(args.config, args.overrides)
        reports = check_config_data(config)
    else:
        raise ConfigError("check-data: give a config file or --images DIR --masks DIR")
    console = _console()
    for report in reports:
        console.print(report.render(problems=False))  # each problem is printed once, below
    problems = [p for r in reports for p in r.problems]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from segkit.demo import run_demo, write_demo_data

    if args.data_only:
        data, new_images = write_demo_data(args.output.resolve())
        print(
            f"wrote {data['train_images'].parent.parent} (train, val: images + masks, "
            f"classes {', '.join(data['classes'])}) and larger images to predict in {new_images}"
        )
        return 0
    run_demo(args.output, epochs=args.epochs)
    return 0


# Where Lightning's info lines go: the device banner, tips, "fit stopped"; set on these children
# because importing lightning resets the level of its top-level loggers.
_LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Leave Lightning's info lines and third-party warnings out unless ``--verbose``.

    segkit's own warnings still show; levels and filters are restored afterwards.
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in _LIGHTNING_INFO_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for module in ("lightning", "lightning_fabric", "pytorch_lightning", "torch", "timm"):
            warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


COMMANDS = {
    "train": cmd_train,
    "plan": cmd_plan,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "check-data": cmd_check_data,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (callable in-process from tests)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after options (`train c.yaml --print-config a.b=1`).
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _quiet(getattr(args, "verbose", False)):
            return COMMANDS[args.command](args)
    except SegkitError as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a write the command could not make: disk full, read-only, not a folder
        if getattr(args, "debug", False):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
