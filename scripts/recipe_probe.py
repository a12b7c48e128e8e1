"""Short training probes on Kvasir-SEG to rank recipe choices before a full bundle run.

Not the bundle's workflow and not a benchmark: a small in-memory loop (images resized once to
``--size``, flips and 90-degree rotations, DiceCE with the bundle's deep-supervision weights, AdamW,
warm-up + cosine per step, gradient-norm clipping) that trains each variant on the same number of
training images (``--images``; so the step count is independent of the machine's load, and the
seconds per step are reported beside it), or for the same wall-clock time (``--minutes``; the step
count is fixed from the first timed steps, so the machine must be otherwise idle), and reports
validation Dice at ``--size`` (not native resolution; a variant trained at another size has its
logits resized to ``--size``). It answers "which knob is worth a full ``monai.bundle run``",
nothing more; docs/recipe.md quotes its tables as such.

    python scripts/recipe_probe.py --variants baseline lr4e-3 batch4 --images 4000 --out docs/recipe_probe.json
    python scripts/recipe_probe.py --variants baseline size64_batch32 --minutes 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402
from monai.networks.nets import BasicUNet  # noqa: E402
from monai.optimizers import WarmupCosineSchedule  # noqa: E402

from bundle.networks import DSTransUNet  # noqa: E402
from bundle.networks.memory import enable_heap_release  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "kvasir-seg"

# name -> changes from the baseline (the bundle's default recipe for DS-TransUNet tiny)
VARIANTS = {
    "baseline": {},
    "lr1e-3": {"lr": 1.0e-3},
    "lr4e-3": {"lr": 4.0e-3},
    "batch4": {"batch": 4},
    "batch16": {"batch": 16},
    "no_drop_path": {"net": {"drop_path_rate": 0.0, "coarse_drop_path_rate": 0.0, "decoder_drop_path_rate": 0.0}},
    "wd0.05": {"weight_decay": 0.05},
    "small": {"net": {"preset": "small"}},
    "unet": {"network": "unet"},
    "conv_decoder": {"net": {"decoder": "conv"}},
    "single_scale": {"net": {"dual_scale": False}},
    "window4": {"net": {"window_size": 4}},
    "window8": {"net": {"window_size": 8}},
    "no_deep_supervision": {"deep_supervision": False},
    "size64_batch32": {"size": 64, "batch": 32},  # a quarter of the pixels an image, the same pixels a step
}


def load(split: str, size: int):
    items = json.loads((DATA / "datalist_800_100_100.json").read_text())[split]
    images, masks = [], []
    for item in items:
        image = Image.open(DATA / item["image"]).convert("RGB").resize((size, size), Image.BILINEAR)
        mask = Image.open(DATA / item["label"]).convert("L").resize((size, size), Image.NEAREST)
        images.append(np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0)
        masks.append((np.asarray(mask) > 127).astype(np.float32)[None])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


def build(settings: dict) -> torch.nn.Module:
    if settings.get("network") == "unet":
        return BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)
    kwargs = {"preset": "tiny", **settings.get("net", {})}
    deep = settings.get("deep_supervision", True)
    return DSTransUNet(spatial_dims=2, in_channels=3, out_channels=1, deep_supervision=deep, **kwargs)


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
    if torch.rand(1, generator=generator) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand(1, generator=generator) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    k = int(torch.randint(0, 4, (1,), generator=generator))
    return torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))


@torch.no_grad()
def dice(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean Dice over ``masks``; logits of another size are resized to the masks' (bilinear)."""
    net.eval()
    scores = []
    for start in range(0, len(images), 16):
        logits = net(images[start : start + 16])
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        pred = (torch.sigmoid(logits) > 0.5).float()
        truth = masks[start : start + 16]
        inter = (pred * truth).sum((1, 2, 3))
        total = pred.sum((1, 2, 3)) + truth.sum((1, 2, 3))
        scores.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    net.train()
    return float(torch.cat(scores).mean())


