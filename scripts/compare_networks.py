"""Compare networks on Kvasir-SEG under one protocol; writes docs/results.md and its figures.

    python scripts/compare_networks.py                                   # the full comparison
    python scripts/compare_networks.py --epochs 1 --train-limit 16 --test-limit 4 --output /tmp/cmp

Every network is built from its config in ``configs/networks/`` (the same file that swaps it into
the training, evaluation and inference configs) and trained the same way: the fixed split
``datalist_800_100_100.json``, images and masks resized to ``--size`` square, random flips and 90
degree rotations, AdamW (lr 1e-3, weight decay 1e-4) with a cosine schedule, batch ``--batch-size``,
Dice + BCE loss (with deep supervision where a network gives auxiliary outputs), ``--epochs`` epochs,
seeded. Each epoch ends with validation Dice on the 100 validation images; the weights of the best
epoch are tested on the 100 test images: prediction at ``--size``, logits resized to the image's
native size, thresholded at 0.5, Dice and IoU computed at native resolution. Inference time is the
median per image of the network's forward at ``--size`` (batch 1).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.losses import DeepSupervisionLoss, DiceCELoss
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORKS = {
    "UNet": "unet",
    "UNet+TIF": "unet_tif",
    "SwinUNETR": "swin_unetr",
    "SwinUNETR+TIF": "swin_unetr_tif",
    "DS-TransUNet tiny": "ds_transunet",
    "Swin U-Net (ablation)": "ablation_swin_unet",
    "+ Swin decoder (ablation)": "ablation_swin_decoder",
    "Multi-scale SD (ablation)": "ablation_multiscale_sd",
}


def build_network(config_name: str, preset: str) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "configs", "networks", f"{config_name}.yaml"))
    parser.update({"in_channels": 3, "out_channels": 1, "preset": preset})
    return parser.get_parsed_content("network_def")


def load_pair(root: str, item: Dict[str, str], size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image resized CHW float, mask resized HW {0,1}, native mask HW {0,1}); masks are lossy JPEG: threshold 127."""
    image = Image.open(os.path.join(root, item["image"])).convert("RGB")
    mask = np.asarray(Image.open(os.path.join(root, item["label"])).convert("L")) > 127
    small = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255.0
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    return small, small_mask.astype(np.float32), mask


def load_split(root: str, items: List[Dict[str, str]], size: int, limit: int | None):
    items = items[:limit] if limit else items
    triples = [load_pair(root, it, size) for it in items]
    images = torch.from_numpy(np.stack([t[0] for t in triples]))
    masks = torch.from_numpy(np.stack([t[1] for t in triples]))[:, None]
    return images, masks, [t[2] for t in triples], items


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator):
    out_i, out_m = images.clone(), masks.clone()
    for n in range(images.shape[0]):
        flips = [d for d in (1, 2) if torch.rand(1, generator=generator).item() < 0.5]
        k = int(torch.randint(0, 4, (1,), generator=generator).item())
        img, msk = images[n], masks[n]
        if flips:
            img, msk = img.flip(flips), msk.flip(flips)
        out_i[n], out_m[n] = img.rot90(k, (1, 2)), msk.rot90(k, (1, 2))
    return out_i, out_m


def main_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> Tuple[float, float]:
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    union = total - inter
    return (2 * inter / total if total else 1.0), (inter / union if union else 1.0)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    model.eval()
    return torch.cat([main_output(model(images[i : i + batch])) for i in range(0, len(images), batch)])


