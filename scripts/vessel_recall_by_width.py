"""Recall on thin and wide vessels, and false positives, of evaluations' saved masks (e.g. DRIVE).

Each vessel pixel of the reference mask takes the width of the nearest skeleton point (twice its distance
to the background); pixels of vessels up to ``--thin`` px wide count as thin. Tells whether two networks
differ on the thinnest vessels or everywhere::

    python scripts/vessel_recall_by_width.py --masks ../shared/data/drive/masks \\
        --image_pattern '*_test' --mask_pattern '*_manual1' run_a/eval_official run_b/eval_official
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize


def vessel_width(mask: np.ndarray) -> np.ndarray:
    """Width in px of the vessel each foreground pixel belongs to (0 on the background)."""
    skeleton = skeletonize(mask)
    width = np.where(skeleton, 2 * ndimage.distance_transform_edt(mask), 0)
    _, (rows, cols) = ndimage.distance_transform_edt(~skeleton, return_indices=True)
    return np.where(mask, width[rows, cols], 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation output folders (with predictions/*_mask.png)")
    parser.add_argument("--masks", required=True, help="folder of the reference masks")
    parser.add_argument("--image_pattern", default="*", help="as the bundle's: '*' is the part image and mask share")
    parser.add_argument("--mask_pattern", default="*")
    parser.add_argument("--thin", type=float, default=3.0, help="vessels up to this width (px) are thin")
    args = parser.parse_args()

    masks = {p.name.split(".")[0]: p for p in Path(args.masks).iterdir() if p.is_file()}
    if args.image_pattern.count("*") != 1 or args.mask_pattern.count("*") != 1:
        raise SystemExit("ERROR: --image_pattern and --mask_pattern need exactly one '*' each (the shared part).")
    prefix, suffix = args.image_pattern.split("*")
    for eval_dir in args.eval_dirs:
        counts = np.zeros(5)  # thin hit, thin, wide hit, wide, false positive pixels
        vessels = 0
        predictions = sorted(Path(eval_dir, "predictions").glob("*_mask.png"))
        for prediction in predictions:
            stem = prediction.name[: -len("_mask.png")]
            if not fnmatch.fnmatch(stem, args.image_pattern):
                continue
            shared = stem[len(prefix) : len(stem) - len(suffix)]
            reference = masks.get(args.mask_pattern.replace("*", shared))
            if reference is None:
                raise SystemExit(
                    f"ERROR: no mask for {prediction} in {args.masks} (mask_pattern {args.mask_pattern!r})"
                )
            gt = np.asarray(Image.open(reference).convert("L")) > 127
            predicted = np.asarray(Image.open(prediction).convert("L")) > 0
            width = vessel_width(gt)
            thin, wide = gt & (width <= args.thin), gt & (width > args.thin)
            hits = [(predicted & thin).sum(), thin.sum(), (predicted & wide).sum(), wide.sum(), (predicted & ~gt).sum()]
            counts += hits
            vessels += gt.sum()
        if not vessels:
            raise SystemExit(f"ERROR: no predicted mask in {eval_dir}/predictions matches {args.image_pattern!r}")
        print(
            f"{eval_dir}: recall on vessels <= {args.thin:g} px {counts[0] / counts[1]:.3f} "
            f"({counts[1] / vessels:.0%} of vessel pixels), wider {counts[2] / counts[3]:.3f}; "
            f"false positives {counts[4] / vessels:.3f} of the vessel pixels ({len(predictions)} images)"
        )


if __name__ == "__main__":
    main()
