# Copyright (c) DS-TransUNet MONAI bundle developers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""A small deterministic synthetic data set, so that training runs with no data and no network.

It is a demo, not medicine: pinkish textured backgrounds with one to three darker, shaded blobs
("polyps") of random size, shape and place, and the blobs' masks. Images are RGB PNGs of varied,
non-square sizes (so that a row/column mix-up would show), masks are 0/255 PNGs, and the same seed
always draws the same pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

from bundle.files import atomic_write

__all__ = ["DEMO_NOTICE", "make_demo_dataset", "draw_demo_pair"]

DEMO_NOTICE = (
    "\n" + "!" * 78 + "\n"
    "!! DEMO DATA: no --dataset_dir or --datalist was given, so this run trains on a small\n"
    "!! generated set of synthetic pictures (blobs on texture) in %s.\n"
    "!! It is a demo, not medicine: the model learns to find drawn blobs. For real data use\n"
    "!! --dataset_dir DIR (images/ and masks/) or --datalist FILE (see README.md).\n" + "!" * 78
)
_VERSION = 1  # bump when the drawing changes, so old demo folders are redrawn


def draw_demo_pair(index: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The ``index``-th demo image (H, W, 3) uint8 and its mask (H, W) uint8 in {0, 255}."""
    rng = np.random.RandomState(seed * 100_003 + index)
    height, width = (int(v) for v in rng.randint(96, 161, size=2))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)

    # background: low-frequency texture around a pinkish colour, plus pixel noise
    texture = np.zeros((height, width), np.float32)
    for _ in range(4):
        fy, fx = rng.uniform(0.01, 0.08, size=2)
        texture += np.sin(2 * np.pi * (fy * rows + fx * cols) + rng.uniform(0, 2 * np.pi))
    base = np.array([205.0, 125.0, 115.0]) + rng.uniform(-20, 20, size=3)
    image = base[None, None, :] + 12.0 * texture[..., None]

    mask = np.zeros((height, width), bool)
    for _ in range(rng.randint(1, 4)):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(7, 24, size=2)
        angle = rng.uniform(0, np.pi)
        dy, dx = rows - cy, cols - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        # a lobe on one side makes each blob asymmetric
        lobe = ((u - 0.9) ** 2 + (v - 0.4) ** 2) * 4.0
        dist = np.minimum(u**2 + v**2, lobe)
        blob = dist <= 1.0
        shade = np.clip(1.0 - dist, 0.0, 1.0)[..., None]
        colour = np.array([150.0, 62.0, 58.0]) + rng.uniform(-15, 15, size=3)
        image = np.where(blob[..., None], colour + 45.0 * shade, image)
        mask |= blob
    image += rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def _save_png_atomically(path: Path, array: np.ndarray) -> None:
    # several processes (torchrun ranks) may draw the same set at once: write, then rename
    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def make_demo_dataset(directory: str | Path, count: int = 40, seed: int = 0) -> Path:
    """Draw the demo set into ``directory/images`` and ``directory/masks`` (unless already there).

    Returns the directory. Files are named ``demo_000.png`` ... in both folders.
    """
    if count < 2:
        raise ValueError(f"the demo set needs at least 2 pairs, got count={count}.")
    directory = Path(directory)
    stamp = directory / "DEMO_DATA.txt"
    signature = f"synthetic demo data, not medicine; bundle.data.demo version {_VERSION}, count {count}, seed {seed}\n"
    names = [f"demo_{i:03d}.png" for i in range(count)]
    complete = all((directory / d / n).is_file() for d in ("images", "masks") for n in names)
    if complete and stamp.is_file() and stamp.read_text() == signature:
        return directory
    for sub in ("images", "masks"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
        for old in (directory / sub).glob("demo_*.png"):  # drawn earlier with another count
            if old.name not in names:
                old.unlink()
    for i, name in enumerate(names):
        image, mask = draw_demo_pair(i, seed)
        _save_png_atomically(directory / "images" / name, image)
        _save_png_atomically(directory / "masks" / name, mask)
    stamp.write_text(signature)
    return directory
