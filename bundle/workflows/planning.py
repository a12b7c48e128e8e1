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

"""A training plan made from the data, once, when a training run starts.

The idea is nnU-Net's (plan the scale and patch size from the data's fingerprint); the rules are
ours and short enough to state:

1. Fingerprint: image sizes and channels (file headers, every training image), class count, and from
   a seeded sample of training masks the foreground fraction, the objects' size, and the *resize
   ceiling* at each candidate scale: the Dice a perfect prediction keeps after the mask is resized
   to that scale and back to native size.
2. Scale: whole images resized to ``image_size`` when some candidate size (a multiple of 64, no
   larger than the median image) keeps a resize ceiling of at least ``MIN_RESIZE_DICE``; otherwise
   (thin structures, e.g. retinal vessels) native-resolution patches of ``roi_size``.
3. Deep supervision: the authors' weights (main 0.6, auxiliary heads 0.2 and 0.2) on whole images; the
   main output only where the plan chose native patches for thin structures, which the auxiliary
   heads (1/32 and 1/4 of the input) cannot draw (on DRIVE their losses kept DS-TransUNet from
   predicting any vessel for longer and cost it 0.06 validation Dice after 24 epochs; docs/recipe.md).
4. Time: one training step is timed on the run's device (a copy of the network, random data);
   ``max_epochs`` is what fits ``time_budget_minutes`` (validation included), and among the
   candidate sizes the plan takes the largest that still leaves ``MIN_EPOCHS`` epochs (from scratch,
   epochs buy more than resolution once the resize ceiling is kept). Whole images smaller than 128 px
   are batched up to the pixels of ``WHOLE_IMAGE_BATCH`` images of 128 px, so that a step is not
   mostly per-layer overhead.
5. Validation every ``val_interval`` epochs, so that validating takes about ``VALIDATION_SHARE`` of the
   training time, and at least ``MIN_VALIDATIONS`` times a run (the best model is chosen from them).
6. Flip test-time augmentation (``flip_tta``) in validation, evaluation and inference on whole images,
   where the image and its flips run as one batch at the network's scale; not on native patches, where
   every sliding window would run three times.
7. Weights kept in ``model.pt`` (``keep_weights``): those of the best validation Dice, unless the
   validation split has fewer than ``MIN_VALIDATION_TO_CHOOSE`` images; then the final weights (the end
   of the cosine decay), as nnU-Net keeps. On DRIVE's 2 validation images the best-validation pick was
   worse on the 20 official test images than the final weights in 3 runs of 3 (docs/recipe.md).

Every setting given on the command line (anything but ``auto``) wins over the plan and is recorded
as given. The plan is written to ``output_dir/plan.json`` and logged in plain words; a resumed run
reads it back instead of planning again. The demo data get fixed small settings (no timing).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss

from bundle.errors import BundleInputError, flag
from bundle.data.image_files import read_array, read_info
from bundle.data.transforms import binarize_mask
from bundle.workflows.inferers import AutocastInferer, SegmentationInferer

__all__ = ["TrainingPlan", "plan_training", "read_plan", "update_plan", "fingerprint", "PLAN_FILE"]

PLAN_FILE = "plan.json"
AUTO = "auto"
CANDIDATE_SIZES = (384, 320, 256, 192, 128, 64)  # whole-image sides, multiples of DS-TransUNet's 64
MIN_RESIZE_DICE = 0.95  # below this, resizing alone would cost more Dice than a good model loses
# the budget buys a smaller scale before it buys fewer than this many epochs (from scratch on Kvasir-SEG:
# 73 epochs at 64 px, test Dice 0.790, against 44 at 128 px, 0.757, in the same hour; docs/recipe.md)
MIN_EPOCHS = 100
MASK_SAMPLE = 64  # masks read for the fingerprint
PATCH_SIDE = 128  # native-resolution patch side (2 x 2 tokens at the coarse branch's last stage)
WHOLE_IMAGE_BATCH = 8
# small whole images are batched up to the pixels of 8 at 128 px: a step of 8 images of 64 px is mostly
# per-layer overhead (0.061 s an image on the 2-core CPU, 0.035 s in a step of 32)
STEP_PIXELS = WHOLE_IMAGE_BATCH * 128 * 128
PATCH_BATCH, PATCH_CROPS = 4, 4
# validating Kvasir-SEG's 100 images every 2 epochs took 14% of an hour's training (8.7 minutes, 2026-12-02)
VALIDATION_SHARE = 0.05
MIN_VALIDATIONS = 10
# fewer validation images than this: the best validation Dice picks noise, so model.pt keeps the final weights
MIN_VALIDATION_TO_CHOOSE = 10
KEEP_WEIGHTS = ("best", "final")
DEMO = dict(
    image_size=None, roi_size=[64, 64], batch_size=4, crops_per_image=4, max_epochs=30, flip_tta=False, val_interval=2,
    keep_weights="best",  # the demo exercises the best-model tracking (its split has 1 validation image)
)
PLANNED = (
    "image_size", "roi_size", "batch_size", "crops_per_image", "max_epochs", "intensity", "deep_supervision_weights",
    "flip_tta", "val_interval", "keep_weights",
)
AUTHORS_DEEP_SUPERVISION = [0.6, 0.2, 0.2]  # main, deepest auxiliary, quarter-resolution auxiliary
MAIN_OUTPUT_ONLY = [1.0, 0.0, 0.0]
# image intensities: each image scaled to 0..1 by its own min/max, or ImageNet mean/std (pretrained encoders)
INTENSITIES = ("minmax", "imagenet")

logger = logging.getLogger(__name__)


@dataclass
class TrainingPlan:
    """What a training run uses; the configs read its fields (``$@plan.image_size``)."""

    image_size: List[int] | None
    roi_size: List[int]
    batch_size: int
    crops_per_image: int
    max_epochs: int
    intensity: str = "minmax"
    deep_supervision_weights: List[float] = field(default_factory=lambda: list(AUTHORS_DEEP_SUPERVISION))
    flip_tta: bool = False  # validation, evaluation and inference average the logits over the image and its flips
    val_interval: int = 2  # validate every N epochs (2: the fixed setting of runs planned before it was planned)
    keep_weights: str = "best"  # model.pt: the best validation Dice's weights, or the final ones
    given: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)  # what a resumed run must match (preset, channels, network)
    time_budget_minutes: float | None = None
    fingerprint: Dict[str, Any] = field(default_factory=dict)
    timing: Dict[str, Any] = field(default_factory=dict)
    reasons: List[str] = field(default_factory=list)

    @property
    def inference_size(self) -> List[int]:
        """The size the network sees at once in inference: the whole-image size, or the window."""
        return list(self.image_size or self.roi_size)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def _size_setting(name: str, value: Any, allow_none: bool) -> List[int] | None:
    if isinstance(value, str) and value.strip().lower() in ("null", "none"):
        value = None  # the command line gives the word, not YAML's null
    if value is None and allow_none:
        return None
    if isinstance(value, int) and value > 0:
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return [int(v) for v in value]
    none = ", null (native-resolution patches)" if allow_none else ""
    raise BundleInputError(f"--{name} {value!r}: give auto, [height, width] in pixels{none}.")


def _flag_setting(name: str, value: Any) -> bool:
    try:
        return flag(name, value)
    except BundleInputError:
        raise BundleInputError(f"--{name} {value!r}: give auto, true or false.") from None


def _count_setting(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleInputError(f"--{name} {value!r}: give auto or a whole number of at least 1.")
    return value


def _weights_setting(name: str, value: Any) -> List[float]:
    if not (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in value)
    ):
        raise BundleInputError(f"--{name} {value!r}: give auto or a list of weights >= 0, e.g. [0.6, 0.2, 0.2].")
    return [float(w) for w in value]


def _mask_foreground(path: str, out_channels: int) -> np.ndarray:
    mask = read_array(path, as_mask=True)[0]
    return binarize_mask(mask, path) if out_channels == 1 else mask > 0


def _resize_dice(mask: np.ndarray, size: Sequence[int]) -> float:
    """Dice between ``mask`` and the mask resized to ``size`` (area) and back (bilinear, threshold 0.5)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    small = F.interpolate(t, size=list(size), mode="area")
    back = F.interpolate(small, size=list(mask.shape), mode="bilinear", align_corners=False)[0, 0] > 0.5
    truth = torch.from_numpy(mask)
    total = int(truth.sum()) + int(back.sum())
    return 1.0 if total == 0 else 2.0 * int((truth & back).sum()) / total


