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

"""ImageNet Swin classification checkpoints into DS-TransUNet's branches and SwinUNETR's encoders.

    report = load_swin_weights(model.fine_branch, "swin_base_patch4_window12_384_22k.pth")
    report = load_swin_weights(model.coarse_branch, "swin_tiny_patch4_window7_224.pth")

Four key layouts are read, detected from the keys (see ``LAYOUTS``): Microsoft's Swin-Transformer
release (the authors' files; weights under ``model``), timm's ``swin_*`` (merging at the start of
the next stage), torchvision's ``swin_t/s/b`` and Hugging Face ``SwinModel`` (the ``microsoft/swin-*``
hub files, old and new attention names). Every layout is first renamed to Microsoft's, then to the
target's names. Adapted on the way, as timm and the authors do:

- relative-position-bias tables resized bicubically when the window differs (Swin-B's 12 to 7);
- the patch-embedding kernel resampled to another patch size by an integer factor: to a larger
  patch each tap is spread over ``r x r`` pixels and divided by ``r**2``, so the token equals the
  original kernel on the ``r``-times average-pooled image (the coarse branch's half-scale view);
  to a smaller patch each ``r x r`` block of taps is summed;
- input channels other than 3: summed for one channel, the RGB kernel repeated and scaled by
  ``3 / C`` otherwise (as segmentation_models_pytorch adapts a first convolution).

What the target lacks (``head``, the final ``norm``, buffers that are recomputed) is dropped and
named; what the file lacks (DS-TransUNet's per-stage output norms) stays at its initial values. Swin
V2 files are refused: their blocks compute cosine attention with a continuous position bias
(``logit_scale``, ``cpb_mlp``) and normalise after attention, not the V1 math of these blocks.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformer

from bundle.networks.blocks.swin import ConvPatchEmbed, SwinBranch

__all__ = ["load_swin_weights", "read_swin_state_dict", "SwinWeightsError", "SwinWeightsReport", "LAYOUTS"]

logger = logging.getLogger(__name__)

LAYOUTS = {
    "microsoft": "Microsoft Swin-Transformer release",
    "timm": "timm swin_*",
    "torchvision": "torchvision swin_t/s/b",
    "huggingface": "Hugging Face SwinModel",
}
Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


class SwinWeightsError(ValueError):
    """A checkpoint that fits no Swin layout, or does not fit the branch it is loaded into (on the
    bundle's command line, one ``ERROR:`` line: ``bundle.errors`` counts it as bad input)."""


@dataclass
class SwinWeightsReport:
    """What :func:`load_swin_weights` did, tensor by tensor (target names, except ``dropped``: file names)."""

    source: str
    layout: str
    target: str
    loaded: List[str] = field(default_factory=list)
    adapted: Dict[str, str] = field(default_factory=dict)
    dropped: Dict[str, str] = field(default_factory=dict)
    initial: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph in plain words, as logged."""

        def grouped(names: Mapping[str, str]) -> str:
            reasons: Dict[str, int] = {}
            for reason in names.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            return "; ".join(f"{n} x {r}" for r, n in reasons.items())

        parts = [f"{self.target} <- {self.source} ({LAYOUTS[self.layout]} layout): {len(self.loaded)} tensors loaded"]
        if self.adapted:
            parts.append(f"{len(self.adapted)} of them adapted ({grouped(self.adapted)})")
        if self.dropped:
            parts.append(f"{len(self.dropped)} in the file not used ({grouped(self.dropped)})")
        if self.initial:
            parts.append(f"{len(self.initial)} left at their initial values ({', '.join(self.initial)})")
        return ", ".join(parts) + "."


# ---- reading and layouts -------------------------------------------------------------------


def read_swin_state_dict(source: Source) -> Tuple[Dict[str, torch.Tensor], str]:
    """The state dict in ``source`` (a path to ``.pth``/``.pt``/``.bin``/``.safetensors`` or a mapping),
    unwrapped from ``model``/``state_dict`` containers and ``module.`` prefixes, and its name."""
    name = "the given state dict"
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not os.path.isfile(name):
            raise SwinWeightsError(f"Swin weights file not found: {name}")
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            source = load_file(name)
        else:
            try:
                source = torch.load(name, map_location="cpu", weights_only=True)
            except Exception as e:
                raise SwinWeightsError(f"{name} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}).") from e
    if not isinstance(source, Mapping):
        raise SwinWeightsError(f"{name} holds a {type(source).__name__}, not a state dict.")
    sd = dict(source)
    for container in ("model", "state_dict", "model_state"):
        if isinstance(sd.get(container), Mapping):
            sd = dict(sd[container])
            break
    sd = {
        k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items() if isinstance(v, torch.Tensor)
    }
    return sd, name


def detect_layout(sd: Mapping[str, torch.Tensor], name: str) -> str:
    keys = list(sd)
    v2 = next((k for k in keys if "logit_scale" in k or "cpb_mlp" in k), None)
    if v2 is not None:
        raise SwinWeightsError(
            f"{name} is a Swin V2 checkpoint ({v2}): V2 blocks use cosine attention with a continuous position "
            "bias and normalise after attention, which these Swin V1 blocks do not compute; use a V1 file "
            "(swin_tiny/small/base_patch4_window*)."
        )
    if any(k.startswith(("embeddings.patch_embeddings.", "swin.embeddings.patch_embeddings.")) for k in keys):
        return "huggingface"
    if "features.0.0.weight" in sd:
        return "torchvision"
    if "patch_embed.proj.weight" in sd and any(k.startswith("layers.0.blocks.") for k in keys):
        if any(k.startswith("layers.0.downsample.") for k in keys):
            return "microsoft"
        return (
            "timm"
            if any(re.match(r"layers\.\d+\.downsample\.", k) for k in keys) or "head.fc.weight" in sd
            else "microsoft"
        )
    raise SwinWeightsError(
        f"{name} fits no Swin layout ({', '.join(LAYOUTS.values())}): expected keys such as "
        f"patch_embed.proj.weight, features.0.0.weight or embeddings.patch_embeddings.projection.weight; "
        f"its first keys are {', '.join(keys[:3]) or 'none'}."
    )


Rules = List[Tuple[str, Union[str, Callable]]]


def _rename_key(key: str, rules: Rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _rename(sd: Mapping[str, torch.Tensor], rules: Rules) -> Dict[str, torch.Tensor]:
    return {_rename_key(key, rules): value for key, value in sd.items()}


_TORCHVISION_RULES: Rules = [
    (r"^features\.0\.0\.", "patch_embed.proj."),
    (r"^features\.0\.2\.", "patch_embed.norm."),
    (
        r"^features\.(\d+)\.(\d+)\.",
        lambda m: f"layers.{(int(m.group(1)) - 1) // 2}.blocks.{m.group(2)}." if int(m.group(1)) % 2 else m.group(0),
    ),
    (r"^features\.(\d+)\.(reduction|norm)\.", lambda m: f"layers.{int(m.group(1)) // 2 - 1}.downsample.{m.group(2)}."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
]
_HUGGINGFACE_RULES: Rules = [
    (r"^swin\.", ""),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.layers\.", "layers."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (
        r"\.attention\.(self\.)?relative_position_bias(\.relative_position_bias)?_table$",
        ".attn.relative_position_bias_table",
    ),
    (r"\.attention\.(o_proj|output\.dense)\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
]
_HF_QKV = re.compile(r"^(.*)\.attention\.(?:self\.)?(q_proj|k_proj|v_proj|query|key|value)\.(weight|bias)$")


def _from_huggingface(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    sd = _rename(sd, _HUGGINGFACE_RULES)
    out, parts = {}, {}
    for key, value in sd.items():
        m = _HF_QKV.match(key)
        if m:  # separate query / key / value projections: one qkv, in that order
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)[0]] = value
        else:
            out[key] = value
    for (block, kind), qkv in parts.items():
        out[f"{block}.attn.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def _from_timm(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # timm >= 0.9 merges at the start of stage i what Microsoft merges at the end of stage i - 1
    rules = [
        (r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample."),
        (r"^head\.fc\.", "head."),
    ]
    if any(k.startswith("layers.0.downsample.") for k in sd):  # timm < 0.9: Microsoft's places
        rules = rules[1:]
    return _rename(sd, rules)


def to_microsoft_layout(sd: Mapping[str, torch.Tensor], layout: str) -> Dict[str, torch.Tensor]:
    """Rename a state dict of ``layout`` to the Microsoft release's keys (q/k/v joined into qkv)."""
    if layout == "huggingface":
        return _from_huggingface(sd)
    if layout == "torchvision":
        return _rename(sd, _TORCHVISION_RULES)
    if layout == "timm":
        return _from_timm(sd)
    return dict(sd)


# ---- targets -------------------------------------------------------------------------------

_SWIN_BRANCH_RULES: Rules = [
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^layers\.(\d+)\.downsample\.", r"merges.\1."),
    (r"\.mlp\.fc1\.", ".mlp.linear1."),
    (r"\.mlp\.fc2\.", ".mlp.linear2."),
]
# MONAI's SwinTransformer (SwinUNETR's swinViT): stage i is layers{i+1}.0, merging at its end
_MONAI_SWIN_RULES: Rules = [
    (r"^layers\.(\d+)\.", lambda m: f"layers{int(m.group(1)) + 1}.0."),
    (r"\.mlp\.fc1\.", ".mlp.linear1."),
    (r"\.mlp\.fc2\.", ".mlp.linear2."),
]
_NOT_LOADED = [  # (pattern on Microsoft keys, why the file's tensor is not used)
    (r"^head\.", "classification head"),
    (r"^norm\.", "final norm of the classifier"),
    (r"relative_position_index$|attn_mask$|relative_coords_table$", "buffer recomputed by the network"),
]


def _target_rules(module: nn.Module) -> Rules:
    if isinstance(module, SwinBranch):
        return _SWIN_BRANCH_RULES
    if isinstance(module, SwinTransformer):
        return _MONAI_SWIN_RULES
    raise TypeError(
        f"load_swin_weights loads into a SwinBranch (DSTransUNet.fine_branch / coarse_branch) or MONAI's "
        f"SwinTransformer (SwinUNETR.swinViT, SwinUNETRTIF.swinViT.fine / .coarse), not {type(module).__name__}."
    )


# ---- adaptations ---------------------------------------------------------------------------


def resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A ``((2W - 1)**2, heads)`` relative-position-bias table resized bicubically to ``window``."""
    old = round(table.shape[0] ** 0.5)
    grid = table.T.reshape(1, table.shape[1], old, old).float()
    new = F.interpolate(grid, size=(2 * window - 1,) * 2, mode="bicubic", align_corners=False)
    return new.reshape(table.shape[1], -1).T.contiguous().to(table.dtype)


def resample_patch_kernel(kernel: torch.Tensor, patch_size: int) -> torch.Tensor:
    """A patch-embedding kernel ``(C, in, p, p)`` for patches of ``patch_size`` (an integer factor of p
    larger or smaller): larger, each tap covers ``r x r`` pixels at ``1 / r**2`` (the original kernel on
    the average-pooled image); smaller, each ``r x r`` block of taps is summed."""
    old = kernel.shape[-1]
    if patch_size > old:
        r = patch_size // old
        return kernel.repeat_interleave(r, -1).repeat_interleave(r, -2) / r**2
    r = old // patch_size
    return F.avg_pool2d(kernel, r) * r**2


def adapt_input_channels(kernel: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB kernel ``(C, 3, ...)`` for ``in_channels`` inputs: summed for 1, else repeated and scaled by 3/C."""
    if in_channels == 1:
        return kernel.sum(1, keepdim=True)
    index = torch.arange(in_channels) % kernel.shape[1]
    return kernel[:, index] * (kernel.shape[1] / in_channels)


def _stage_depths(keys, pattern: str) -> Dict[int, int]:
    depths: Dict[int, int] = {}
    for key in keys:
        m = re.match(pattern, key)
        if m:
            depths[int(m.group(1))] = max(depths.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    return depths


# ---- loading -------------------------------------------------------------------------------


def load_swin_weights(
    module: nn.Module,
    source: Source,
    resample_patch_embed: bool = True,
    target_name: str | None = None,
) -> SwinWeightsReport:
    """Load an ImageNet Swin (V1) classification checkpoint into one Swin encoder, in place.

    Args:
        module: a :class:`~bundle.networks.blocks.SwinBranch` (``DSTransUNet.fine_branch`` or
            ``.coarse_branch``) or MONAI's ``SwinTransformer`` (``SwinUNETR.swinViT``,
            ``SwinUNETRTIF.swinViT.fine`` / ``.coarse``).
        source: a checkpoint file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``) or a state dict, in
            any layout of ``LAYOUTS``.
        resample_patch_embed: resample the patch-embedding kernel when the patch size differs (the
            coarse branch's 8 from Swin's 4). ``False`` leaves it at its initial values, as the
            authors' ``load_pretrained`` does (a shape mismatch it skips).
        target_name: how the report and errors name ``module`` (default: its class).

    Returns:
        a :class:`SwinWeightsReport`, also logged.

    Raises:
        SwinWeightsError: the file is unreadable, fits no layout, is Swin V2, or its stages, depths
            or widths do not match ``module`` (the message names the first mismatching key and shapes).
    """
    rules = _target_rules(module)
    target_name = target_name or type(module).__name__
    raw, name = read_swin_state_dict(source)
    layout = detect_layout(raw, name)
    sd = to_microsoft_layout(raw, layout)
    report = SwinWeightsReport(source=name, layout=layout, target=target_name)

    own = module.state_dict()
    file_depths = _stage_depths(sd, r"^layers\.(\d+)\.blocks\.(\d+)\.")
    own_depths = _stage_depths(own, r"^(?:stages\.|layers)(\d+)(?:\.0)?\.blocks\.(\d+)\.")
    if isinstance(module, SwinTransformer):
        own_depths = {i - 1: d for i, d in own_depths.items()}
    if file_depths != own_depths:
        describe = lambda d: "-".join(str(d[i]) for i in sorted(d)) or "none"  # noqa: E731
        raise SwinWeightsError(
            f"{name} ({LAYOUTS[layout]} layout) does not fit {target_name}: blocks per stage {describe(file_depths)} "
            f"in the file, {describe(own_depths)} in the network (choose the preset or depths of the checkpoint)."
        )

    conv_embed = isinstance(getattr(module, "patch_embed", None), ConvPatchEmbed)
    new: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        why = next((reason for pattern, reason in _NOT_LOADED if re.search(pattern, key)), None)
        target = _rename_key(key, rules)
        if why is None and conv_embed and target.startswith("patch_embed."):
            why = "the branch embeds patches with convolutions (patch_embed='conv')"
        if why is None and target not in own:
            why = f"not in {target_name}"
        if why:
            report.dropped[key] = why
            continue
        want = own[target].shape
        if target.endswith("relative_position_bias_table") and value.shape != want and value.shape[1] == want[1]:
            window = round(want[0] ** 0.5 + 1) // 2
            value = resize_bias_table(value, window)
            report.adapted[target] = f"bias table resized to window {window}"
        if target == "patch_embed.proj.weight" and value.shape != want:
            how = []
            if value.shape[1] != want[1]:
                value = adapt_input_channels(value, want[1])
                how.append(f"{want[1]} input channel(s)")
            if value.shape[-1] != want[-1]:
                old, ratio = value.shape[-1], max(value.shape[-1], want[-1]) / min(value.shape[-1], want[-1])
                if not resample_patch_embed or ratio != int(ratio):
                    report.dropped[key] = f"patch {old} kernel not resampled to patch {want[-1]}"
                    continue
                value = resample_patch_kernel(value, want[-1])
                how.append(f"kernel resampled from patch {old} to {want[-1]}")
            report.adapted[target] = "patch embedding: " + ", ".join(how)
        if value.shape != want:
            raise SwinWeightsError(
                f"{name} ({LAYOUTS[layout]} layout) does not fit {target_name}: {key} has shape {tuple(value.shape)} "
                f"in the file, {target} {tuple(want)} in the network (choose the preset or widths of the checkpoint)."
            )
        new[target] = value.to(own[target].dtype)
        report.loaded.append(target)
    if "patch_embed.proj.weight" not in new:
        new.pop("patch_embed.proj.bias", None)  # the bias belongs to the kernel left at its initial values
        report.loaded = [k for k in report.loaded if k != "patch_embed.proj.bias"]
    module.load_state_dict(new, strict=False)
    buffers = {n for n, _ in module.named_buffers()}
    report.initial = [k for k in own if k not in new and k not in buffers]
    logger.info(report.summary())
    return report