def run_network(label: str, config_name: str, data: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    torch.manual_seed(args.seed)
    model = build_network(config_name, args.preset)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weights=[0.6, 0.2, 0.2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0e-3, weight_decay=1.0e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    train_x, train_y = data["train"][:2]
    val_x, val_y = data["val"][:2]
    gen = torch.Generator().manual_seed(args.seed)
    history, best, best_state, epoch_seconds = [], -1.0, None, []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        losses, t0 = [], time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            x, y = augment(train_x[idx], train_y[idx], gen)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        epoch_seconds.append(time.perf_counter() - t0)
        probs = torch.sigmoid(predict(model, val_x)) > 0.5
        val_dice = float(np.mean([dice_iou(p[0].numpy(), t[0].numpy() > 0.5)[0] for p, t in zip(probs, val_y)]))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_dice": val_dice})
        print(f"{label}: epoch {epoch + 1}/{args.epochs} loss {np.mean(losses):.4f} val Dice {val_dice:.4f} "
              f"({epoch_seconds[-1]:.0f} s)", flush=True)  # fmt: skip
        if val_dice > best:
            best, best_state = val_dice, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test_x, _, test_native, test_items = data["test"]
    logits = predict(model, test_x)
    scores, masks = [], []
    for logit, truth in zip(logits, test_native):
        native = F.interpolate(logit[None], size=truth.shape, mode="bilinear", align_corners=False)[0, 0]
        pred = (torch.sigmoid(native) > 0.5).numpy()
        scores.append(dice_iou(pred, truth))
        masks.append(pred)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(min(len(test_x), 21)):
            t0 = time.perf_counter()
            model(test_x[i : i + 1])
            times.append(time.perf_counter() - t0)
    return {
        "network": label, "config": f"configs/networks/{config_name}.yaml", "params_m": params,
        "test_dice": float(np.mean([s[0] for s in scores])), "test_iou": float(np.mean([s[1] for s in scores])),
        "best_val_dice": best, "seconds_per_epoch": statistics.median(epoch_seconds),
        "ms_per_image": 1000 * statistics.median(times[1:] if len(times) > 1 else times),
        "history": history, "test_predictions": masks[: args.grid_images],
    }  # fmt: skip


def write_figures(results: List[Dict[str, Any]], data: Dict[str, Any], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["network"] for r in results]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(names, [r["test_dice"] for r in results], color=["tab:orange" if "TIF" in n or "DS-" in n else "tab:blue" for n in names])
    for y, r in enumerate(results):
        ax.text(r["test_dice"] + 0.005, y, f"{r['test_dice']:.3f}", va="center")
    ax.set_xlabel("test Dice (Kvasir-SEG, native resolution)")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(args.output, "results_dice.png"), dpi=100)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        epochs = [h["epoch"] for h in r["history"]]
        ax1.plot(epochs, [h["loss"] for h in r["history"]], label=r["network"])
        ax2.plot(epochs, [h["val_dice"] for h in r["history"]], label=r["network"])
    ax1.set(xlabel="epoch", ylabel="training loss")
    ax2.set(xlabel="epoch", ylabel="validation Dice")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output, "results_curves.png"), dpi=100)
    plt.close(fig)

    root, items = data["root"], data["test"][3][: args.grid_images]
    cols = 2 + len(results)
    fig, axes = plt.subplots(len(items), cols, figsize=(1.6 * cols, 1.6 * len(items)), squeeze=False)
    for row, item in enumerate(items):
        image = Image.open(os.path.join(root, item["image"])).convert("RGB")
        panels = [("image", np.asarray(image)), ("expert", data["test"][2][row])]
        panels += [(r["network"], r["test_predictions"][row]) for r in results]
        for col, (title, panel) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output, "results_predictions.png"), dpi=80)
    plt.close(fig)


def write_table(results: List[Dict[str, Any]]) -> Tuple[str, str]:
    """The Markdown table of the results, and the command that made them."""
    lines = [
        "| network | config | params (M) | test Dice | test IoU | best val Dice | s / epoch | ms / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['network']} | `{r['config']}` | {r['params_m']:.2f} | {r['test_dice']:.4f} | {r['test_iou']:.4f} "
            f"| {r['best_val_dice']:.4f} | {r['seconds_per_epoch']:.0f} | {r['ms_per_image']:.0f} |"
        )
    command = "python scripts/compare_networks.py " + " ".join(sys.argv[1:])
    return "\n".join(lines), command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data", "kvasir-seg"))
    parser.add_argument("--datalist", default="datalist_800_100_100.json", help="relative to --data-dir")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--preset", default="tiny", help="DSTransUNet preset for the DS-TransUNet rows")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-limit", type=int, default=None, help="use the first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="use the first N validation and test images")
    parser.add_argument("--grid-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(REPO, "docs"))
    args = parser.parse_args()

    datalist_path = os.path.join(args.data_dir, args.datalist)
    if not os.path.isfile(datalist_path):
        sys.exit(f"compare_networks: no datalist at {datalist_path} (set --data-dir to the Kvasir-SEG folder)")
    with open(datalist_path) as f:
        datalist = json.load(f)
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    data = {
        "root": args.data_dir,
        "train": load_split(args.data_dir, datalist["training"], args.size, args.train_limit),
        "val": load_split(args.data_dir, datalist["validation"], args.size, args.test_limit),
        "test": load_split(args.data_dir, datalist["test"], args.size, args.test_limit),
    }
    print(f"loaded {len(data['train'][0])} / {len(data['val'][0])} / {len(data['test'][0])} images", flush=True)
    results = []
    for label in args.networks:
        results.append(run_network(label, NETWORKS[label], data, args))
        with open(os.path.join(args.output, "results.json"), "w") as f:  # partial results survive an interruption
            json.dump([{k: v for k, v in r.items() if k != "test_predictions"} for r in results], f, indent=2)
    write_figures(results, data, args)
    table, command = write_table(results)
    with open(os.path.join(args.output, "results_table.md"), "w") as f:
        f.write(f"Made by `{command}` in {(time.perf_counter() - start) / 60:.0f} minutes, "
                f"torch {torch.__version__}, {torch.get_num_threads()} threads.\n\n{table}\n")  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