def fingerprint(
    pairs: Sequence[Mapping[str, str]], out_channels: int = 1, sizes: Sequence[int] = CANDIDATE_SIZES, seed: int = 0
) -> Dict[str, Any]:
    """Sizes, channels and classes of the training data, and foreground statistics and resize
    ceilings (Dice kept by resizing a mask to ``s x s`` and back, for each ``s`` in ``sizes``)
    from a seeded sample of up to ``MASK_SAMPLE`` masks."""
    from scipy import ndimage

    infos = [read_info(p["image"]) for p in pairs]
    heights, widths = [i.height for i in infos], [i.width for i in infos]
    sample = random.Random(seed).sample(list(pairs), min(MASK_SAMPLE, len(pairs)))
    fractions, widths_px, objects = [], [], []
    ceilings: Dict[int, List[float]] = {s: [] for s in sizes}
    for pair in sample:
        fg = _mask_foreground(pair["label"], out_channels)
        fractions.append(float(fg.mean()))
        if not fg.any():
            continue
        objects.append(ndimage.label(fg)[1])
        # structure width: 4 x the mean distance of a foreground pixel to the background
        # (exactly w for a band of width w; two thirds of the diameter for a disk)
        widths_px.append(float(4.0 * ndimage.distance_transform_edt(fg)[fg].mean()))
        for s in sizes:
            ceilings[s].append(_resize_dice(fg, (s, s)))
    if sample and not any(f > 0 for f in fractions):
        every = "every mask" if len(sample) == len(pairs) else f"all {len(sample)} masks sampled from {len(pairs)}"
        raise BundleInputError(
            f"{every} of the training set is empty (no foreground pixel), e.g. {sample[0]['label']}: "
            "nothing to learn; check --mask_pattern and the masks' encoding (foreground must be the larger value)."
        )
    return {
        "training_images": len(pairs),
        "height": {"min": min(heights), "median": int(statistics.median(heights)), "max": max(heights)},
        "width": {"min": min(widths), "median": int(statistics.median(widths)), "max": max(widths)},
        "channels": sorted({i.channels for i in infos}),
        "classes": out_channels if out_channels > 1 else 1,
        "masks_sampled": len(sample),
        "empty_masks_in_sample": sum(f == 0 for f in fractions),
        "foreground_fraction": round(statistics.median(fractions), 4) if fractions else 0.0,
        "objects_per_image": round(statistics.median(objects), 1) if objects else 0,
        "structure_width_px": round(statistics.median(widths_px), 1) if widths_px else 0.0,
        "resize_dice": {str(s): round(statistics.mean(v), 4) for s, v in ceilings.items() if v},
    }


