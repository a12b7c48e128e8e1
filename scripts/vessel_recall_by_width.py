"""Recall on thin and wide vessels, and false positives, of evaluations' saved masks (e.g. DRIVE).

Each vessel pixel of the reference mask takes the width of the nearest skeleton point (twice its distance
to the background); pixels of vessels up to ``--thin`` px wide count as thin. Tells whether two networks
differ on the thinnest vessels or everywhere. Images and masks pair as in the bundle's commands::

    python scripts/vessel_recall_by_width.py --dataset_dir ../shared/data/drive \\
        --image_pattern '*_test' --mask_pattern '*_manual1' run_a/eval_official run_b/eval_official
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from bundle.data.datalists import find_pairs
from bundle.data.image_files import image_stem, read_array
from bundle.data.transforms import binarize_mask


def vessel_width(mask: np.ndarray) -> np.ndarray:
    """Width in px of the vessel each foreground pixel belongs to (0 on the background)."""
    skeleton = skeletonize(mask)
    width = np.where(skeleton, 2 * ndimage.distance_transform_edt(mask), 0)
    _, (rows, cols) = ndimage.distance_transform_edt(~skeleton, return_indices=True)
    return np.where(mask, width[rows, cols], 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation output folders (with predictions/<image>_mask.png)")
    parser.add_argument("--dataset_dir", required=True, help="the evaluated folder (images/ and masks/)")
    parser.add_argument("--image_pattern", default="*", help="as the bundle's")
    parser.add_argument("--mask_pattern", default="*", help="as the bundle's")
    parser.add_argument("--thin", type=float, default=3.0, help="vessels up to this width (px) are thin")
    args = parser.parse_args(argv)

    references = {}  # image stem -> (thin, wide) vessels: each reference's widths once, for every evaluation
    for pair in find_pairs(args.dataset_dir, args.image_pattern, args.mask_pattern):
        gt = binarize_mask(read_array(pair["label"], as_mask=True)[0], pair["label"])
        width = vessel_width(gt)
        # named as the evaluation names its predictions (SavePredictionPNGd: the image's stem)
        references[image_stem(pair["image"])] = (gt & (width <= args.thin), gt & (width > args.thin))
    for eval_dir in args.eval_dirs:
        counts = np.zeros(5)  # thin found, thin, wide found, wide, false positive pixels
        for stem, (thin, wide) in references.items():
            path = Path(eval_dir, "predictions", f"{stem}_mask.png")
            if not path.is_file():
                raise SystemExit(f"ERROR: {path} is missing: was {eval_dir} evaluated on {args.dataset_dir}?")
            found = read_array(path, as_mask=True)[0] > 0
            hits = (found & thin).sum(), (found & wide).sum()  # the rest of what was found is false positives
            counts += [hits[0], thin.sum(), hits[1], wide.sum(), found.sum() - sum(hits)]
        total = counts[1] + counts[3]
        print(
            f"{eval_dir}: recall on vessels <= {args.thin:g} px {counts[0] / counts[1]:.3f} "
            f"({counts[1] / total:.0%} of vessel pixels), wider {counts[2] / counts[3]:.3f}; "
            f"false positives {counts[4] / total:.3f} of the vessel pixels ({len(references)} images)"
        )


if __name__ == "__main__":
    main()
