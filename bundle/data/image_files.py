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

"""Reading and writing 2D image and mask files, in one orientation everywhere.

Arrays are (channels, rows, columns) with row 0 at the top of the picture, as PIL and numpy see an
image. MONAI's ``PILReader`` transposes 2D images unless told otherwise; this module does not, so
an image, its mask and the PNGs written for them line up without any flip. NIfTI slices are taken
as stored: the first array axis is the row.

Supported: PNG, JPEG, TIFF, BMP, GIF (first frame), NIfTI (``.nii``/``.nii.gz``). Images become
1 channel (grayscale, 16-bit, float) or 3 channels (RGB; palette, RGBA and CMYK are converted to
RGB, alpha is dropped). Masks always become 1 channel: palette masks keep their indices (label
maps), RGB masks are converted to gray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Tuple, TypeVar, Union

import numpy as np
from PIL import Image

from bundle.errors import BundleInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInfo",
    "split_name",
    "image_stem",
    "read_info",
    "read_array",
    "write_png",
]

PathLike = Union[str, Path]
T = TypeVar("T")

IMAGE_SUFFIXES: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".nii", ".nii.gz")
_ONE_CHANNEL_MODES = {"1", "L", "LA", "La", "I", "F"}
_NIFTI = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ImageInfo:
    """Size and channel count of an image file, as the bundle will load it."""

    height: int
    width: int
    channels: int

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width)."""
        return self.height, self.width


def split_name(path: PathLike) -> Tuple[str, str] | None:
    """``(stem, suffix)`` of a supported image file name (``.nii.gz`` counts as one suffix), else ``None``."""
    name = Path(path).name
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def image_stem(path: PathLike) -> str:
    """The file name without its image suffix (``.nii.gz`` as one), else without its last suffix: the name the
    bundle gives what it writes for an image (``<stem>_mask.png``, ``<stem>_overlay.png``)."""
    return (split_name(path) or (Path(path).stem, ""))[0]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _pil_channels(mode: str, as_mask: bool) -> int:
    if as_mask or mode in _ONE_CHANNEL_MODES or mode.startswith("I;"):
        return 1
    return 3


def _array_layout(shape: Tuple[int, ...], path: Path) -> Tuple[int, int, int]:
    """(rows, cols, channels) of a NIfTI/TIFF array shape: (H, W), (H, W, C), (H, W, 1, C) or (C, H, W)."""
    dims = [int(s) for s in shape]
    if len(dims) == 4 and dims[2] == 1:
        dims = [dims[0], dims[1], dims[3]]
    if len(dims) == 3 and dims[2] == 1:
        dims = dims[:2]
    if len(dims) == 2:
        return dims[0], dims[1], 1
    if len(dims) == 3 and dims[2] <= 4:
        return dims[0], dims[1], dims[2]
    if len(dims) == 3 and dims[0] <= 4:
        return dims[1], dims[2], dims[0]
    raise BundleInputError(
        f"{path}: array shape {tuple(shape)} is not a 2D image (this bundle segments 2D images: "
        "rows x columns, optionally with up to 4 channels)."
    )


def _read(
    path: PathLike,
    nifti: Callable[[Any], T],
    pil: Callable[[Path], T],
    tiff: Callable[[Any, Path], T],
) -> T:
    """The one format dispatch: ``nifti(nibabel image)`` for ``.nii``/``.nii.gz``, else ``pil(path)``,
    and ``tiff(tifffile module, path)`` for a TIFF that PIL cannot decode (multi-channel, float).

    Raises:
        BundleInputError: the file is missing or is not a readable image; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleInputError(f"file not found: {path}")
    try:
        if _is_nifti(path):
            import nibabel as nib

            return nifti(nib.load(str(path)))
        try:
            return pil(path)
        except Exception:
            if not _is_tiff(path):
                raise
            import tifffile

            return tiff(tifffile, path)
    except BundleInputError:
        raise
    except Exception as e:
        raise BundleInputError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e


def read_info(path: PathLike, as_mask: bool = False) -> ImageInfo:
    """Size and channel count from the file header (no pixel decoding).

    Raises:
        BundleInputError: the file is missing or not a readable image.
    """

    def from_shape(shape: Tuple[int, ...]) -> ImageInfo:
        rows, cols, channels = _array_layout(shape, Path(path))
        return ImageInfo(rows, cols, 1 if as_mask else channels)

    def from_pil(file: Path) -> ImageInfo:
        with Image.open(file) as im:
            return ImageInfo(im.height, im.width, _pil_channels(im.mode, as_mask))

    def from_tiff(tifffile: Any, file: Path) -> ImageInfo:
        with tifffile.TiffFile(str(file)) as tif:
            return from_shape(tuple(tif.series[0].shape))

    return _read(path, lambda image: from_shape(tuple(image.shape)), from_pil, from_tiff)


def _hwc(array: np.ndarray, path: Path) -> np.ndarray:
    rows, cols, channels = _array_layout(array.shape, path)
    if array.shape[:2] == (rows, cols):
        return array.reshape(rows, cols, channels)
    return np.moveaxis(array.reshape(channels, rows, cols), 0, -1)  # planar (C, H, W)


def read_array(path: PathLike, as_mask: bool = False) -> np.ndarray:
    """Pixels as a (C, H, W) array (C is 1 or 3 for images, 1 for masks), row 0 at the top.

    Raises:
        BundleInputError: the file is missing or cannot be decoded; the message names it.
    """
    hwc = _read(
        path,
        lambda image: _hwc(np.asanyarray(image.dataobj), Path(path)),
        lambda file: _read_pil(file, as_mask),
        lambda tifffile, file: _hwc(tifffile.imread(str(file)), file),
    )
    if as_mask and hwc.shape[2] > 1:
        hwc = hwc[..., :3].mean(axis=2, keepdims=True)  # colour mask: its gray level
    return np.ascontiguousarray(np.moveaxis(hwc, -1, 0))


def _read_pil(path: Path, as_mask: bool) -> np.ndarray:
    with Image.open(path) as im:
        im.seek(0)  # multi-frame GIF/TIFF: the first frame
        mode = im.mode
        if as_mask:
            if mode == "P":
                array = np.asarray(im)  # palette indices are the labels
            elif mode in ("1", "LA", "La") or mode not in _ONE_CHANNEL_MODES and not mode.startswith("I;"):
                array = np.asarray(im.convert("L"))
            else:
                array = np.asarray(im)
        elif mode in ("1", "LA", "La"):
            array = np.asarray(im.convert("L"))
        elif mode in _ONE_CHANNEL_MODES or mode.startswith("I;"):
            array = np.asarray(im)
        else:
            array = np.asarray(im.convert("RGB"))
    if array.ndim == 2:
        array = array[..., None]
    return array


def write_png(path: PathLike, array: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) uint8 array as PNG; the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array.astype(np.uint8))).save(path)
