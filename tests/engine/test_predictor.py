"""The Predictor: tiled == whole image, any size, any input type, TTA, defaults from the bundle."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from segkit.engine import backend
from segkit.engine.backend import (
    CPU_BATCH_SIZE,
    CPU_BLOCK_WIDTH,
    GPU_BATCH_SIZE,
    block_width,
    default_batch_size,
)
from segkit.engine.labels import HostLabels, argmax_labels
from segkit.engine.predictor import Predictor, consecutive_batches
from segkit.engine.tiling import blend_window, make_grid
from segkit.errors import ConfigError, DataError, ModelError
from tests.fixtures import CLASSES, CountingBackend, colour_scene, shapes_image


@pytest.fixture(scope="module")
def predictor(bundle_path) -> Predictor:
    return Predictor.from_path(bundle_path, device="cpu")


def whole_image_probs(p: Predictor, image: np.ndarray) -> np.ndarray:
    """The model run once on the whole image, reflect-padded to the stride: the reference."""
    h, w = image.shape[:2]
    s = p.card.stride
    padded = np.pad(image, ((0, -h % s), (0, -w % s), (0, 0)), mode="reflect")
    x = p._prepare(padded).transpose(2, 0, 1)[None]
    probs = p._runner("none", [image])(x)[0].cpu().numpy()
    return probs[:, :h, :w]


def test_card_comes_from_the_bundle(predictor):
    card = predictor.card
    assert card.classes == CLASSES and card.in_channels == 3 and card.stride == 8
    assert card.tile == 64 and card.predict.batch_size == 4 and card.predict.blend == "gaussian"
    assert predictor.settings().tile == 64
    assert predictor.settings(tile=128).tile == 128


def test_predictor_is_built_from_the_card_alone(bundle_path):
    """What the predictor knows of the model is its backend's card: the same network under
    another card tiles, blends, augments, normalises and scales as that card says."""
    from segkit.bundle import load_bundle
    from segkit.engine.torch_backend import TorchBackend

    bundle = load_bundle(bundle_path)
    predict = {"tile": 32, "overlap": 0.5, "blend": "cosine", "tta": "flip", "batch_size": 3}
    card = bundle.card.updated(predict=predict, temperature=2.0, mean=[0.4] * 3)
    p = Predictor(TorchBackend(model=bundle.build_model(), card=card, device="cpu"))
    s = p.settings()
    assert (s.tile, s.overlap, s.blend, s.tta, s.batch_size) == tuple(predict.values())
    assert p.temperature == 2.0 and p.passes_per_tile() == 4
    assert len(p.grid(64, 64)) == len(make_grid(64, 64, 32, 0.5, card.stride)) == 9
    assert torch.equal(p._mean.flatten(), torch.full((3,), 0.4))
    assert card.config["predict"]["tta"] == "flip"  # the stored config follows the card


def test_batch_size_comes_from_the_call_then_the_model_then_the_device(predictor, gray_bundle_path):
    assert predictor.settings().batch_size == 4  # the bundle's predict.batch_size
    assert predictor.settings(batch_size=16).batch_size == 16
    unset = Predictor.from_path(gray_bundle_path, device="cpu")  # predict.batch_size: null
    assert unset.card.predict.batch_size is None
    assert unset.settings().batch_size == CPU_BATCH_SIZE
    assert default_batch_size(torch.device("cuda")) == GPU_BATCH_SIZE > CPU_BATCH_SIZE


def test_blocks_are_narrow_on_a_cpu_and_whole_rows_on_a_gpu():
    assert block_width(torch.device("cpu")) == CPU_BLOCK_WIDTH
    assert block_width(torch.device("cuda")) is None  # one block, one wait for the GPU, per row


def test_torch_backend_runs_channels_last_and_returns_plain_nchw(predictor):
    """channels_last is a speed choice (oneDNN's NHWC kernels): same probabilities as the model
    run in the default layout, handed back contiguous for the stitcher."""
    backend = predictor.backend
    conv = next(m for m in backend.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    tiles = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    probs = backend(tiles)
    assert probs.is_contiguous() and probs.shape == (2, len(CLASSES), 64, 64)
    plain = copy.deepcopy(backend.model).to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        reference = torch.softmax(plain(tiles.contiguous()), dim=1)
    torch.testing.assert_close(probs, reference, atol=1e-5, rtol=0)


def test_one_tile_covering_the_image_equals_the_whole_image(predictor):
    image = shapes_image(90, 77, seed=1)
    probs = predictor.predict_proba(image, tile=512)
    np.testing.assert_allclose(probs, whole_image_probs(predictor, image), atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("as_tensor", [False, True])
def test_iter_blocks_yields_blocks_the_caller_may_keep(predictor, monkeypatch, as_tensor):
    """Kept blocks stay intact (the tiler reuses its buffer; the public iterator copies out of it),
    and narrow blocks (several per tile row) put together equal ``predict_proba``."""
    monkeypatch.setattr(backend, "CPU_BLOCK_WIDTH", 40)
    image = shapes_image(150, 130, seed=2)
    blocks = list(predictor.iter_blocks(image, tile=64, overlap=0.25, as_tensor=as_tensor))
    assert len({r for r, _, _ in blocks}) > 2 and len({c for _, c, _ in blocks}) > 1
    out = np.full((predictor.card.num_classes, 150, 130), np.nan, np.float32)
    for row, col, block in blocks:
        out[:, row : row + block.shape[1], col : col + block.shape[2]] = np.asarray(block)
    np.testing.assert_allclose(out, predictor.predict_proba(image, tile=64, overlap=0.25))
    monkeypatch.setattr(backend, "CPU_BLOCK_WIDTH", 10_000)
    np.testing.assert_allclose(
        out, predictor.predict_proba(image, tile=64, overlap=0.25), atol=1e-6
    )
    assert (predictor.predict(image, tile=64) == out.argmax(0)).all()


def test_iter_bands_puts_a_tile_row_of_blocks_together(predictor, monkeypatch):
    monkeypatch.setattr(backend, "CPU_BLOCK_WIDTH", 40)
    image = shapes_image(150, 130, seed=2)
    bands = list(predictor.iter_bands(image, tile=64, overlap=0.25))
    assert len(bands) > 2 and all(b.shape[2] == 130 for _, b in bands)
    stacked = np.concatenate([b for _, b in bands], axis=1)
    np.testing.assert_allclose(stacked, predictor.predict_proba(image, tile=64, overlap=0.25))


@pytest.fixture(scope="module")
def trained(trained_bundle_path) -> Predictor:
    return Predictor.from_path(trained_bundle_path, device="cpu")


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_overlapping_tiles_agree_with_the_whole_image(trained, blend):
    predictor = trained
    image, truth = colour_scene(160, 192, seed=12345)
    reference = whole_image_probs(predictor, image).argmax(0)
    assert (
        reference == truth
    ).mean() > 0.8  # the model did learn something: the test is not vacuous
    tile, overlap = 64, 0.5
    labels = predictor.predict(image, tile=tile, overlap=overlap, blend=blend)
    differ = labels != reference
    assert differ.mean() <= 1e-3, f"{differ.mean():.4%} of pixels differ"
    # Disagreement must not sit on the tile seams: pixels within 4 px of a tile edge disagree no
    # more often than 1% of them (a stitching bug would mis-label whole seam lines).
    grid = make_grid(*image.shape[:2], tile, overlap, predictor.card.stride)
    seam = np.zeros(image.shape[:2], bool)
    for y in grid.ys:
        for edge in (y, y + grid.tile_h):
            seam[max(0, edge - 4) : edge + 4] = True
    for x in grid.xs:
        for edge in (x, x + grid.tile_w):
            seam[:, max(0, edge - 4) : edge + 4] = True
    seam[:4] = seam[-4:] = seam[:, :4] = seam[:, -4:] = False  # image borders are not seams
    assert differ[seam].mean() <= 0.01


def test_no_overlap_constant_blend_still_covers_everything(predictor):
    image = shapes_image(150, 130, seed=3)
    probs = predictor.predict_proba(image, tile=64, overlap=0, blend="constant")
    assert probs.shape == (4, 150, 130) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (7, 1000), (1000, 7), (513, 513)])
def test_odd_sizes_give_a_mask_of_the_input_size(predictor, shape):
    image = shapes_image(*shape, seed=4)
    mask = predictor.predict(image, tile=128)
    assert mask.shape == shape and mask.dtype == np.uint8
    assert mask.max() < len(CLASSES)


def test_input_dtypes_and_channel_counts(predictor, gray_bundle_path):
    rgb = shapes_image(64, 80, seed=5)
    expected = predictor.predict(rgb)
    np.testing.assert_array_equal(
        predictor.predict(rgb.astype(np.uint16) * 257), expected
    )  # 16-bit, same picture
    np.testing.assert_array_equal(predictor.predict(rgb.astype(np.float32) / 255), expected)
    rgba = np.concatenate([rgb, np.full((64, 80, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(predictor.predict(rgba), expected)  # alpha is dropped
    gray = rgb[..., 0]
    np.testing.assert_array_equal(
        predictor.predict(gray), predictor.predict(np.repeat(gray[..., None], 3, 2))
    )
    gray_model = Predictor.from_path(gray_bundle_path, device="cpu")
    luma = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    np.testing.assert_array_equal(gray_model.predict(rgb), gray_model.predict(luma))
    with pytest.raises(DataError, match="5 channels but the model takes 3"):
        predictor.predict(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match="shape"):
        predictor.predict(np.zeros((8,), np.uint8))


@pytest.mark.parametrize("tta,passes", [("hflip", 2), ("flip", 4), ("d4", 8)])
def test_tta_is_a_mean_over_transformed_passes(predictor, tta, passes):
    image = shapes_image(64, 64, seed=6)
    calls = []
    backend = predictor.backend
    original = type(backend).__call__

    def counting(self, x):
        calls.append(tuple(x.shape))
        return original(self, x)

    type(backend).__call__ = counting
    try:
        probs = predictor.predict_proba(image, tile=64, tta=tta)
    finally:
        type(backend).__call__ = original
    assert len(calls) == passes
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # the mean over passes of the flipped image is the manual mean over flipped predictions
    flips = {"hflip": [(), (1,)], "flip": [(), (1,), (0,), (0, 1)]}
    if tta in flips:
        manual = np.mean(
            [
                np.flip(
                    predictor.predict_proba(np.flip(image, axes), tile=64),
                    tuple(a + 1 for a in axes),
                )
                for axes in flips[tta]
            ],
            axis=0,
        )
        np.testing.assert_allclose(probs, manual, atol=1e-5)


@pytest.mark.slow
def test_tta_commutes_with_tiling(trained):
    image, _ = colour_scene(160, 96, seed=7)
    whole = trained.predict_proba(image, tile=512, tta="d4")
    tiled = trained.predict_proba(image, tile=64, overlap=0.5, tta="d4")
    assert (whole.argmax(0) == tiled.argmax(0)).mean() > 0.998


def test_bad_options_and_files(predictor, tmp_path):
    with pytest.raises(ConfigError, match="--blend 'box': Input should be 'constant'"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), blend="box")
    with pytest.raises(
        ConfigError, match="--tta 'rot': Input should be 'none', 'hflip', 'flip' or 'd4'"
    ):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), tta="rot")
    with pytest.raises(ConfigError, match="--blend 'box'"):
        Predictor(predictor.backend, blend="box")
    with pytest.raises(ModelError, match="not found"):
        Predictor.from_path(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="bad.ckpt"):
        Predictor.from_path(bad)


def test_ckpt_refuses_onnx_only_facts(bundle_path):
    with pytest.raises(ConfigError, match="only apply to .onnx"):
        Predictor.from_path(bundle_path, classes=["a", "b"])


def test_cuda_request_without_cuda_is_a_clear_error(bundle_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelError, match="CUDA is not available"):
        Predictor.from_path(bundle_path, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_matches_cpu(trained_bundle_path):
    image, _ = colour_scene(200, 180, seed=8)
    cpu = Predictor.from_path(trained_bundle_path, device="cpu").predict_proba(image)
    gpu_predictor = Predictor.from_path(trained_bundle_path, device="cuda")
    gpu = gpu_predictor.predict_proba(image)
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu.sum(0), 1.0, atol=1e-4)  # softmax in float32 under autocast
    assert (cpu.argmax(0) == gpu.argmax(0)).mean() > 0.99
    assert np.abs(cpu - gpu).mean() < 0.02
    np.testing.assert_array_equal(gpu_predictor.predict(image), gpu.argmax(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_predict_queues_the_whole_image_without_waiting_for_the_gpu(trained_bundle_path):
    """No synchronising call (``.cpu()``, a copy from pageable memory, ``.item()``) between the
    first tile and the last: the host only waits on the label copies' events, lagging behind."""
    predictor = Predictor.from_path(trained_bundle_path, device="cuda", tile=64, batch_size=2)
    image, _ = colour_scene(300, 260, seed=3)
    expected = predictor.predict_proba(image).argmax(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        labels = predictor.predict(image)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(predictor.grid(300, 260)) > 4 * 2  # several rows of tiles, several batches
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_small_images_sharing_passes_match_each_alone(trained_bundle_path):
    predictor = Predictor.from_path(trained_bundle_path, device="cuda", tile=64, batch_size=4)
    images = [colour_scene(60, 60, seed=s)[0] for s in range(5)]
    together = predictor.probs_together(images)
    assert all(p.device.type == "cuda" for p in together)
    for image, probs in zip(images, together, strict=True):
        alone = predictor.predict_proba(image)  # bf16 kernels may differ between batch sizes
        assert np.abs(probs.cpu().numpy() - alone).mean() < 0.01
        assert (probs.cpu().numpy().argmax(0) == alone.argmax(0)).mean() > 0.99
    assert [m.shape for m in predictor.predict_many(images)] == [(60, 60)] * 5


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_same_tile_positions_as_monai_give_the_same_probabilities(predictor, blend):
    """With a grid both tilers agree on (stride-aligned starts) and the same blend window, segkit's
    streaming stitcher reproduces MONAI's full-size sliding window exactly. (MONAI's own gaussian
    map is clamped at 1e-3 in 2-D, segkit's per axis, so by default the weights differ where
    only tile edges overlap.)"""
    monai = pytest.importorskip("monai.inferers")
    image = shapes_image(128, 160, seed=9)
    ours = predictor.predict_proba(image, tile=64, overlap=0.5, blend=blend)
    x = torch.from_numpy(predictor._prepare(image).transpose(2, 0, 1)[None]).float() / 255
    mean = torch.tensor(predictor.card.mean).view(1, -1, 1, 1)
    std = torch.tensor(predictor.card.std).view(1, -1, 1, 1)
    with torch.inference_mode():
        theirs = monai.sliding_window_inference(
            (x - mean) / std,
            (64, 64),
            4,
            predictor.backend,
            overlap=0.5,
            mode=blend,
            roi_weight_map=torch.from_numpy(blend_window(64, 64, blend)),
        )
    np.testing.assert_allclose(ours, theirs[0].numpy(), atol=1e-6)


@pytest.mark.parametrize("classes", [3, 300])
def test_argmax_labels_takes_the_first_maximum_in_the_narrow_dtype(classes):
    probs = torch.rand(classes, 9, 11, generator=torch.Generator().manual_seed(0))
    probs[:, 0, 0] = 0.5  # an all-way tie: class 0, like argmax
    probs[1, 1, 1] = probs[2, 1, 1] = 2.0  # a two-way tie: the lower class
    expected = probs.numpy().argmax(0)
    for given in (probs, probs.numpy()):
        labels = argmax_labels(given)
        assert labels.dtype == (np.uint8 if classes <= 256 else np.int32)
        np.testing.assert_array_equal(labels, expected)
    assert expected[0, 0] == 0 and expected[1, 1] == 1


def _host_labels_case(device: str) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Four 3-class blocks of one 2 x 2 block layout, and their expected arg-max labels."""
    g = torch.Generator().manual_seed(1)
    blocks = [torch.rand(3, 4, 5, generator=g) for _ in range(4)]
    return [b.to(device) for b in blocks], [b.numpy().argmax(0) for b in blocks]


def _write_through(labels: HostLabels, blocks: list[torch.Tensor], buffer: torch.Tensor) -> None:
    """Add the blocks as the stitcher hands them out: each a view of one buffer, overwritten next."""
    for i, block in enumerate(blocks):
        buffer.copy_(block)
        labels.add(4 * (i // 2), 5 * (i % 2), buffer)


def test_host_labels_on_a_cpu_writes_each_block_at_once():
    blocks, expected = _host_labels_case("cpu")
    out = np.full((8, 10), 99, dtype=np.uint8)
    labels = HostLabels(out)
    labels.add(0, 0, blocks[0])
    np.testing.assert_array_equal(out[:4, :5], expected[0])
    assert (out[:4, 5:] == 99).all() and (out[4:] == 99).all()
    labels.add(4, 5, blocks[3].numpy())  # numpy probabilities too
    np.testing.assert_array_equal(out[4:, 5:], expected[3])
    _write_through(HostLabels(out), blocks, torch.empty_like(blocks[0]))  # no flush needed
    np.testing.assert_array_equal(out, np.block([expected[:2], expected[2:]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_labels_on_cuda_writes_blocks_later_and_as_they_were():
    """Labels reach ``out`` ``lag`` blocks late, and equal the block when it was added even though
    the block (a view of the stitching buffer) was overwritten since."""
    blocks, expected = _host_labels_case("cuda")
    out = np.full((8, 10), 99, dtype=np.uint8)
    labels = HostLabels(out, lag=2)
    _write_through(labels, blocks, torch.empty_like(blocks[0]))
    np.testing.assert_array_equal(out[:4, :5], expected[0])
    np.testing.assert_array_equal(out[:4, 5:], expected[1])
    assert (out[4:] == 99).all()  # the last two are still on their way
    labels.flush()
    np.testing.assert_array_equal(out, np.block([expected[:2], expected[2:]]))


def test_a_read_only_image_predicts_without_a_torch_warning(predictor, monkeypatch):
    """Memory-mapped images are read-only; torch warns on such arrays unless the band is copied.
    (torch warns once per process, so the test also checks every array it is handed.)"""
    image = shapes_image(128, 96, seed=3)
    expected = predictor.predict(image, tile=64)
    image.flags.writeable = False
    from_numpy = torch.from_numpy

    def writable_only(array: np.ndarray) -> torch.Tensor:
        assert array.flags.writeable
        return from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", writable_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(predictor.predict(image, tile=64), expected)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_small_images_share_forward_passes_and_get_what_each_gets_alone(bundle_path, tta):
    """Images that fit one tile of the same shape run batch_size per pass (a folder of small
    images keeps a GPU busy) and get the probabilities each gets alone."""
    counting = CountingBackend(Predictor.from_path(bundle_path, device="cpu").backend)
    p = Predictor(counting, batch_size=2, tta=tta)
    images = [shapes_image(h, w, seed=s) for s, (h, w) in enumerate([(60, 60), (64, 64), (57, 58)])]
    assert len({p.batch_key(im) for im in images}) == 1  # all padded to one 64 x 64 tile
    together = p.probs_together(images)
    passes = len(counting.batches) // 2
    assert counting.batches == [2] * passes + [1] * passes  # 3 images: a pass of 2, then of 1
    for image, probs in zip(images, together, strict=True):
        assert probs.shape == (len(CLASSES), *image.shape[:2])
        np.testing.assert_allclose(probs.numpy(), p.predict_proba(image), atol=1e-5, rtol=0)


def test_batch_keys_separate_tile_shapes_pixel_types_and_large_images(predictor):
    key = predictor.batch_key
    assert key(shapes_image(60, 60)) == key(shapes_image(57, 58)) != key(shapes_image(40, 64))
    assert key(shapes_image(60, 60)) != key(shapes_image(60, 60).astype(np.uint16) * 257)
    assert key(shapes_image(100, 60)) is None  # two tiles: the stitching path
    with pytest.raises(ValueError, match="fit one tile of the same shape"):
        predictor.probs_together([shapes_image(60, 60), shapes_image(40, 64)])


def test_consecutive_batches_keep_order_and_split_on_key_changes_and_size():
    keys = dict(a1="a", a2="a", a3="a", n1=None, n2=None, b1="b", a4="a", a5="a")
    batches = list(consecutive_batches(keys, keys.get, lambda key: 2))
    assert batches == [["a1", "a2"], ["a3"], ["n1"], ["n2"], ["b1"], ["a4", "a5"]]


def test_predict_many_equals_predict_and_shares_passes(bundle_path):
    counting = CountingBackend(Predictor.from_path(bundle_path, device="cpu").backend)
    p = Predictor(counting, batch_size=4)
    images = [
        shapes_image(60, 60, seed=0),
        shapes_image(64, 64, seed=1)[..., 0],  # gray: the same tile, the same key
        shapes_image(100, 60, seed=2),  # two tiles: stitched on its own
        shapes_image(57, 58, seed=3),
    ]
    masks = list(p.predict_many(iter(images)))
    assert counting.batches == [2, 2, 1]
    for image, mask in zip(images, masks, strict=True):
        np.testing.assert_array_equal(mask, p.predict(image))


def test_smaller_images_pack_more_per_pass_within_a_batch_of_full_tiles(bundle_path):
    """batch_size counts full tiles: at tile 64 and batch 1, a pass holds four 32 x 32 images."""
    counting = CountingBackend(Predictor.from_path(bundle_path, device="cpu").backend)
    p = Predictor(counting, batch_size=1)  # the bundle's tile: 64
    small = [shapes_image(30, 31, seed=s) for s in range(5)]  # padded to 32 x 32 (stride 8)
    assert p.images_per_pass(p.batch_key(small[0])) == 4
    assert p.images_per_pass(p.batch_key(shapes_image(64, 64))) == 1
    assert p.images_per_pass(p.batch_key(shapes_image(40, 64))) == 1  # 2560 px: one fits
    masks = list(p.predict_many(small))
    assert counting.batches == [4, 1]
    for image, mask in zip(small, masks, strict=True):
        np.testing.assert_array_equal(mask, p.predict(image))


def test_passes_per_tile_counts_the_tta_transforms(bundle_path):
    p = Predictor.from_path(bundle_path, device="cpu")
    assert [p.with_options(tta=t).passes_per_tile() for t in ("none", "hflip", "flip", "d4")] == [
        1,
        2,
        4,
        8,
    ]


def test_per_image_normalisation_makes_predictions_blind_to_brightness_and_contrast(tmp_path):
    """A model trained with ``data.normalization: image`` normalises each image by its own
    statistics at predict time: an image and a darker, flatter copy get the same probabilities,
    tiled or whole, alone or sharing forward passes with other images."""
    from tests.fixtures import make_bundle

    path = make_bundle(tmp_path / "own.ckpt", data={"normalization": "image"}, predict={"tile": 32})
    p = Predictor.from_path(path, device="cpu")
    assert p.card.normalization == "image"
    image = shapes_image(72, 64, seed=4).astype(np.float32) / 255
    changed = image * 0.4 + 0.1  # every channel: another brightness and contrast
    probs = p.predict_proba(image)
    assert np.allclose(p.predict_proba(changed), probs, atol=1e-4)
    small = [image[:32, :32], changed[:32, :32], image[32:64, 16:48]]
    together = [t.numpy() for t in p.probs_together(small)]
    for alone, shared in zip(small, together, strict=True):
        assert np.allclose(p.predict_proba(alone), shared, atol=1e-5)
    assert np.allclose(together[0], together[1], atol=1e-4)
    dataset_wide = Predictor.from_path(make_bundle(tmp_path / "d.ckpt", predict={"tile": 32}))
    assert not np.allclose(dataset_wide.predict_proba(changed), dataset_wide.predict_proba(image))
