"""ONNX export: parity with torch, metadata round trip, atomic failure, foreign and broken files."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segkit.bundle import load_bundle
from segkit.config import load_config
from segkit.engine.onnx_backend import OnnxBackend
from segkit.errors import ConfigError, ModelError
from segkit.export import export_onnx, onnx_card, read_onnx_metadata
from tests.export.conftest import CLASSES, synthetic_batch


def _predictor() -> type:
    """The Predictor (skips until segkit.engine.predictor has landed)."""
    return pytest.importorskip("segkit.engine.predictor").Predictor


def _normalised(images: torch.Tensor, bundle) -> torch.Tensor:
    mean = torch.tensor(bundle.card.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.card.std).view(1, -1, 1, 1)
    return (images - mean) / std


def test_export_matches_torch_at_two_shapes(trained_bundle, exported):
    path, diff = exported
    assert 0 <= diff <= 1e-3
    bundle = load_bundle(trained_bundle)
    model = bundle.build_model()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The graph is dynamic in batch, height and width.
    dims = [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]
    generator = torch.Generator().manual_seed(3)
    for n, h, w in ((1, 64, 96), (2, 96, 64), (3, 40, 24)):
        x = _normalised(torch.rand(n, 3, h, w, generator=generator), bundle)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == (n, len(CLASSES), h, w)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_trained_fixture_is_meaningful(trained_bundle):
    """Guards the parity tests: an untrained model's near-ties would make label agreement vacuous."""
    model = load_bundle(trained_bundle).build_model()
    images, labels = synthetic_batch(torch.Generator().manual_seed(5), n=2)
    with torch.no_grad():
        pred = model(_normalised(images, load_bundle(trained_bundle))).argmax(1)
    assert (pred == labels).float().mean() > 0.65  # a constant guess gets < 0.4


def test_metadata_holds_the_checkpoints_card(trained_bundle, exported):
    """One JSON entry, equal to the checkpoint's hyper_parameters["model_card"]; the graph's own
    facts in a second; nothing else."""
    path, _ = exported
    meta = read_onnx_metadata(path)
    assert sorted(meta) == ["segkit.export", "segkit.model_card"]
    stored = torch.load(trained_bundle, map_location="cpu", weights_only=True)
    assert stored["hyper_parameters"] == {"model_card": json.loads(meta["segkit.model_card"])}
    graph = json.loads(meta["segkit.export"])
    assert graph["head"] == "logits" and graph["normalize_in_graph"] is False
    assert graph["source_sha256"] == hashlib.sha256(trained_bundle.read_bytes()).hexdigest()

    bundle = load_bundle(trained_bundle)
    card = onnx_card(path)
    assert card == bundle.card and card.data == bundle.config.data  # evaluate's masks, pixel limit
    assert card.classes == CLASSES and card.colors[1] == (200, 0, 0)  # the palette survives
    assert load_config(card.config) == bundle.config
    # Recommended predict defaults: tile falls back to data.patch_size when predict.tile is null.
    p = card.predict
    assert (p.tile, p.overlap, p.blend, p.tta, p.batch_size) == (64, 0.25, "cosine", "none", 4)
    assert (card.stride, card.in_channels, card.ignore_index) == (8, 3, 255)
    assert onnx_card(meta) == card  # the metadata dict alone is enough


def test_onnx_default_batch_size_follows_where_the_network_runs(exported):
    """onnxruntime hands tiles back on the CPU even when its CUDA provider runs the network."""
    from segkit.engine.backend import CPU_BATCH_SIZE, GPU_BATCH_SIZE

    p = _predictor().from_path(exported[0], device="cpu")
    p.card = p.card.updated(predict={"batch_size": None})  # the model recommends none
    assert p.backend.network_device.type == "cpu"
    assert p.settings().batch_size == CPU_BATCH_SIZE
    p.backend.network_device = torch.device("cuda")  # what a CUDAExecutionProvider session sets
    assert p.settings().batch_size == GPU_BATCH_SIZE


def test_cpu_session_uses_torchs_thread_count(exported):
    """`segkit predict --devices N` sets torch's threads per process; onnxruntime must follow,
    else N sessions each start a thread per core."""
    from segkit.engine.onnx_backend import OnnxBackend

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        backend = OnnxBackend.from_path(exported[0], device="cpu")
        assert backend.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(before)


def test_predict_from_onnx_agrees_with_checkpoint(trained_bundle, exported, test_image):
    Predictor = _predictor()
    path, _ = exported
    options = {"tile": 48, "overlap": 0.25}  # several tiles over a 100x150 image
    torch_pred = Predictor.from_path(trained_bundle, device="cpu", **options)
    onnx_pred = Predictor.from_path(path, device="cpu", **options)
    assert len(onnx_pred.grid(*test_image.shape[:2])) > 4
    mask_t, mask_o = torch_pred.predict(test_image), onnx_pred.predict(test_image)
    assert mask_o.shape == test_image.shape[:2]
    assert (mask_t == mask_o).mean() >= 0.999
    assert len(np.unique(mask_t)) == 3  # the comparison covers every class
    np.testing.assert_allclose(
        onnx_pred.predict_proba(test_image), torch_pred.predict_proba(test_image), atol=1e-4
    )


