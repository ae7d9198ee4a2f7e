"""Recipe ablations on the membrane data at a fixed number of steps (docs/recipe.md's table).

The plan's recipe in plain PyTorch + smp + albumentations, one part switched by each flag, so each
part is measured on and off for the same number of optimiser steps whatever the machine's load:
trains on slices 0-24 minus the 5 that segkit's seeded split holds out for validation, scores whole
slices 25-29 (pixel error, membrane IoU), with and without TTA over the flips the training used;
appends a JSON line to --out.

    python benchmarks/recipe_ablation.py --steps 500 --aug affine_bc --lr 3e-3
"""

import argparse
import json
import math
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch import losses as L

from segkit.models.deep_supervision import DeepSupervision
from segkit.normalization import image_statistics

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=600)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--crop", type=int, default=256)
p.add_argument("--loss", default="ce")
p.add_argument("--sched", default="cosine")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--opt", default="adamw")
p.add_argument("--decoder", default="light")
p.add_argument("--encoder", default="resnet18")
p.add_argument("--aug", default="flips")
p.add_argument("--ema", type=float, default=0)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
p.add_argument(
    "--norm",
    choices=["fixed", "dataset", "image"],
    default="fixed",
    help="mean/std 0.5/0.25, the training slices' own, or each slice's own (segkit's per-image)",
)
p.add_argument("--tta", type=int, default=0)
p.add_argument(
    "--symmetry",
    choices=["all", "hflip", "none"],
    default="all",
    help="flips and quarter turns in training (all), the horizontal flip only, or none; the TTA "
    "score uses the same views",
)
p.add_argument("--rotate", type=float, default=45, help="the affine rotation range, degrees")
p.add_argument("--deep-supervision", type=int, default=0, help="segkit's auxiliary heads")
p.add_argument(
    "--data",
    default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "membrane"),
)
p.add_argument("--out", default="recipe_ablation.jsonl")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
np.random.seed(a.seed)
D = str(Path(a.data) / "train")


def load(i):
    im = cv2.imread(f"{D}/image/{i}.png", 0).astype(np.float32) / 255
    lb = (cv2.imread(f"{D}/label/{i}.png", 0) > 127).astype(np.int64)
    return im, lb


order = np.random.default_rng(0).permutation(25)
val = set(order[:5].tolist())
tr = [load(i) for i in range(25) if i not in val]
te = [load(i) for i in range(25, 30)]
if a.norm == "fixed":
    mean, std = 0.5, 0.25
else:
    allpx = np.concatenate([t[0].ravel() for t in tr])
    mean, std = float(allpx.mean()), float(allpx.std())


def stats(im):
    """The (mean, std) a slice is normalised with."""
    if a.norm != "image":
        return mean, std
    own_mean, own_std = image_statistics(im)
    return float(own_mean[0]), float(own_std[0])


tr = [(im, lb, stats(im)) for im, lb in tr]
te = [(im, lb, stats(im)) for im, lb in te]
SYMMETRY = {
    "all": [A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90()],
    "hflip": [A.HorizontalFlip()],
    "none": [],
}
steps = [A.RandomCrop(a.crop, a.crop), *SYMMETRY[a.symmetry]]
if "elastic" in a.aug:
    steps.insert(0, A.ElasticTransform(alpha=30, sigma=6, p=0.5))
if "affine" in a.aug:
    steps.insert(
        0,
        A.Affine(
            scale=(0.85, 1.2),
            rotate=(-a.rotate, a.rotate),
            p=0.5,
            border_mode=cv2.BORDER_REFLECT_101,
        ),
    )
if "bc" in a.aug:
    steps.append(A.RandomBrightnessContrast(0.15, 0.15, p=0.5))
    steps.append(A.RandomGamma((80, 120), p=0.3))
