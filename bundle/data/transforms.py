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

"""MONAI dictionary transforms the configs use where MONAI has none that fits.

- :class:`LoadImage2Dd`: loads any supported 2D file (see :mod:`bundle.data.image_files`) as a
  (C, H, W) ``MetaTensor`` in the picture's own orientation (MONAI's ``PILReader`` would transpose it),
  naming the file when it cannot.
- :class:`NormalizeImaged`: image intensities as the network was trained on them: each image scaled
  to 0..1 by its own min/max, or ImageNet mean/std (encoders started from ImageNet weights).
- :class:`PrepareMaskd`: turns a loaded mask into the label the loss needs: binary 0/1 from any
  0/1 or 0/255 encoding (JPEG noise thresholded away), or a checked multi-class label map.
- :class:`LargestComponentd`: the largest connected component of each predicted class, beside the
  prediction (for the metric that decides on it) or in its place.
- :class:`SavePredictionPNGd`: writes each prediction as a mask PNG at the input's size and an overlay
  PNG (prediction filled yellow, ground truth outlined blue when known) for a person to look at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import KeepLargestConnectedComponent, MapTransform

from bundle.errors import BundleInputError
from bundle.data.image_files import image_stem, read_array, write_png

__all__ = [
    "LoadImage2Dd",
    "NormalizeImaged",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PrepareMaskd",
    "LargestComponentd",
    "SavePredictionPNGd",
    "binarize_mask",
]


def _filename(value: Any) -> str:
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", "<unnamed>"))
    return "<unnamed>"


def _value_range(array: np.ndarray) -> float | None:
    """The largest value of the file's pixel type: 255 (8-bit), 65535 (16-bit, also when PIL reads it as
    32-bit mode "I"); None for floating-point or wider data."""
    if not np.issubdtype(array.dtype, np.integer):
        return None
    if array.dtype.itemsize <= 2:
        return float(np.iinfo(array.dtype).max)
    return 65535.0 if array.size and array.max() <= 65535 and array.min() >= 0 else None


class LoadImage2Dd(MapTransform):
    """Load 2D image (or mask) files named under ``keys`` as float32 (C, H, W) ``MetaTensor``s.

    Row 0 is the top of the picture, as in PIL and numpy, for images and masks alike, so outputs
    written back as PNGs line up with the input. ``meta["filename_or_obj"]`` keeps the path (for
    MetricsSaver and output names); ``meta["value_range"]`` the largest value the file's integer type
    holds (255 for 8-bit, 65535 for 16-bit; ``None`` for floating-point files).

    Args:
        keys: keys holding file paths.
        as_mask: load as a mask: one channel; palette indices kept, colour converted to gray.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(self, keys: KeysCollection, as_mask: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.as_mask = as_mask

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            raw = read_array(path, as_mask=self.as_mask)
            value_range = _value_range(raw)
            array = raw.astype(np.float32)
            meta = {
                "filename_or_obj": path,
                "spatial_shape": np.asarray(array.shape[1:]),
                "original_channel_dim": 0,
                "value_range": value_range,
            }
            d[key] = MetaTensor(torch.from_numpy(array), affine=torch.eye(3, dtype=torch.float64), meta=meta)
        return d


# a mask with up to this many distinct whole values and many pixels between its extremes is a label map
LABEL_MAP_MAX_VALUES = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NormalizeImaged(MapTransform):
    """Image intensities for the network, one setting shared by training, evaluation and inference.

    Args:
        keys: image keys (``(C, H, W)``, from :class:`LoadImage2Dd`).
        intensity: ``"minmax"``: each image scaled to 0..1 by its own minimum and maximum (from scratch);
            ``"imagenet"``: scaled to 0..1 by its type's range (``meta["value_range"]``, 255 for 8-bit;
            floating-point files by their min/max), then ImageNet mean and std per RGB channel (their
            averages for a single channel), as ImageNet-pretrained encoders expect.
    """

    def __init__(self, keys: KeysCollection, intensity: str = "minmax", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if intensity not in ("minmax", "imagenet"):
            raise BundleInputError(f"--intensity {intensity!r}: give minmax or imagenet.")
        self.intensity = intensity

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            value_range = image.meta.get("value_range") if isinstance(image, MetaTensor) else None
            if self.intensity == "imagenet" and value_range:
                image = image / value_range
            else:
                low, high = image.min(), image.max()
                image = (image - low) / (high - low) if high > low else image - low
            if self.intensity == "imagenet":
                c = image.shape[0]
                mean = torch.tensor(IMAGENET_MEAN if c == 3 else [sum(IMAGENET_MEAN) / 3] * c, dtype=image.dtype)
                std = torch.tensor(IMAGENET_STD if c == 3 else [sum(IMAGENET_STD) / 3] * c, dtype=image.dtype)
                image = (image - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
            d[key] = image
        return d


def binarize_mask(mask: np.ndarray, name: str | None = None) -> np.ndarray:
    """Foreground of a binary mask, whatever its encoding: 0/1, 0/255, 0/65535, or lossy JPEG.

    Two distinct values: the larger is foreground. Otherwise (JPEG noise, soft edges) threshold
    at half the range: 0.5 for masks up to 1, 127.5 for 8-bit, half the maximum above that.

    Raises:
        BundleInputError: the mask is a label map (a few distinct values, many pixels between the
            extremes: classes, not a binary mask with soft edges); ``name`` names it in the message.
    """
    values, counts = np.unique(mask, return_counts=True)
    if 2 < values.size <= LABEL_MAP_MAX_VALUES:
        low, high = values[0], values[-1]
        middle = counts[(values > low + 0.25 * (high - low)) & (values < high - 0.25 * (high - low))].sum()
        if middle > 0.02 * mask.size and np.all(values == np.round(values)):
            raise BundleInputError(
                f"mask {name or '<unnamed>'} has values {_shown(values)}: a label map of {values.size} classes, but "
                f"out_channels=1 trains a binary mask; give --out_channels {int(high) + 1} "
                f"(label values 0..{int(high)}), or masks with two values (0/1 or 0/255)."
            )
    if values.size == 2:
        return mask > values[0]
    peak = float(values.max()) if values.size else 0.0
    threshold = 0.5 if peak <= 1 else 127.5 if peak <= 255 else peak / 2
    return mask > threshold


def _shown(values: np.ndarray, limit: int = 10) -> str:
    """The first ``limit`` values for a message, whole numbers without a decimal point."""
    shown = [int(v) if float(v).is_integer() else float(v) for v in values[:limit]]
    return str(shown)[:-1] + (", ...]" if values.size > limit else "]")


class PrepareMaskd(MapTransform):
    """Make the training label from a loaded mask.

    ``out_channels == 1`` (binary, sigmoid output): any 0/1 or 0/255 encoding becomes 0/1
    (:func:`binarize_mask`). ``out_channels > 1`` (classes, softmax output): the mask must be a
    label map with integer values ``0 .. out_channels - 1``; anything else is an error naming the file.
    The result is uint8 (small to cache); cast to float after the random crops.
    """

    def __init__(self, keys: KeysCollection, out_channels: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if out_channels < 1:
            raise BundleInputError(f"out_channels must be 1 (binary) or the number of classes, got {out_channels}.")
        self.out_channels = out_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            array = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            if self.out_channels == 1:
                label = binarize_mask(array, _filename(mask))
            else:
                values = np.unique(array)
                bad = values[(values != np.round(values)) | (values < 0) | (values >= self.out_channels)]
                if bad.size:
                    raise BundleInputError(
                        f"mask {_filename(mask)} has values {_shown(values)} but out_channels={self.out_channels} "
                        f"needs label values 0..{self.out_channels - 1} (binary masks need --out_channels 1)."
                    )
                label = array
            out = torch.from_numpy(np.ascontiguousarray(label.astype(np.uint8)))
            d[key] = MetaTensor(out, meta=dict(mask.meta)) if isinstance(mask, MetaTensor) else out
        return d


class LargestComponentd(MapTransform):
    """Keep only the largest connected component of each foreground class of a discrete prediction.

    Writes it to ``<key>_largest`` (so that a metric can compare it with the prediction) and, when
    ``apply``, also in place of the prediction. Binary (one channel 0/1) and one-hot predictions.

    Args:
        keys: prediction keys (after thresholding or argmax + one-hot).
        apply: replace the prediction by its largest components.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(self, keys: KeysCollection, apply: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.apply = apply

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            onehot = pred.shape[0] > 1
            largest = KeepLargestConnectedComponent(
                applied_labels=list(range(1, pred.shape[0])) if onehot else [1], is_onehot=onehot, independent=True
            )(
                pred.clone()
            )  # MONAI's transform edits its input in place
            d[f"{key}_largest"] = largest
            if self.apply:
                d[key] = largest
        return d


# overlay colours per class (class 0, the background, is not drawn)
# (yellow first: it stands out on the reds and pinks of endoscopy and fundus images)
_PALETTE = np.array(
    [[0, 0, 0], [255, 230, 0], [255, 0, 255], [0, 230, 230], [255, 130, 0], [120, 255, 0], [150, 80, 255]],
    dtype=np.float32,
)
_TRUTH_OUTLINE = (0, 80, 255)


def _label_map(tensor: Any) -> np.ndarray:
    """(H, W) integer labels from a (C, H, W) prediction: binary 0/1 for C == 1, argmax of one-hot otherwise."""
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    if array.shape[0] == 1:
        return (array[0] > 0.5).astype(np.uint8)
    return np.argmax(array, axis=0).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, mode="constant")
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _display_rgb(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 of a (C, H, W) image, stretched to 0..255."""
    array = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    array = array[:3] if array.shape[0] >= 3 else np.repeat(array[:1], 3, axis=0)
    low, high = float(array.min()), float(array.max())
    array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.moveaxis(array * 255.0, 0, -1)


class SavePredictionPNGd(MapTransform):
    """Write ``<name>_mask.png`` and ``<name>_overlay.png`` for each prediction.

    The mask PNG has the prediction's (= the input's) height and width: 0/255 for a binary model,
    the class index per pixel for a multi-class one. The overlay shows the image with the
    prediction filled in yellow (classes in colours) and, when a label is given, the ground truth's
    outline in blue.

    Args:
        keys: the prediction key (after activation and thresholding/argmax).
        output_dir: folder for the PNGs (created).
        image_key: the input image, for the overlay and for the default name.
        label_key: optional ground-truth key (binary 0/1 or one-hot) to outline.
        name_key: optional key holding the output name; default: the input file's stem.
        alpha: opacity of the prediction fill.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        image_key: str = "image",
        label_key: str | None = None,
        name_key: str | None = "name",
        alpha: float = 0.45,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key, self.label_key, self.name_key = image_key, label_key, name_key
        self.alpha = alpha

    def _name(self, d: Mapping[Hashable, Any]) -> str:
        if self.name_key and isinstance(d.get(self.name_key), str):
            return d[self.name_key]
        return image_stem(_filename(d[self.image_key]))

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        name = self._name(d)
        image = _display_rgb(d[self.image_key])
        for key in self.key_iterator(d):
            labels = _label_map(d[key])
            binary = d[key].shape[0] == 1
            write_png(self.output_dir / f"{name}_mask.png", labels * 255 if binary else labels)
            colours = _PALETTE[np.minimum(labels, len(_PALETTE) - 1)]
            fill = (labels > 0)[..., None]
            overlay = np.where(fill, (1 - self.alpha) * image + self.alpha * colours, image)  # a new array
            edge = _outline(labels > 0)
            overlay[edge] = colours[edge]
            if self.label_key and self.label_key in d:
                overlay[_outline(_label_map(d[self.label_key]) > 0)] = _TRUTH_OUTLINE
            write_png(self.output_dir / f"{name}_overlay.png", np.clip(overlay, 0, 255))
        return d
