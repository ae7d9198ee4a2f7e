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
from segkit.errors import ConfigError, ModelError
from segkit.export import export_onnx, onnx_model_info, read_onnx_metadata
from segkit.inference.onnx_backend import OnnxBackend
from tests.export.conftest import CLASSES, synthetic_batch


def _predictor() -> type:
    """The Predictor (skips until segkit.inference.predictor has landed)."""
    return pytest.importorskip("segkit.inference.predictor").Predictor


def _normalised(images: torch.Tensor, bundle) -> torch.Tensor:
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
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


def test_metadata_round_trip(trained_bundle, exported):
    path, _ = exported
    bundle = load_bundle(trained_bundle)
    meta = read_onnx_metadata(path)
    assert json.loads(meta["classes"]) == CLASSES
    assert json.loads(meta["colors"]) == bundle.colors.tolist()
    assert json.loads(meta["colors"])[1] == [200, 0, 0]  # the palette survives
    assert json.loads(meta["mean"]) == bundle.mean and json.loads(meta["std"]) == bundle.std
    assert meta["head"] == "logits" and meta["normalize_in_graph"] == "false"
    assert meta["source_sha256"] == hashlib.sha256(trained_bundle.read_bytes()).hexdigest()
    assert load_config(json.loads(meta["config"])) == bundle.config
    assert meta["segkit_version"] and meta["bundle_format"] == str(bundle.hparams["bundle_format"])

    info = onnx_model_info(path)
    assert info.classes == bundle.classes
    np.testing.assert_array_equal(info.colors, bundle.colors)
    assert (info.in_channels, info.mean, info.std, info.stride) == (3, bundle.mean, bundle.std, 8)
    # Recommended predict defaults: tile falls back to data.patch_size when predict.tile is null.
    assert (info.tile, info.overlap, info.blend, info.tta, info.batch_size) == (
        64,
        0.25,
        "cosine",
        "none",
        4,
    )
    assert info.ignore_index == 255
    assert info.data == bundle.config.data  # how `segkit evaluate` reads masks, the pixel limit
    assert onnx_model_info(meta).classes == CLASSES  # the metadata dict alone is enough
    # predict.batch_size: null is exported empty and leaves the choice to the device
    assert onnx_model_info({**meta, "batch_size": ""}).batch_size is None


def test_onnx_default_batch_size_follows_where_the_network_runs(exported):
    """onnxruntime hands tiles back on the CPU even when its CUDA provider runs the network."""
    from segkit.inference.backend import CPU_BATCH_SIZE, GPU_BATCH_SIZE

    p = _predictor().from_path(exported[0], device="cpu")
    p.info.batch_size = None  # the model recommends none
    assert p.backend.network_device.type == "cpu"
    assert p.settings().batch_size == CPU_BATCH_SIZE
    p.backend.network_device = torch.device("cuda")  # what a CUDAExecutionProvider session sets
    assert p.settings().batch_size == GPU_BATCH_SIZE


def test_cpu_session_uses_torchs_thread_count(exported):
    """`segkit predict --devices N` sets torch's threads per process; onnxruntime must follow,
    else N sessions each start a thread per core."""
    from segkit.inference.onnx_backend import OnnxBackend

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
    meta = read_onnx_metadata(out)
    assert meta["head"] == options["head"]
    assert meta["normalize_in_graph"] == json.dumps(options.get("normalize_in_graph", False))
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
    assert static.info.tile == 64 and static.info.batch_size == 1
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
        onnx_model_info(path)
    assert "in_channels" not in str(e.value).split("supply")[0]  # read from the input shape
    with pytest.raises(ModelError, match=r"foreign\.onnx: no segkit metadata for mean, std"):
        OnnxBackend.from_path(path, classes=["a", "b"])
    with pytest.raises(ModelError, match="outputs 2 channels but 3 classes"):
        OnnxBackend.from_path(path, classes=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ModelError, match="mean has 1 values but the model takes 3 channels"):
        onnx_model_info(path, classes=["a", "b"], mean=[0.5], std=[0.25] * 3)


def test_foreign_onnx_works_with_supplied_facts(foreign_onnx):
    Predictor = _predictor()
    path, conv = foreign_onnx
    facts = {"classes": ["bg", "fg"], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    info = onnx_model_info(path, **facts)
    assert (info.in_channels, info.stride, info.num_classes) == (3, 32, 2)
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
    for call in (read_onnx_metadata, onnx_model_info, OnnxBackend.from_path, Predictor.from_path):
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
    from segkit.inference.onnx_backend import _providers

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
    assert read_onnx_metadata(out)["head"] == "probs"
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
    assert json.loads(read_onnx_metadata(out)["classes"]) == CLASSES


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


def test_a_broken_stored_config_warns_in_predict_and_stops_evaluate(exported, tmp_path):
    """The network runs without the training config (default data settings, a warning); evaluate
    needs it to read the masks, so there it is an error naming the file."""
    import onnx

    from segkit.errors import ModelError
    from segkit.evaluation import model_data_config
    from segkit.inference.onnx_backend import OnnxBackend

    proto = onnx.load(str(exported[0]))
    for prop in proto.metadata_props:
        if prop.key == "config":
            prop.value = json.dumps({"data": {"classes": ["a"], "new_key_of_a_later_release": 1}})
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.warns(UserWarning, match="the stored training config is not valid"):
        backend = OnnxBackend.from_path(broken, device="cpu")
    assert backend.info.data is None and backend.info.max_image_pixels == 1_000_000_000
    with pytest.raises(ModelError, match=r"broken\.onnx: the stored training config is not valid"):
        model_data_config(broken, _predictor()(backend))