@pytest.mark.parametrize(
    ("options", "tiling"),
    [
        ({"head": "labels"}, {"tile": 160}),
        ({"head": "labels", "normalize_in_graph": True}, {"tile": 160}),
        ({"head": "probs", "normalize_in_graph": True}, {"tile": 48, "overlap": 0.25}),
        (
            {"head": "logits", "normalize_in_graph": True, "dynamic": False},
            {"tile": 64, "overlap": 0.25},
        ),
    ],
    ids=["labels", "labels-normalize", "probs-normalize", "static-normalize"],
)
def test_heads_give_the_default_masks(
    trained_bundle, exported, test_image, tmp_path, options, tiling
):
    """Same masks as the logits export. Labels are hard votes, and blending votes where tiles
    overlap is not blending probabilities, so labels heads are compared on one whole-image tile."""
    Predictor = _predictor()
    out = tmp_path / "variant.onnx"
    diff = export_onnx(trained_bundle, out, **options)
    assert diff <= 1e-3
    graph = json.loads(read_onnx_metadata(out)["segkit.export"])
    assert graph["head"] == options["head"]
    assert graph["normalize_in_graph"] == options.get("normalize_in_graph", False)
    reference = Predictor.from_path(exported[0], device="cpu", **tiling).predict(test_image)
    variant = Predictor.from_path(out, device="cpu", **tiling).predict(test_image)
    assert (variant == reference).mean() >= 0.999


def test_labels_graph_outputs_uint8_labels(trained_bundle, tmp_path):
    out = tmp_path / "labels.onnx"
    export_onnx(trained_bundle, out, head="labels")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"image": np.zeros((2, 3, 32, 40), np.float32)})
    assert y.dtype == np.uint8 and y.shape == (2, 32, 40)
    backend = OnnxBackend.from_path(out, device="cpu")
    probs = backend(torch.zeros(2, 3, 32, 40))
    assert probs.shape == (2, 3, 32, 40) and probs.dtype == torch.float32
    np.testing.assert_array_equal(probs.argmax(1).numpy(), y)
    assert torch.all(probs.sum(1) == 1)  # one-hot


def test_fp16_export_verifies_and_agrees(trained_bundle, exported, tmp_path, test_image):
    Predictor = _predictor()
    out = tmp_path / "half.onnx"
    diff = export_onnx(trained_bundle, out, fp16=True)
    assert 0 <= diff <= 1e-1
    assert out.stat().st_size < 0.7 * exported[0].stat().st_size  # half-precision weights
    half = Predictor.from_path(out, device="cpu", tile=48).predict(test_image)
    full = Predictor.from_path(exported[0], device="cpu", tile=48).predict(test_image)
    assert (half == full).mean() >= 0.99


def test_static_backend_pads_small_tiles_and_chunks_batches(trained_bundle, exported, tmp_path):
    out = tmp_path / "static.onnx"
    export_onnx(trained_bundle, out, dynamic=False)
    static = OnnxBackend.from_path(out, device="cpu")
    dynamic = OnnxBackend.from_path(exported[0], device="cpu")
    assert static.card.tile == 64 and static.card.predict.batch_size == 1
    tiles = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(static(tiles), dynamic(tiles), atol=1e-5, rtol=1e-4)
    small = static(tiles[:, :, :32, :48])
    assert small.shape == (3, 3, 32, 48)
    torch.testing.assert_close(small.sum(1), torch.ones(3, 32, 48))
    with pytest.raises(ModelError, match="fixed 64x64"):
        static(torch.zeros(1, 3, 64, 96))


