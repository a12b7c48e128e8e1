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

"""The inferer every workflow uses: whole images at a fixed scale, or native-resolution patches.

:class:`SegmentationInferer` is one MONAI ``Inferer`` for both ways a plan can train
(:mod:`bundle.workflows.planning`):

- ``image_size`` given: the image is resized to it, the network runs once, and the logits are
  resized back (bilinear) to the image's own height and width, so metrics, masks and overlays are
  at native resolution while the network sees the scale it was trained at;
- ``image_size`` ``None``: MONAI's ``SlidingWindowInferer`` with ``roi_size`` windows at native
  resolution (thin structures such as retinal vessels, which resizing would erase).

``flip_tta`` averages the logits over the image and its flips (test-time augmentation). Whole images are
resized once and the flips run as one batch at ``image_size`` (a network call on three small images costs
little more than on one); sliding windows run once per flip.

:class:`AutocastInferer` runs any inferer under bf16 autocast on the CPU (``--amp true`` on a CPU;
MONAI's engines do mixed precision on CUDA only).

The network sees a plain tensor: MONAI's ``MetaTensor`` routes every operation through Python
metadata bookkeeping, which made a ``tiny`` network's forward on a Kvasir image several times slower
than on the same data as a tensor. The logits get the input's metadata back.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer

from bundle.errors import BundleInputError, flag

__all__ = ["AutocastInferer", "SegmentationInferer", "check_cpu_bf16", "cpu_has_native_bf16"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, through oneDNN): elsewhere bf16
    autocast is emulated and slower than fp32."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_cpu_bf16() -> None:
    """Refuse ``--amp true`` on a CPU without native bf16, in one line naming the setting."""
    if not cpu_has_native_bf16():
        raise BundleInputError(
            "--amp true on the CPU runs bf16 autocast, but this CPU has no native bf16 (AVX512-BF16 or AMX): "
            "it would be slower than fp32. Leave amp false here."
        )


class AutocastInferer(Inferer):
    """Another inferer (MONAI's ``SimpleInferer`` by default) run under ``torch.autocast`` with bf16 on the
    CPU: weights, gradients and the optimizer stay fp32, the network's matrix products and convolutions run
    in bf16, and its logits come back as fp32 (one tensor or a list of them), so that the inferer's blending
    and resizing, the loss and the metrics run in fp32.

    MONAI's engines do mixed precision on CUDA only (``amp``), so the bundle's configs use this for
    ``--amp true`` on a CPU. On a CPU without native bf16 it refuses, naming the setting: there bf16 would
    be emulated, slower than fp32.

    Args:
        inferer: the inferer to run; ``None``: ``SimpleInferer()``.
        enabled: ``False`` runs ``inferer`` as it is.
    """

    def __init__(self, inferer: Inferer | None = None, enabled: bool = True) -> None:
        super().__init__()
        enabled = flag("amp", enabled)
        if enabled:
            check_cpu_bf16()
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.enabled = enabled

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)

        def mixed_precision(x: torch.Tensor, *a: Any, **k: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = network(x, *a, **k)
            # the inferer's blending, resizing and averaging, the loss and the metrics then run in fp32
            if isinstance(outputs, (list, tuple)):
                return type(outputs)(o.float() for o in outputs)
            return outputs.float()

        return self.inferer(inputs, mixed_precision, *args, **kwargs)


class SegmentationInferer(Inferer):
    """Logits at the input's own size, from whole images at ``image_size`` or sliding ``roi_size`` windows.

    Args:
        image_size: (height, width) the network sees whole images at; ``None``: sliding windows.
        roi_size: sliding-window size when ``image_size`` is ``None``.
        sw_batch_size: windows per network call.
        overlap: sliding-window overlap.
        flip_tta: also run the flipped image (each spatial axis) and average the logits.
    """

    def __init__(
        self,
        image_size: Sequence[int] | None = None,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        flip_tta: bool = False,
    ) -> None:
        super().__init__()
        if image_size is None and roi_size is None:
            raise ValueError("SegmentationInferer needs image_size (whole images) or roi_size (sliding windows).")
        self.image_size = None if image_size is None else [int(s) for s in image_size]
        self.window = (
            None
            if self.image_size is not None
            else SlidingWindowInferer(
                roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian"
            )
        )
        self.flip_tta = flip_tta

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if list(x.shape[2:]) == list(size):
            return x
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        shrink = x.ndim == 4 and any(s < t for s, t in zip(size, x.shape[2:]))
        # antialiased when shrinking a 2D image (PyTorch has it in 2D only)
        return F.interpolate(x, size=list(size), mode=mode, align_corners=False, antialias=shrink)

    def _flipped_dims(self, ndim: int) -> List[List[int]]:
        return [[d] for d in range(2, ndim)] if self.flip_tta else []

    def views(self, spatial_dims: int = 2) -> int:
        """Views of each image the network sees: 1, or with ``flip_tta`` also one flip per spatial axis."""
        return 1 + len(self._flipped_dims(spatial_dims + 2))

    def _whole_image(self, image: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        resized = self._resize(image, self.image_size)
        flips = self._flipped_dims(image.ndim)
        # the flips of a resized image are the resized flips: resize once, one network call for all
        views = torch.cat([resized] + [resized.flip(dims) for dims in flips]) if flips else resized
        logits = network(views, *args, **kwargs)
        return self._resize(self._unflipped_mean(logits.split(image.shape[0]), flips), image.shape[2:])

    def _windows(self, image: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        flips = self._flipped_dims(image.ndim)
        views = [image] + [image.flip(dims) for dims in flips]
        return self._unflipped_mean([self.window(view, network, *args, **kwargs) for view in views], flips)

    @staticmethod
    def _unflipped_mean(logits: Sequence[torch.Tensor], flips: List[List[int]]) -> torch.Tensor:
        """The mean of the image's logits (first) and its flips' logits, each flipped back."""
        if len(logits) == 1:
            return logits[0]
        total = logits[0]
        for view, dims in zip(logits[1:], flips):
            total = total + view.flip(dims)
        return total / len(logits)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        image = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        infer = self._windows if self.window is not None else self._whole_image
        logits = infer(image, network, *args, **kwargs)
        if isinstance(inputs, MetaTensor):  # as a network called on the MetaTensor would return it
            return MetaTensor(logits).copy_meta_from(inputs)
        return logits