tf = A.Compose(steps, seed=a.seed)
dec = {
    "full": (256, 128, 64, 32, 16),
    "light": (128, 64, 32, 16, 16),
    "tiny": (64, 32, 32, 16, 16),
}[a.decoder]
m = smp.create_model(
    "Unet", a.encoder, encoder_weights=None, in_channels=1, classes=2, decoder_channels=dec
).to(memory_format=torch.channels_last)
ds = DeepSupervision(m, 2, "Unet") if a.deep_supervision else None
params = list(m.parameters()) + (list(ds.parameters()) if ds is not None else [])
decay = [q for q in params if q.ndim > 1]
nod = [q for q in params if q.ndim <= 1]
groups = [
    {"params": decay, "weight_decay": 1e-4 if a.opt != "sgd" else 3e-5},
    {"params": nod, "weight_decay": 0},
]
opt = (
    torch.optim.AdamW(groups, a.lr)
    if a.opt == "adamw"
    else torch.optim.SGD(groups, a.lr, momentum=0.99 if a.opt == "sgd" else 0.9, nesterov=True)
)
warm = max(1, a.steps // 20)


def f(s):
    if s < warm:
        return (s + 1) / warm
    pr = (s - warm) / max(1, a.steps - warm)
    return {"const": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * pr)), "poly": (1 - pr) ** 0.9}[
        a.sched
    ]


sch = torch.optim.lr_scheduler.LambdaLR(opt, f)
ce = torch.nn.CrossEntropyLoss()
dice = L.DiceLoss("multiclass")


def lossf(lo, y):
    if a.loss == "ce":
        return ce(lo, y)
    if a.loss == "dicece":
        return ce(lo, y) + dice(lo, y)
    if a.loss == "ce+0.3dice":
        return ce(lo, y) + 0.3 * dice(lo, y)


ema = None
if a.ema:
    ema = torch.optim.swa_utils.AveragedModel(
        m, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(a.ema), use_buffers=True
    )
rng = np.random.default_rng(a.seed)
t0 = time.time()
for s in range(a.steps):
    xs, ys = [], []
    for _ in range(a.batch):
        im, lb, (im_mean, im_std) = tr[rng.integers(len(tr))]
        o = tf(image=im, mask=lb)
        xs.append((o["image"] - im_mean) / im_std)
        ys.append(o["mask"])
    x = torch.from_numpy(np.stack(xs))[:, None].contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(np.stack(ys)).long()
    m.train()
    loss = lossf(m(x), y)
    if ds is not None:
        loss = ds.loss(loss, y, lossf)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sch.step()
    if ema is not None:
        ema.update_parameters(m)
    if s % 100 == 0:
        print(s, f"{loss.item():.3f}", f"{time.time() - t0:.0f}s", flush=True)
train_s = time.time() - t0
net = ema.module if ema is not None else m
net.eval()


TTA_FLIPS = {"all": [(-1,), (-2,), (-1, -2)], "hflip": [(-1,)], "none": []}


def evaluate(tta):
    errs = []
    inter = union = 0
    with torch.inference_mode():
        for im, lb, (im_mean, im_std) in te:
            x = torch.from_numpy((im - im_mean) / im_std)[None, None]
            pr = net(x).softmax(1)
            for axes in TTA_FLIPS[a.symmetry] if tta else []:
                pr = pr + net(x.flip(axes)).softmax(1).flip(axes)
            pred = pr.argmax(1)[0].numpy()
            errs.append((pred != lb).mean())
            pm, tm = pred == 0, lb == 0
            inter += (pm & tm).sum()
            union += (pm | tm).sum()
    return float(np.mean(errs)), float(inter / union)


pe, iou = evaluate(False)
pe_tta, iou_tta = evaluate(True)
res = dict(
    vars(a),
    pixel_error=pe,
    membrane_iou=iou,
    pixel_error_tta=pe_tta,
    membrane_iou_tta=iou_tta,
    train_s=round(train_s),
)
print(json.dumps(res), flush=True)
with open(a.out, "a") as fh:
    fh.write(json.dumps(res) + "\n")