def test_failed_verification_leaves_no_file(trained_bundle, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(ModelError, match=r"verification failed.*tolerance -1"):
        export_onnx(trained_bundle, out, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"previous export")  # an existing file is left as it was
    with pytest.raises(ModelError):
        export_onnx(trained_bundle, out, tolerance=-1.0)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_bad_arguments(trained_bundle, tmp_path):
    with pytest.raises(ConfigError, match="unknown head 'mask'.*logits, probs, labels"):
        export_onnx(trained_bundle, tmp_path / "x.onnx", head="mask")
    with pytest.raises(ConfigError, match="would overwrite the checkpoint"):
        export_onnx(trained_bundle, trained_bundle)
    with pytest.raises(ModelError, match="checkpoint not found"):
        export_onnx(tmp_path / "missing.ckpt", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture()
def foreign_onnx(tmp_path) -> tuple[Path, torch.nn.Module]:
    """An ONNX file segkit did not write: a bare 3->2 channel convolution."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    path = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            conv,
            (torch.zeros(1, 3, 32, 32),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}},
            dynamo=False,
        )
    return path, conv


def test_foreign_onnx_names_what_is_missing(foreign_onnx):
    path, _ = foreign_onnx
    assert read_onnx_metadata(path) == {}
    with pytest.raises(
        ModelError,
        match=r"foreign\.onnx: no segkit metadata for classes, mean, std \(not a segkit export",
    ) as e:
        onnx_card(path)
    assert "in_channels" not in str(e.value).split("supply")[0]  # read from the input shape
    with pytest.raises(ModelError, match=r"foreign\.onnx: no segkit metadata for mean, std"):
        OnnxBackend.from_path(path, classes=["a", "b"])
    with pytest.raises(ModelError, match="outputs 2 channels but 3 classes"):
        OnnxBackend.from_path(path, classes=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ModelError, match="mean has 1 values but the model takes 3 channels"):
        onnx_card(path, classes=["a", "b"], mean=[0.5], std=[0.25] * 3)


def test_foreign_onnx_works_with_supplied_facts(foreign_onnx):
    Predictor = _predictor()
    path, conv = foreign_onnx
    facts = {"classes": ["bg", "fg"], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    card = onnx_card(path, **facts)
    assert (card.in_channels, card.stride, card.num_classes, card.tile) == (3, 32, 2, 512)
    assert card.config is None and card.data is None and card.architecture is None
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = Predictor.from_path(path, device="cpu", tile=64, **facts).predict(image)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = conv(x).argmax(1)[0].numpy()
    assert (mask == expected).mean() >= 0.999


def test_truncated_onnx_is_a_model_error(exported, tmp_path):
    Predictor = _predictor()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(exported[0].read_bytes()[:4000])
    for call in (read_onnx_metadata, onnx_card, OnnxBackend.from_path, Predictor.from_path):
        with pytest.raises(
            ModelError, match=r"broken\.onnx: not a readable ONNX model \(truncated or corrupt\?\)"
        ):
            call(broken)
    with pytest.raises(ModelError, match="ONNX file not found"):
        OnnxBackend.from_path(tmp_path / "nope.onnx")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present"
)
def test_cuda_request_without_cuda_provider(exported):
    with pytest.raises(ModelError, match="no CUDAExecutionProvider"):
        OnnxBackend.from_path(exported[0], device="cuda")
    assert OnnxBackend.from_path(exported[0]).session.get_providers() == ["CPUExecutionProvider"]


def test_cuda_provider_is_chosen_when_onnxruntime_has_it(monkeypatch):
    """onnxruntime-gpu: CUDA first (CPU as fallback for unsupported nodes), on the GPU asked for;
    ``--device cpu`` keeps to the CPU. (The GPU run itself needs onnxruntime-gpu and a GPU.)"""
    from segkit.engine.onnx_backend import _providers

    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    model = Path("m.onnx")
    assert _providers(None, model) == [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    assert _providers("cuda:1", model) == [
        ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider",
    ]
    assert _providers("cuda", model)[0] == ("CUDAExecutionProvider", {"device_id": "0"})
    assert _providers("cpu", model) == ["CPUExecutionProvider"]


def test_cli_export(trained_bundle, tmp_path, capsys):
    from segkit.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", str(trained_bundle), "--output", str(out), "--head", "probs"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    assert json.loads(read_onnx_metadata(out)["segkit.export"])["head"] == "probs"
    failed = tmp_path / "failed.onnx"
    assert (
        main(["export", str(trained_bundle), "--output", str(failed), "--tolerance", "-1"]) == 2
    )  # a model error
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "verification failed" in err and len(err.splitlines()) == 1
    assert not failed.exists()


def test_dynamo_exporter_is_the_fallback(trained_bundle, tmp_path, monkeypatch):
    real_export = torch.onnx.export
    calls = []

    def tracing_fails(*args, dynamo=True, **kwargs):
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("tracer cannot handle this model\nsecond line")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", tracing_fails)
    out = tmp_path / "dynamo.onnx"
    assert export_onnx(trained_bundle, out) <= 1e-3  # verified at both shapes: still dynamic
    assert calls == [False, True]
    assert onnx_card(out).classes == CLASSES


def test_export_failure_names_both_exporters(trained_bundle, tmp_path, monkeypatch):
    def always_fails(*args, dynamo=True, **kwargs):
        raise RuntimeError(f"unsupported operator ({'dynamo' if dynamo else 'trace'})")

    monkeypatch.setattr(torch.onnx, "export", always_fails)
    with pytest.raises(
        ModelError,
        match=r"best\.ckpt: ONNX export failed \(opset 17\): TorchScript exporter: .*\(trace\); dynamo exporter: .*\(dynamo\)",
    ):
        export_onnx(trained_bundle, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def _with_metadata(source: Path, out: Path, meta: dict[str, str]) -> Path:
    proto = onnx.load(str(source))
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


def test_a_broken_card_is_one_error_naming_the_file(exported, tmp_path):
    """The card is validated once, as a whole: a stored config whose data section this segkit
    cannot read makes the file unusable for predict and evaluate alike, with one line."""
    from segkit.evaluation import scoring_predictor

    card = json.loads(read_onnx_metadata(exported[0])["segkit.model_card"])
    card["config"]["data"]["new_key_of_a_later_release"] = 1
    meta = {**read_onnx_metadata(exported[0]), "segkit.model_card": json.dumps(card)}
    broken = _with_metadata(exported[0], tmp_path / "broken.onnx", meta)
    message = (
        r"broken\.onnx: the model card is not valid: "
        r"config\.data\.new_key_of_a_later_release: Extra inputs are not permitted"
    )
    with pytest.raises(ModelError, match=message):
        OnnxBackend.from_path(broken, device="cpu")
    with pytest.raises(ModelError, match=message):
        scoring_predictor(broken, device="cpu")  # evaluate's
    with pytest.raises(ModelError, match=r"broken\.onnx: metadata 'segkit.model_card' is not JSON"):
        onnx_card({"segkit.model_card": "{oops"}, name=broken)


def test_supplied_facts_do_not_override_a_card(exported):
    with pytest.raises(ModelError, match="classes only apply to an ONNX file without segkit"):
        OnnxBackend.from_path(exported[0], classes=["a", "b", "c"])


def _legacy_metadata(card: dict, **graph: str) -> dict[str, str]:
    """The metadata_props an older segkit (bundle format 1) wrote: one text value per fact."""
    p = card["predict"]
    return {
        "segkit_version": "0.9.0",
        "bundle_format": "1",
        "classes": json.dumps(card["classes"]),
        "colors": json.dumps(card["colors"]),
        "in_channels": str(card["in_channels"]),
        "mean": json.dumps(card["mean"]),
        "std": json.dumps(card["std"]),
        "stride": str(card["stride"]),
        "tile": str(p["tile"]),
        "overlap": str(p["overlap"]),
        "blend": p["blend"],
        "tta": p["tta"],
        "batch_size": str(p["batch_size"] or ""),
        "ignore_index": str(card["ignore_index"]),
        "temperature": "1.5",
        "fp16": "false",
        "dynamic": "true",
        "config": json.dumps(card["config"]),
        **graph,
    }


def test_an_older_segkits_export_is_read_through_the_converter(trained_bundle, tmp_path):
    """Exports of segkit before the card: each fact its own key, converted to the same card."""
    Predictor = _predictor()
    labels = tmp_path / "labels.onnx"
    export_onnx(trained_bundle, labels, head="labels", normalize_in_graph=True)
    card = load_bundle(trained_bundle).card
    meta = _legacy_metadata(card.to_dict(), head="labels", normalize_in_graph="true")
    old = _with_metadata(labels, tmp_path / "old.onnx", meta)
    backend = OnnxBackend.from_path(old, device="cpu")
    assert backend.card == card.updated(temperature=1.5)
    assert (backend.head, backend.normalize_in_graph) == ("labels", True)
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        Predictor(backend).predict(image), Predictor.from_path(labels, device="cpu").predict(image)
    )
    no_config = {k: v for k, v in meta.items() if k != "config"}
    with pytest.raises(ModelError, match=r"old\.onnx: .*without its training config; re-export"):
        onnx_card(no_config, name=old)


def test_per_image_normalisation_survives_export_but_not_in_the_graph(tmp_path):
    """The card carries ``normalization: image`` into the ONNX file, whose predictor then agrees
    with the checkpoint's; normalising in the graph is refused (one tile has no image statistics)."""
    from segkit.engine.predictor import Predictor
    from tests.fixtures import make_bundle, shapes_image

    ckpt = make_bundle(tmp_path / "own.ckpt", data={"normalization": "image"}, predict={"tile": 32})
    with pytest.raises(ConfigError, match="own statistics.*without --normalize-in-graph"):
        export_onnx(ckpt, tmp_path / "in_graph.onnx", normalize_in_graph=True)
    assert not (tmp_path / "in_graph.onnx").exists()
    onnx_path = tmp_path / "own.onnx"
    export_onnx(ckpt, onnx_path)
    from_onnx = Predictor.from_path(onnx_path, device="cpu")
    assert from_onnx.card.normalization == "image"
    image = shapes_image(48, 40, seed=5)
    expected = Predictor.from_path(ckpt, device="cpu").predict_proba(image)
    assert np.allclose(from_onnx.predict_proba(image), expected, atol=1e-4)