def _optimizer_like(optimizer: torch.optim.Optimizer | None, params: Any) -> torch.optim.Optimizer:
    """An optimizer of the training run's class and settings (AdamW when none is given) over ``params``."""
    if optimizer is None:
        return torch.optim.AdamW(params, lr=1.0e-4)
    accepted = inspect.signature(type(optimizer)).parameters
    return type(optimizer)(params, **{k: v for k, v in optimizer.defaults.items() if k in accepted})


def _mixed_precision(device: torch.device, amp: bool, inferer: Any = None) -> tuple:
    """The run's mixed precision for the timed steps, as the run applies it: on CUDA MONAI's engines
    autocast the inferer call (fp16); on the CPU the configs wrap the inferer in ``AutocastInferer``
    (bf16). Returns the context to run the inferer in and the inferer (``inferer``, default MONAI's
    ``SimpleInferer``)."""
    cuda = device.type == "cuda"
    context = torch.autocast("cuda", dtype=torch.float16, enabled=amp and cuda)
    return context, AutocastInferer(inferer, enabled=amp and not cuda)


def _median_seconds(run: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` calls of ``run`` after one warm-up call (CUDA synchronised)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _time_step(
    model: torch.nn.Module,
    loss: Callable,
    batch: int,
    in_channels: int,
    size: Sequence[int],
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    max_grad_norm: float = 0.0,
    amp: bool = False,
) -> float:
    """Seconds per training step (forward, under mixed precision when ``amp``; loss, backward, gradient
    clipping when ``max_grad_norm``, optimizer step), median of four after a warm-up, on ``model`` (the
    plan's copy of the run's network) with random data and an optimizer like the run's (``optimizer``);
    the run's network, optimizer and random state are untouched."""
    model.train()
    optimizer = _optimizer_like(optimizer, model.parameters())
    loss = DeepSupervisionLoss(loss, weights=AUTHORS_DEEP_SUPERVISION)  # takes one output or a list of them
    out_channels = getattr(model, "out_channels", 1)

    context, forward = _mixed_precision(device, amp)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with context:
            value = loss(forward(x, model), y)
        value.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.rand(batch, in_channels, *size, device=device)
        y = (torch.rand(batch, 1, *size, device=device) > 0.5).float()
        if out_channels > 1:
            y = torch.randint(0, out_channels, (batch, 1, *size), device=device).float()
        seconds = _median_seconds(step, 4, device)
    optimizer.zero_grad(set_to_none=True)  # the copy is timed again at the next size
    return seconds


def _time_sample_transforms(transforms: Sequence[Callable], in_channels: int, size: Sequence[int]) -> float:
    """Seconds per training sample of the random transforms applied after the cache (median of 5 after a
    warm-up), on copies of ``transforms`` and a random sample of ``size``: the run's transforms, and so
    its augmentation sequence, are untouched."""
    if not transforms:
        return 0.0
    from monai.transforms import Compose

    compose = Compose(copy.deepcopy(list(transforms)))
    with torch.random.fork_rng(devices=[]):  # the run's random state is untouched
        sample = {"image": torch.rand(in_channels, *size), "label": (torch.rand(1, *size) > 0.5).float()}
    return _median_seconds(lambda: compose(dict(sample)), 5, torch.device("cpu"))


def _time_validation_image(
    model: torch.nn.Module,
    in_channels: int,
    size: Sequence[int],
    native_hw: Sequence[int],
    device: torch.device,
    flip_tta: bool = False,
    out_channels: int = 1,
    amp: bool = False,
) -> float:
    """Seconds to validate one whole image of ``native_hw`` at ``size`` on ``model`` (the plan's copy of the
    run's network): the run's inferer (resized, the forward, with its flips when ``flip_tta``, the logits
    resized back) and the mask (threshold, or argmax over ``out_channels`` classes), under mixed precision
    when ``amp``; median of two after a warm-up."""
    model.eval()
    context, inferer = _mixed_precision(device, amp, SegmentationInferer(image_size=size, flip_tta=flip_tta))

    def validate() -> None:
        with context:
            logits = inferer(x, model).float()  # then what prediction_postprocessing does
        (torch.sigmoid(logits) > 0.5).float() if out_channels == 1 else torch.softmax(logits, 1).argmax(1)

    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.rand(1, in_channels, *native_hw, device=device)
        seconds = _median_seconds(validate, 2, device)
    return seconds


def _windows(image_hw: Sequence[int], roi: Sequence[int], overlap: float = 0.25) -> int:
    return math.prod(
        max(1, math.ceil((s - r) / (r * (1 - overlap))) + 1) if s > r else 1 for s, r in zip(image_hw, roi)
    )


def read_plan(output_dir: str | os.PathLike) -> Dict[str, Any]:
    """The plan a training run wrote to ``output_dir/plan.json`` ({} when there is none), for
    evaluation and inference to use the scale the model was trained at."""
    path = Path(output_dir) / PLAN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleInputError(f"cannot read the training plan {path}: {e}") from e


@dataclass
class RecordedPlan:
    """What a trained model expects, for evaluation and inference: the scale, intensity, flip test-time
    augmentation and largest-component choice of the training run's ``plan.json``, and the network it trained
    (class, and whether from ImageNet weights); a setting given (not ``auto``) wins. The configs read it as
    training reads its :class:`TrainingPlan` (``$@plan.image_size``)."""

    image_size: List[int] | None
    roi_size: List[int]
    intensity: str = "minmax"
    keep_largest: bool = False
    flip_tta: bool = False
    network: str | None = None  # the class the run trained (None: no plan, e.g. an exported bundle)
    pretrained: bool = False  # trained from ImageNet weights (DSTransUNet then has their linear patch embedding)

    @classmethod
    def read(
        cls,
        output_dir: str | os.PathLike,
        image_size: Any = AUTO,
        roi_size: Any = AUTO,
        intensity: Any = AUTO,
        keep_largest: Any = AUTO,
        flip_tta: Any = AUTO,
    ) -> "RecordedPlan":
        """The plan of the run in ``output_dir`` (a run without one, or an exported bundle, gives its settings:
        sliding 64 px windows and min/max intensities unless they are given)."""
        plan = read_plan(output_dir)
        network, pretrained = trained_network(plan)
        if _is_auto(intensity):
            intensity = plan.get("intensity", "minmax")
        if intensity not in INTENSITIES:
            raise BundleInputError(f"--intensity {intensity!r}: give auto or one of {', '.join(INTENSITIES)}.")
        keep_largest = (
            plan.get("keep_largest", False) if _is_auto(keep_largest) else _flag_setting("keep_largest", keep_largest)
        )
        flip_tta = plan.get("flip_tta", False) if _is_auto(flip_tta) else _flag_setting("flip_tta", flip_tta)
        return cls(
            image_size=(
                plan.get("image_size") if _is_auto(image_size) else _size_setting("image_size", image_size, True)
            ),
            roi_size=(
                (plan.get("roi_size") or [64, 64]) if _is_auto(roi_size) else _size_setting("roi_size", roi_size, False)
            ),
            intensity=intensity,
            keep_largest=keep_largest,
            flip_tta=flip_tta,
            network=network,
            pretrained=pretrained,
        )


def trained_network(plan: Mapping[str, Any]) -> Tuple[str | None, bool]:
    """The network a plan's run trained, from its recorded settings: the class name (None where unrecorded) and
    whether it started from ImageNet weights (DSTransUNet then has their linear patch embedding)."""
    settings = plan.get("settings") or {}
    return settings.get("network"), bool(settings.get("pretrained", False))


def update_plan(output_dir: str | os.PathLike, **choices: Any) -> bool:
    """Record later ``choices`` (e.g. evaluation's ``keep_largest``) in the run's ``plan.json``; False
    (nothing written) where the run has no plan."""
    from bundle.files import write_json_atomically

    plan = read_plan(output_dir)
    if not plan:
        return False
    write_json_atomically(Path(output_dir) / PLAN_FILE, {**plan, **choices})
    return True


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _broadcast(plan: TrainingPlan | None) -> TrainingPlan:
    """Rank 0's plan on every process of a distributed run (timings differ between processes)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return plan  # type: ignore[return-value]
    box = [plan if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_planned_settings(
    image_size: Any = AUTO,
    roi_size: Any = AUTO,
    batch_size: Any = AUTO,
    crops_per_image: Any = AUTO,
    max_epochs: Any = AUTO,
    time_budget_minutes: Any = 60.0,
    intensity: Any = AUTO,
    deep_supervision_weights: Any = AUTO,
    flip_tta: Any = AUTO,
    val_interval: Any = AUTO,
    keep_weights: Any = AUTO,
) -> Dict[str, Any]:
    """The settings given (not ``auto``), checked and normalised; a bad one is a one-line error."""
    requested = dict(
        image_size=image_size,
        roi_size=roi_size,
        batch_size=batch_size,
        crops_per_image=crops_per_image,
        max_epochs=max_epochs,
        intensity=intensity,
        deep_supervision_weights=deep_supervision_weights,
        flip_tta=flip_tta,
        val_interval=val_interval,
        keep_weights=keep_weights,
    )
    given: Dict[str, Any] = {}
    for key, value in requested.items():
        if _is_auto(value):
            continue
        if key == "intensity":
            if value not in INTENSITIES:
                raise BundleInputError(f"--intensity {value!r}: give auto, {' or '.join(INTENSITIES)}.")
            given[key] = value
        elif key == "keep_weights":
            if value not in KEEP_WEIGHTS:
                raise BundleInputError(f"--keep_weights {value!r}: give auto, {' or '.join(KEEP_WEIGHTS)}.")
            given[key] = value
        elif key == "deep_supervision_weights":
            given[key] = _weights_setting(key, value)
        elif key == "flip_tta":
            given[key] = _flag_setting(key, value)
        elif key in ("image_size", "roi_size"):
            given[key] = _size_setting(key, value, allow_none=key == "image_size")
        else:
            given[key] = _count_setting(key, value)
    if (
        not isinstance(time_budget_minutes, (int, float))
        or isinstance(time_budget_minutes, bool)
        or time_budget_minutes <= 0
    ):
        raise BundleInputError(f"--time_budget_minutes {time_budget_minutes!r}: give a positive number of minutes.")
    return given


def plan_training(
    datalists: Mapping[str, Sequence[Mapping[str, str]]],
    output_dir: str | os.PathLike,
    network: torch.nn.Module,
    loss: Callable,
    device: str | torch.device = "cpu",
    in_channels: int = 3,
    out_channels: int = 1,
    image_size: Any = AUTO,
    roi_size: Any = AUTO,
    batch_size: Any = AUTO,
    crops_per_image: Any = AUTO,
    max_epochs: Any = AUTO,
    time_budget_minutes: float = 60.0,
    val_interval: Any = AUTO,
    epoch_length: int | None = None,
    demo: bool = False,
    resume: bool = False,
    intensity: str = AUTO,
    deep_supervision_weights: Any = AUTO,
    pretrained: bool = False,
    settings: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    sample_transforms: Mapping[str, Sequence[Callable]] | None = None,
    max_grad_norm: float = 0.0,
    flip_tta: Any = AUTO,
    amp: bool = False,
    keep_weights: Any = AUTO,
) -> TrainingPlan:
    """Resolve the ``auto`` settings of a training run from its data and device (see the module
    docstring), write ``output_dir/plan.json`` and log the plan. Given settings are kept as given.
    ``intensity`` auto is ImageNet mean/std when ``pretrained`` (ImageNet encoder weights), else min/max.
    ``settings`` (preset, channels, network) and ``pretrained`` are recorded; a resumed run must give the same,
    and the same scale. ``optimizer`` (the run's) sets the class and settings of the optimizer in the timed steps;
    ``sample_transforms`` (``{"whole_image": [...], "patch": [...]}``, the random transforms each training
    sample gets after the cache) are timed on copies, and their cost per sample joins the step's; the timed
    steps clip gradients as the run does when ``max_grad_norm`` > 0, and run under its mixed precision when
    ``amp`` (fp16 on CUDA, bf16 on the CPU). The plan is written by :func:`write_plan` when training starts,
    not here."""
    given = check_planned_settings(
        image_size, roi_size, batch_size, crops_per_image, max_epochs, time_budget_minutes, intensity,
        deep_supervision_weights, flip_tta, val_interval, keep_weights,
    )
    resume, amp = flag("resume", resume), flag("amp", amp)
    # from ImageNet weights the network differs (DSTransUNet keeps their patch embedding): a resume must match
    settings = {**(settings or {}), "pretrained": bool(pretrained)}
    path = Path(output_dir) / PLAN_FILE
    main = _world_size() == 1 or torch.distributed.get_rank() == 0
    plan: TrainingPlan | None = None
    if main:
        if resume and path.is_file():
            saved = read_plan(output_dir)
            _check_resumed_settings(path, saved, given, settings)
            plan = TrainingPlan(
                **{k: saved[k] for k in PLANNED if k in saved},
                fingerprint=saved.get("fingerprint", {}),
                timing=saved.get("timing", {}),
                reasons=saved.get("reasons", []),
            )
            plan.reasons = ["resumed: the run's own plan"] + plan.reasons
        elif demo:
            plan = TrainingPlan(**DEMO, reasons=["demo data: fixed small settings, no planning"])
        else:
            plan = _make_plan(
                datalists,
                network,
                loss,
                torch.device(device),
                in_channels,
                out_channels,
                given,
                time_budget_minutes,
                epoch_length,
                optimizer,
                sample_transforms,
                max_grad_norm,
                amp,
            )
        if "intensity" not in given and not (resume and path.is_file()):
            plan.intensity = "imagenet" if pretrained else "minmax"
            if pretrained:
                plan.reasons.append("ImageNet encoder weights given: images normalised with ImageNet mean and std")
        for key, value in given.items():
            setattr(plan, key, value)
        plan.given = given
        plan.settings = settings
        plan.time_budget_minutes = time_budget_minutes
    plan = _broadcast(plan)
    if main:
        _log_plan(plan, path)
    return plan


def _check_resumed_settings(
    path: Path, saved: Mapping[str, Any], given: Mapping[str, Any], settings: Mapping[str, Any]
) -> None:
    """Refuse, in one line, a resume whose network or scale differ from the run it resumes."""
    differ = [
        f"{k} {saved['settings'][k]!r} (now {v!r})"
        for k, v in settings.items()
        if k in saved.get("settings", {}) and saved["settings"][k] != v
    ]
    differ += [
        f"{k} {saved[k]!r} (now {given[k]!r})"
        for k in ("image_size", "roi_size", "intensity")
        if k in given and k in saved and saved[k] != given[k]
    ]
    if differ:
        raise BundleInputError(
            f"--resume true: the run being resumed ({path}) was trained with {', '.join(differ)}; resume with its "
            "settings, or start a new run in another --bundle_root."
        )


def write_plan(output_dir: str | os.PathLike, plan: TrainingPlan) -> Path:
    """Write ``plan`` to ``output_dir/plan.json`` (when training starts, after every check)."""
    from bundle.files import write_json_atomically

    path = Path(output_dir) / PLAN_FILE
    content = {
        "description": "the plan this training run uses (written by bundle.workflows.planning)",
        **asdict(plan),
        "inference_size": plan.inference_size,
    }
    write_json_atomically(path, content)
    return path


def _make_plan(
    datalists: Mapping[str, Sequence[Mapping[str, str]]],
    network: torch.nn.Module,
    loss: Callable,
    device: torch.device,
    in_channels: int,
    out_channels: int,
    given: Mapping[str, Any],
    budget_minutes: float,
    epoch_length: int | None,
    optimizer: torch.optim.Optimizer | None = None,
    sample_transforms: Mapping[str, Sequence[Callable]] | None = None,
    max_grad_norm: float = 0.0,
    amp: bool = False,
) -> TrainingPlan:
    train, val = list(datalists["training"]), list(datalists.get("validation") or [])
    fp = fingerprint(train, out_channels)
    reasons = []
    median_hw = (fp["height"]["median"], fp["width"]["median"])
    largest = max(64, math.ceil(max(median_hw) / 64) * 64)  # never blow images up past one 64 step
    ceiling = {int(s): d for s, d in fp["resize_dice"].items()}
    fits = [s for s in CANDIDATE_SIZES if s <= largest and ceiling.get(s, 0.0) >= MIN_RESIZE_DICE]
    whole_image = given["image_size"] is not None if "image_size" in given else bool(fits)
    if "image_size" in given:
        reasons.append(f"image_size {given['image_size']} given")
    elif fits:
        reasons.append(
            f"resizing masks to {min(fits)} px and back still keeps Dice {ceiling[min(fits)]:.3f} "
            f"(>= {MIN_RESIZE_DICE}): whole images"
        )
    else:
        best = max(ceiling, key=ceiling.get) if ceiling else None
        detail = f" (best {ceiling[best]:.3f} at {best} px)" if best else ""
        reasons.append(
            f"resizing would lose fine structures (structure width {fp['structure_width_px']} px; "
            f"resize Dice below {MIN_RESIZE_DICE}{detail}): native-resolution patches"
        )
    weights = list(AUTHORS_DEEP_SUPERVISION if fits else MAIN_OUTPUT_ONLY)
    # whole images: the flips run as one batch at the network's scale, for little more than one image's cost
    # (Kvasir-SEG: test Dice 0.790 to 0.802); sliding windows would run every window three times
    flip_tta = given.get("flip_tta", whole_image)
    if "flip_tta" not in given:
        reasons.append(
            "whole images: flip test-time augmentation (image and flips in one batch)"
            if flip_tta
            else "native-resolution patches: no flip test-time augmentation (it would triple the windows)"
        )
    keep_weights = given.get("keep_weights", "final" if len(val) < MIN_VALIDATION_TO_CHOOSE else "best")
    if "keep_weights" not in given:
        reasons.append(
            f"{len(val)} validation image(s), fewer than {MIN_VALIDATION_TO_CHOOSE}: model.pt keeps the final weights "
            "(the best validation Dice of so few images picks noise)"
            if keep_weights == "final"
            else f"{len(val)} validation images: model.pt keeps the weights of the best validation Dice"
        )
    if not fits and "deep_supervision_weights" not in given:
        reasons.append(
            f"structures too thin for the auxiliary heads at 1/32 and 1/4 of the input: deep supervision weights "
            f"{weights} (the main output only)"
        )

    def batch_for(size: Sequence[int] | None) -> int:
        if "batch_size" in given:
            return given["batch_size"]
        if not whole_image:
            return PATCH_BATCH
        return max(WHOLE_IMAGE_BATCH, STEP_PIXELS // math.prod(size))

    crops = given.get("crops_per_image", 1 if whole_image else PATCH_CROPS)
    short_side = min(median_hw)
    roi_side = max(64, min(PATCH_SIDE, short_side // 64 * 64))
    roi = given.get("roi_size", [roi_side, roi_side])
    world = _world_size()

    def time_epoch(size: Sequence[int], batch: int, views: int) -> Dict[str, float]:
        """The timed pieces of an epoch at ``size``: a step (network, loss, optimizer; random data) with the
        random transforms of its ``batch * views`` samples, the epoch's steps, and one validation."""
        network_step = _time_step(
            probe, loss, batch * views, in_channels, size, device, optimizer, max_grad_norm, amp
        )
        transforms = (sample_transforms or {}).get("whole_image" if whole_image else "patch", [])
        step = network_step + batch * views * _time_sample_transforms(transforms, in_channels, size)
        if whole_image:  # at native size: the resizes and the threshold cost more than a small forward
            val_image = _time_validation_image(
                probe, in_channels, size, median_hw, device, flip_tta, out_channels, amp
            )
        else:  # sliding windows: a forward is about a third of a training step
            windows = _windows(median_hw, size) * SegmentationInferer(roi_size=size, flip_tta=flip_tta).views()
            val_image = windows * network_step / 3.0 / (batch * views)
        steps = epoch_length or math.ceil(len(train) / (batch * world))
        return {
            "seconds_per_step": step,
            "seconds_per_validation_image": val_image,
            "training": steps * step,
            "validation": len(val) * val_image / world,
        }

    def fit(timed: Mapping[str, float]) -> tuple[int, int]:
        """(val_interval, epochs in the budget): validation about VALIDATION_SHARE of the time, at least
        MIN_VALIDATIONS times (unless val_interval is given)."""
        train_s, val_s = timed["training"], timed["validation"]

        def epochs_with(interval: int) -> int:
            return int(budget // (train_s + val_s / interval))

        if "val_interval" in given:
            return given["val_interval"], epochs_with(given["val_interval"])
        interval = max(1, math.ceil(val_s * (1 - VALIDATION_SHARE) / (VALIDATION_SHARE * max(train_s, 1e-9))))
        run_epochs = given.get("max_epochs", epochs_with(interval))
        if interval > 1 and run_epochs // interval < MIN_VALIDATIONS:
            interval = max(1, run_epochs // MIN_VALIDATIONS)
        return interval, epochs_with(interval)

    timing: Dict[str, Any] = {"device": str(device), "processes": world}

    def record(timed: Mapping[str, float], interval: int, epochs: int) -> Dict[str, Any]:
        return {
            "seconds_per_step": round(timed["seconds_per_step"], 3),
            "seconds_per_validation_image": round(timed["seconds_per_validation_image"], 4),
            "val_interval": interval,
            "epochs_in_budget": epochs,
        }

    # loading, checkpoints and the engine's own work take the rest (runs took 3-15% longer than planned at 0.95)
    budget = budget_minutes * 60.0 * 0.9
    if "max_epochs" in given and (not whole_image or "image_size" in given):
        # nothing left for a timing to decide (a step of a large preset on a CPU takes minutes to time)
        size = given.get("image_size") if whole_image else None
        reasons.append("scale and max_epochs given: no timing")
        return TrainingPlan(
            val_interval=given.get("val_interval", max(1, given["max_epochs"] // MIN_VALIDATIONS)),
            image_size=size,
            roi_size=list(roi),
            batch_size=batch_for(size),
            crops_per_image=crops,
            max_epochs=given["max_epochs"],
            deep_supervision_weights=weights,
            flip_tta=flip_tta,
            keep_weights=keep_weights,
            fingerprint=fp,
            timing=timing,
            reasons=reasons,
        )
    probe = copy.deepcopy(network).to(device)  # every timing runs on this copy: the run's network is untouched
    if whole_image:
        # smallest first: each larger size is timed only while the budget still leaves MIN_EPOCHS epochs
        sizes = [given["image_size"]] if "image_size" in given else [[s, s] for s in sorted(fits)]
        chosen = None
        for size in sizes:
            batch = batch_for(size)
            timed = time_epoch(size, batch, 1)
            interval, epochs = fit(timed)
            timing[f"{size[0]}x{size[1]}"] = {"batch_size": batch, **record(timed, interval, epochs)}
            if chosen is not None and epochs < MIN_EPOCHS:
                break
            chosen = (size, batch, timed, interval, epochs)
            if epochs < MIN_EPOCHS:
                break
        size, batch, timed, interval, epochs = chosen
        step = timed["seconds_per_step"]
        if "image_size" not in given:
            reasons.append(
                f"largest size leaving >= {MIN_EPOCHS} epochs in {budget_minutes:g} min (or the smallest): "
                f"{size[0]}x{size[1]}"
            )
        if "batch_size" not in given and batch > WHOLE_IMAGE_BATCH:
            reasons.append(
                f"{batch} images a step at {size[0]}x{size[1]} (the pixels of {WHOLE_IMAGE_BATCH} at 128x128)"
            )
        image_size: List[int] | None = size
    else:
        batch = batch_for(None)
        timed = time_epoch(roi, batch, crops)
        interval, epochs = fit(timed)
        timing[f"{roi[0]}x{roi[1]} patches"] = record(timed, interval, epochs)
        image_size = None
    step = timed["seconds_per_step"]
    timing["seconds_per_step"] = round(step, 3)
    max_epochs = max(1, epochs)
    if "val_interval" not in given:
        reasons.append(
            f"validating {len(val)} image(s) takes {timed['validation']:.0f} s against {timed['training']:.0f} s of "
            f"training an epoch: every {interval} epoch(s) (about {100 * VALIDATION_SHARE:g}% of the time, "
            f">= {MIN_VALIDATIONS} validations)"
        )
    reasons.append(
        f"a step of {batch} image(s) x {crops} view(s) takes {step:.2f} s on {device} (augmentation included), "
        f"validation {timed['seconds_per_validation_image']:.3f} s an image: "
        f"{max_epochs} epochs fit {budget_minutes:g} min"
    )
    return TrainingPlan(
        image_size=image_size,
        roi_size=list(roi),
        batch_size=batch,
        crops_per_image=crops,
        max_epochs=max_epochs,
        deep_supervision_weights=weights,
        flip_tta=flip_tta,
        val_interval=interval,
        keep_weights=keep_weights,
        fingerprint=fp,
        timing=timing,
        reasons=reasons,
    )


def _log_plan(plan: TrainingPlan, path: Path) -> None:
    fp = plan.fingerprint
    if fp:
        logger.info(
            "Data: %d training images, median %dx%d px (heights %d-%d, widths %d-%d), %s channel(s), %d class(es); "
            "foreground %.1f%% of pixels, %s object(s) per image, structures about %s px wide.",
            fp["training_images"],
            fp["height"]["median"],
            fp["width"]["median"],
            fp["height"]["min"],
            fp["height"]["max"],
            fp["width"]["min"],
            fp["width"]["max"],
            "/".join(map(str, fp["channels"])),
            fp["classes"],
            100 * fp["foreground_fraction"],
            fp["objects_per_image"],
            fp["structure_width_px"],
        )
    scale = (
        f"whole images resized to {plan.image_size[0]}x{plan.image_size[1]}"
        if plan.image_size
        else (f"native-resolution patches of {plan.roi_size[0]}x{plan.roi_size[1]}")
    )
    logger.info(
        "Plan: %s, batch %d x %d, %d epochs validated every %d, %s intensities, %s, model.pt: %s (%s). Given: %s. "
        "Written to %s when training starts.",
        scale,
        plan.batch_size,
        plan.crops_per_image,
        plan.max_epochs,
        plan.val_interval,
        "ImageNet mean/std" if plan.intensity == "imagenet" else "min/max-scaled",
        "flip test-time augmentation" if plan.flip_tta else "no test-time augmentation",
        "the final weights" if plan.keep_weights == "final" else "the best validation Dice's weights",
        "; ".join(plan.reasons),
        ", ".join(f"{k}={v}" for k, v in plan.given.items()) or "nothing",
        path,
    )
