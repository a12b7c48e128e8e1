"""A picture of an evaluation: the overlays the evaluate workflow wrote, at the worst image, the quartiles,
the median and the best image by Dice, each titled with its Dice.

    python scripts/overlay_grid.py runs/train_eval_dir docs/recipe_kvasir_overlays.png
    python scripts/overlay_grid.py EVAL_DIR OUT.png --crop 0 0 292 282 --names 01_test   # one image, cropped

``EVAL_DIR`` is the ``output_dir`` of ``configs/evaluate.yaml`` (its ``mean_dice_raw.csv`` and
``predictions/*_overlay.png``: prediction yellow, expert mask outlined blue). Needs matplotlib.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from bundle.data.image_files import image_stem  # noqa: E402


def per_image_dice(eval_dir: Path) -> dict:
    """Dice by image, named as the evaluation names its overlays (SavePredictionPNGd: the image's stem)."""
    with open(eval_dir / "mean_dice_raw.csv") as f:
        return {image_stem(row["filename"]): float(row["mean"]) for row in csv.DictReader(f)}


def pick(scores: dict) -> list:
    """Worst, 25th percentile, median, 75th percentile and best image names."""
    ranked = sorted(scores, key=scores.get)
    last = len(ranked) - 1
    labels = ["worst", "25th percentile", "median", "75th percentile", "best"]
    return [(label, ranked[round(q * last)]) for label, q in zip(labels, (0.0, 0.25, 0.5, 0.75, 1.0))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--names", nargs="+", help="these images instead of the quantiles")
    parser.add_argument("--crop", nargs=4, type=int, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"))
    parser.add_argument("--height", type=float, default=3.2, help="figure height in inches")
    args = parser.parse_args(argv)
    scores = per_image_dice(args.eval_dir)
    chosen = [(name, name) for name in args.names] if args.names else pick(scores)
    fig, axes = plt.subplots(1, len(chosen), figsize=(args.height * 1.2 * len(chosen), args.height), squeeze=False)
    for ax, (label, name) in zip(axes[0], chosen):
        image = Image.open(args.eval_dir / "predictions" / f"{name}_overlay.png").convert("RGB")
        if args.crop:
            image = image.crop(tuple(args.crop))
        ax.imshow(image)
        ax.set_title(f"{label}: Dice {scores[name]:.3f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(args.output.parent, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
