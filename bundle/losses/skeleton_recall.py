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

"""Skeleton recall (Kirchhoff et al., "Skeleton Recall Loss for Connectivity Conserving and Resource
Efficient Segmentation of Thin Tubular Structures", ECCV 2024): the soft recall of the prediction on the
target's skeleton, widened into a tube of up to two pixels either side and kept inside the target (as the
authors' nnU-Net code does). A thin vessel weighs as much per unit of length as a wide
one, where Dice weighs it by its area; no gradient flows through the skeleton, so it costs a few pooling ops.

The paper skeletonises the masks in the data loader (scikit-image, topology-preserving); here the target's
morphological skeleton (Lantuejoul's: the union over k of each k-fold erosion minus its opening, 3x3 square
element) is computed in the loss from the batch, so no transform or extra key is needed and it follows every
crop and augmentation. It may break a line where the thinning would not; the tube bridges that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks import one_hot

__all__ = ["DiceCESkeletonRecallLoss", "SkeletonRecallLoss", "tubed_skeleton"]


def _max_pool(x: torch.Tensor, kernel: tuple) -> torch.Tensor:
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, kernel, stride=1, padding=tuple(k // 2 for k in kernel))


def _erode(x: torch.Tensor) -> torch.Tensor:
    # the image's border does not erode (the pooling pads with -inf): an object cut by a patch edge keeps its width
    return -_max_pool(-x, (3,) * (x.ndim - 2))


def tubed_skeleton(mask: torch.Tensor) -> torch.Tensor:
    """The morphological skeleton of a binary ``mask`` (B, C, *spatial; 2D or 3D), dilated twice by the
    one-pixel cross (a diamond of radius 2) and kept inside ``mask``, as 0/1 in ``mask``'s dtype."""
    if mask.ndim not in (4, 5):
        raise ValueError(f"tubed_skeleton expects (B, C, H, W) or (B, C, D, H, W), got shape {tuple(mask.shape)}.")
    eroded = (mask > 0.5).to(torch.float32)
    skeleton = torch.zeros_like(eroded)
    while eroded.any():  # k-fold erosions until nothing is left; a vessel of width w takes about w / 2
        smaller = _erode(eroded)
        opened = _max_pool(smaller, (3,) * (eroded.ndim - 2))
        skeleton = torch.maximum(skeleton, eroded - opened)
        eroded = smaller
    spatial = eroded.ndim - 2
    for _ in range(2):
        lines = [_max_pool(skeleton, tuple(3 if d == i else 1 for d in range(spatial))) for i in range(spatial)]
        skeleton = torch.stack(lines).amax(0)
    return (skeleton * (mask > 0.5)).to(mask.dtype)


class SkeletonRecallLoss(torch.nn.Module):
    """``1 - sum(p * S) / sum(S)`` over the batch, per foreground class, averaged over the classes: ``p`` the
    predicted probability, ``S`` the target's tubed skeleton (:func:`tubed_skeleton`). A batch with no
    foreground of a class adds 0 for it.

    Args:
        sigmoid: ``p = sigmoid(input)``; every channel is a foreground class (binary masks: one channel).
        softmax: ``p = softmax(input)`` over the channels; channel 0 is the background and is left out.
        to_onehot_y: the target holds class indices (B, 1, ...) to one-hot into ``input``'s channels.
        smooth: added to both sums.
    """

    def __init__(self, sigmoid: bool = False, softmax: bool = False, to_onehot_y: bool = False, smooth: float = 1.0):
        super().__init__()
        if sigmoid == softmax:
            raise ValueError("SkeletonRecallLoss needs exactly one of sigmoid=True or softmax=True.")
        self.sigmoid, self.to_onehot_y, self.smooth = sigmoid, to_onehot_y, smooth

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.to_onehot_y:
            target = one_hot(target, num_classes=input.shape[1])
        if target.shape != input.shape:
            raise ValueError(f"SkeletonRecallLoss: target shape {tuple(target.shape)} != input shape {tuple(input.shape)}.")
        probs = torch.sigmoid(input) if self.sigmoid else torch.softmax(input, 1)[:, 1:]
        target = target if self.sigmoid else target[:, 1:]
        with torch.no_grad():
            skeleton = tubed_skeleton(target).to(probs.dtype)
        dims = [0] + list(range(2, input.ndim))
        recall = ((probs * skeleton).sum(dims) + self.smooth) / (skeleton.sum(dims) + self.smooth)
        return 1.0 - recall.mean()


class DiceCESkeletonRecallLoss(DiceCELoss):
    """MONAI's :class:`~monai.losses.DiceCELoss` plus ``lambda_skeleton_recall`` times :class:`SkeletonRecallLoss`
    (the paper's weight: 1). With 0 it is ``DiceCELoss`` exactly, at no extra cost.

    Args:
        lambda_skeleton_recall: the weight of the skeleton recall term.
        kwargs: ``DiceCELoss``'s arguments; ``sigmoid``, ``softmax`` and ``to_onehot_y`` also set the recall's.
    """

    def __init__(self, lambda_skeleton_recall: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if lambda_skeleton_recall < 0:
            raise ValueError(f"lambda_skeleton_recall must be 0 or more, got {lambda_skeleton_recall}.")
        self.lambda_skeleton_recall = float(lambda_skeleton_recall)
        self.skeleton_recall = (
            SkeletonRecallLoss(kwargs.get("sigmoid", False), kwargs.get("softmax", False), kwargs.get("to_onehot_y", False))
            if self.lambda_skeleton_recall
            else None
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(input, target)
        if self.skeleton_recall is None:
            return loss
        return loss + self.lambda_skeleton_recall * self.skeleton_recall(input, target)