def run(name: str, images: int, size: int, loaded, seed: int, minutes: float | None = None) -> dict:
    settings = {"lr": 2.0e-3, "batch": 8, "weight_decay": 1.0e-4, **VARIANTS[name]}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_size = settings.get("size", size)
    train_x, train_y = loaded("training", train_size)
    val_x, val_y = loaded("validation", train_size)[0], loaded("validation", size)[1]  # Dice at --size
    train_eval_x, train_eval_y = train_x[:100], loaded("training", size)[1][:100]
    net = build(settings)
    enable_heap_release(getattr(net, "use_checkpoint", False))  # as the bundle's training does (HeapReleaseHandler)
    deep = settings.get("network") != "unet" and settings.get("deep_supervision", True)
    loss_fn = DiceCELoss(sigmoid=True)
    if deep:
        loss_fn = DeepSupervisionLoss(loss_fn, weights=[0.6, 0.2, 0.2])
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"], fused=True
    )  # as train.yaml
    batch = settings["batch"]

    def step() -> float:
        index = torch.randint(0, len(train_x), (batch,), generator=generator)
        x, y = augment(train_x[index], train_y[index], generator)
        loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        return float(loss)

    if minutes:  # the same wall-clock time: the step count from three timed steps (not counted as training)
        start = time.perf_counter()
        for _ in range(3):
            step()
        total = max(10, int(minutes * 60 / ((time.perf_counter() - start) / 3)))
    else:
        total = max(10, images // batch)
    scheduler = WarmupCosineSchedule(
        optimizer, warmup_steps=max(1, total // 20), t_total=total, end_lr=settings["lr"] * 0.01
    )
    curve, losses = [], []
    begin = time.perf_counter()
    for index in range(total):
        losses.append(step())
        scheduler.step()
        if (index + 1) % max(1, total // 4) == 0 or index + 1 == total:
            curve.append(
                {
                    "step": index + 1,
                    "seconds": round(time.perf_counter() - begin),
                    "val_dice": round(dice(net, val_x, val_y), 4),
                    "train_dice": round(dice(net, train_eval_x, train_eval_y), 4),
                    "loss": round(float(np.mean(losses[-50:])), 4),
                }
            )
            print(name, curve[-1], flush=True)
    return {
        "variant": name,
        "settings": {k: v for k, v in settings.items()},
        "seconds_per_step": round((time.perf_counter() - begin) / total, 3),
        "steps": total,
        "images_seen": total * batch,
        "train_minutes": round((time.perf_counter() - begin) / 60, 2),
        "val_dice": curve[-1]["val_dice"],
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["baseline"], choices=sorted(VARIANTS))
    parser.add_argument("--images", type=int, default=4000, help="training images per variant (steps x batch)")
    parser.add_argument("--minutes", type=float, default=None, help="instead: wall-clock minutes of training per variant")
    parser.add_argument("--size", type=int, default=128, help="training size, and the size Dice is measured at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/recipe_probe.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"recipe_probe: Kvasir-SEG not found at {DATA}")
    torch.set_num_threads(int(os.environ.get("PROBE_THREADS", "2")))
    cache: dict = {}

    def loaded(split: str, size: int):
        if (split, size) not in cache:
            cache[split, size] = load(split, size)
        return cache[split, size]

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    length = f"{args.minutes:g}min" if args.minutes else f"{args.images}img"
    for name in args.variants:
        results[f"{name}@{args.size}/{length}/seed{args.seed}"] = run(
            name, args.images, args.size, loaded, args.seed, args.minutes
        )
        out.write_text(json.dumps(results, indent=1))
    for key, value in results.items():
        print(
            f"{key:40s} {value['seconds_per_step']:.2f} s/step {value['steps']:5d} steps  val Dice {value['val_dice']:.4f}"
        )


if __name__ == "__main__":
    main()
