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

"""Checkpoint files: written atomically, resumable, and loaded with a clear error when they do not fit.

- :class:`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` writing every file atomically (MONAI
  turns ignite's atomic writes off) and never deleting a checkpoint before its successor is on disk;
  its best-metric state can ride in the resumable checkpoint, so a resumed run keeps its best.
- :class:`ResumeCheckpointLoader`: restores network, optimizer, scheduler, trainer and best metric
  when ``--resume true``, and says clearly when there is nothing to resume from.
- :func:`load_model_weights`: puts ``models/model.pt`` into a network for evaluation or inference.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import torch
from ignite import distributed as idist
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from bundle.errors import BundleInputError, flag
from bundle.files import atomic_write

__all__ = [
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "ResumeCheckpointLoader",
    "load_model_weights",
    "read_checkpoint",
    "unwrap_ddp",
]

logger = logging.getLogger(__name__)


def unwrap_ddp(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper, or ``network`` itself."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that writes to a temporary file, fsyncs and renames it into place.

    A reader (or a run killed mid-write) sees the old file or the new one, never a partial one.
    Removal of superseded checkpoints is deferred until the next one is safely written, and with a
    fixed ``filename`` nothing is removed at all: the rename replaces the old file.

    Args:
        dirname: folder of the checkpoints (created).
        filename: a fixed file name for every save (e.g. ``model.pt``), or ``None`` for ignite's names.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, **kwargs)
        self.filename = filename
        self._pending_removal: List[str] = []
        if idist.get_rank() == self.save_on_rank:
            self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Delete ``.<name>.<pid>.tmp`` files left by a process killed while writing."""
        for tmp in self.dirname.glob(".*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                tmp.unlink(missing_ok=True)
            except PermissionError:  # alive, someone else's
                pass

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        if self.save_on_rank != idist.get_rank():
            return
        with atomic_write(self.dirname / filename) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f, **self.kwargs)
                f.flush()
                os.fsync(f.fileno())
        self._fsync_dir()
        for old in self._pending_removal:
            if old != filename:
                (self.dirname / old).unlink(missing_ok=True)
        self._pending_removal = []

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.dirname, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            self._pending_removal.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` (same arguments) with atomic writes, plus ``state_dict``/``load_state_dict``
    of its key-metric tracking and the attached engine's ``best_metric``/``best_metric_epoch``.

    Put the best-model saver (attached to the evaluator) into the resumable checkpoint's
    ``save_dict``; when a run resumes, ``CheckpointLoader`` restores it, so the best model file is
    only replaced by a better one and the logs keep reporting the true best.

    Args:
        save_dict: as MONAI's; ``None`` values (components a config disabled) are left out.
        interval_filename: a fixed file name for the every-N-epochs checkpoint (replaced atomically
            each time), instead of ``checkpoint_epoch=N.pt`` names.
        save_engine_as: also save the engine this handler is attached to (the trainer) under this key.
        others: as MONAI's ``CheckpointSaver``.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Dict,
        key_metric_filename: str | None = None,
        interval_filename: str | None = None,
        save_engine_as: str | None = None,
        **kwargs: Any,
    ) -> None:
        save_dict = {k: v for k, v in save_dict.items() if v is not None}
        super().__init__(save_dir=save_dir, save_dict=save_dict, key_metric_filename=key_metric_filename, **kwargs)
        self.save_engine_as = save_engine_as
        self._engine: Engine | None = None
        self._pending_best: Dict[str, Any] | None = None
        if self._final_checkpoint is not None:
            self._final_checkpoint.save_handler = AtomicDiskSaver(save_dir, self._final_filename)
        if self._key_metric_checkpoint is not None:
            self._key_metric_checkpoint.save_handler = AtomicDiskSaver(save_dir, key_metric_filename)
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler = AtomicDiskSaver(save_dir, interval_filename)

    def attach(self, engine: Engine) -> None:
        if self.save_engine_as:
            # the engine cannot be named in its own config (a circular reference): add it here; the
            # ignite Checkpoints share this dict
            self.save_dict[self.save_engine_as] = engine
        super().attach(engine)
        self._engine = engine
        self._apply_best()

    def _apply_best(self) -> None:
        if self._engine is not None and self._pending_best is not None:
            self._engine.state.best_metric = self._pending_best["best_metric"]
            self._engine.state.best_metric_epoch = self._pending_best["best_metric_epoch"]
            self._pending_best = None

    def state_dict(self) -> Dict[str, Any]:
        """Key-metric tracking list and the engine's best metric so far (plain numbers and strings)."""
        state: Dict[str, Any] = {}
        if self._key_metric_checkpoint is not None:
            state["key_metric"] = {k: list(v) for k, v in self._key_metric_checkpoint.state_dict().items()}
        if self._engine is not None:
            state["best_metric"] = float(self._engine.state.best_metric)
            state["best_metric_epoch"] = int(self._engine.state.best_metric_epoch)
        elif self._pending_best is not None:
            state.update(self._pending_best)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if self._key_metric_checkpoint is not None and state_dict.get("key_metric") is not None:
            self._key_metric_checkpoint.load_state_dict(state_dict["key_metric"])
        if "best_metric" in state_dict:
            self._pending_best = {
                "best_metric": float(state_dict["best_metric"]),
                "best_metric_epoch": int(state_dict["best_metric_epoch"]),
            }
            self._apply_best()


class ResumeCheckpointLoader:
    """MONAI ``CheckpointLoader`` that restores a training run when ``resume`` is true and does nothing otherwise.

    Args:
        load_path: the resumable checkpoint (must exist when resuming).
        load_dict: objects to restore (network, optimizer, scheduler, best-model saver); ``None``
            values are left out.
        resume: whether to restore at all.
        optional: keys of ``load_dict`` a checkpoint may lack (saved by a run without them, e.g. the weight
            average); those objects are left as they are, and the log says so.
        load_engine_as: also restore the engine this handler is attached to (the trainer: epoch and
            iteration count) from this key.
        map_location: ``torch.load`` map location.

    Raises:
        BundleInputError: ``resume`` is true and there is no checkpoint at ``load_path``.
    """

    def __init__(
        self,
        load_path: str | Path,
        load_dict: Mapping[str, Any],
        resume: bool = False,
        optional: Sequence[str] = (),
        load_engine_as: str | None = "trainer",
        map_location: Any = None,
    ) -> None:
        self.resume = flag("resume", resume)
        self.load_path = Path(load_path)
        self.load_dict = {k: v for k, v in load_dict.items() if v is not None}
        self.optional = set(optional)
        self.load_engine_as = load_engine_as
        self.map_location = map_location
        if self.resume and not self.load_path.is_file():
            raise BundleInputError(
                f"--resume true but there is no checkpoint to resume from at {self.load_path}: run without --resume "
                "to start a new training, or set --ckpt_dir to the folder of the run to resume."
            )
        if self.resume:
            self._check_checkpoint()

    def _check_checkpoint(self) -> None:
        """A truncated file, or weights of another network, are one line here, not a traceback in ignite."""
        saved = read_checkpoint(self.load_path, "cpu", mmap=True)
        absent = [k for k in self.optional if k in self.load_dict and k not in saved]
        for key in absent:
            del self.load_dict[key]
            if idist.get_rank() == 0:
                logger.info("%s holds no %s (its run had none): it starts afresh.", self.load_path, key)
        missing = [k for k in self.load_dict if k not in saved]
        if missing:
            raise BundleInputError(
                f"--resume true: {self.load_path} is not a resumable checkpoint of this bundle "
                f"(no {', '.join(missing)})."
            )
        network = self.load_dict.get("model")
        if network is None:
            return
        own = unwrap_ddp(network).state_dict()
        for key, value in saved["model"].items():
            if key not in own or own[key].shape != value.shape:
                here = f"{tuple(own[key].shape)} in this network" if key in own else "not in this network"
                raise BundleInputError(
                    f"--resume true: {self.load_path} holds another network "
                    f"(e.g. {key}: {tuple(value.shape)} in the file, {here}); resume with the run's preset and "
                    "channels, or start a new run in another --bundle_root."
                )

    def attach(self, engine: Engine) -> None:
        if not self.resume:
            return
        load_dict = dict(self.load_dict)
        if self.load_engine_as:
            load_dict[self.load_engine_as] = engine
        loader = CheckpointLoader(str(self.load_path), load_dict, map_location=self.map_location)
        loader.attach(engine)
        if idist.get_rank() == 0:
            logger.info("Resuming training from %s.", self.load_path)


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` (tensors and plain values only) of a file training wrote; ``mmap`` reads tensors lazily.

    Raises:
        BundleInputError: the file cannot be read (truncated, not a PyTorch file).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        raise BundleInputError(f"cannot read the model file {path}: {type(e).__name__}: {e}") from e


def _mismatch_hint(network: torch.nn.Module, state: Mapping[str, Any]) -> str:
    """For weights that do not fit: the preset and channels they were trained with, or, when those are
    the network's own, that another network setting differs."""
    from bundle.networks import DSTransUNet

    own_state = network.state_dict()
    held = _fitting_preset(network, state) if isinstance(network, DSTransUNet) else ""
    own = _fitting_preset(network, own_state) if held else ""
    if held and held == own:
        theirs, ours = _architecture(state), _architecture(own_state)
        differ = [f"--network_def#{k} {v}" for k, v in theirs.items() if v != ours.get(k)]
        if differ:
            return f"{held}, as this network, but it was built otherwise: give {' '.join(differ)}"
        return (
            f"{held}, as this network: another network setting differs, so give the ones its training was given "
            "(such as --network_def#window_size)"
        )
    return f"{held}: give the --preset, --in_channels and --out_channels it was trained with"


# DSTransUNet's first kernel of each stem: (stem_channels, in_channels, k, k)
_STEM_FIRST_KERNEL = {"linear": "stem_full.conv.weight", "conv": "stem_full.0.conv.weight"}


def _architecture(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The DSTransUNet settings its weights show beyond the preset (those the bundle's configs have changed:
    the stem, the patch embedding, the stem-fed decoder stages' conv blocks)."""
    found: Dict[str, Any] = {}
    for kind, key in _STEM_FIRST_KERNEL.items():
        if isinstance(state.get(key), torch.Tensor):
            found.update(stem=kind, stem_channels=int(state[key].shape[0]))
    if "fine_branch.patch_embed.proj.weight" in state:
        # early convolutions: two in the fine branch from the image ("conv"), one from the stem's half-resolution map
        convs = sum(f"fine_branch.patch_embed.convs.{i}.conv.weight" in state for i in range(2))
        found["patch_embed"] = ("linear", "stem", "conv")[convs]
    last = max((int(k.split(".")[1]) for k in state if k.startswith("decoder.")), default=None)
    if last is not None:
        refine = {k.split(".")[3] for k in state if k.startswith(f"decoder.{last}.refine.")}
        found["stem_decoder_convs"] = 1 + len(refine)
    return found


def _fitting_preset(network: torch.nn.Module, state: Mapping[str, Any]) -> str:
    """For a DSTransUNet's weights: which preset and channels they were trained with."""
    from bundle.networks import PRESETS
    embed = state.get("fine_branch.patch_embed.proj.weight")
    head = state.get("head.conv.weight")
    if not isinstance(embed, torch.Tensor) or not isinstance(head, torch.Tensor):
        return ""
    # the input's channels: the stem's first kernel (a 1x1 conv, or the first of two 3x3 ones)
    first = next((state[k] for k in _STEM_FIRST_KERNEL.values() if isinstance(state.get(k), torch.Tensor)), embed)
    depths = [
        1 + max(int(k.split(".")[4]) for k in state if k.startswith(f"fine_branch.stages.{i}.blocks."))
        for i in range(4)
        if f"fine_branch.stages.{i}.blocks.0.norm1.weight" in state
    ]
    for name, preset in PRESETS.items():
        if preset["embed_dim"] == embed.shape[0] and list(preset["depths"]) == depths:
            return f"; the file holds preset {name!r}, in_channels {first.shape[1]}, out_channels {head.shape[0]}"
    return f"; the file's fine branch has width {embed.shape[0]} and depths {depths}, no preset's"


def load_model_weights(
    network: torch.nn.Module, path: str | Path, map_location: Any = "cpu", trained_as: str | None = None
) -> torch.nn.Module:
    """Load a state dict saved by training (``models/model.pt``) into ``network`` and return it.

    Args:
        trained_as: the network class the training run recorded in its plan (None: not known).

    Raises:
        BundleInputError: no file at ``path``, a network of another class than ``trained_as``, or weights
            that do not fit ``network`` (trained with another preset or channel count).
    """
    path = Path(path)
    if not path.is_file():
        raise BundleInputError(f"no trained model at {path}: train first (configs/train.yaml) or set --model_path.")
    target = unwrap_ddp(network)
    built = type(target).__name__
    if trained_as and trained_as != built:
        raise BundleInputError(
            f"{path} was trained as {trained_as} (its run's plan.json), but the configs build {built}: add the "
            "network's file from configs/networks/ that training used, after configs/train.yaml."
        )
    state = read_checkpoint(path, map_location)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        # torch's first line only names the class; the second names the first tensor that differs
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else (lines or [repr(e)])[0]
        first = first if len(first) <= 300 else first[:300] + " ..."  # a list of missing keys can be long
        raise BundleInputError(f"{path} does not fit this network ({first}){_mismatch_hint(target, state)}.") from e
    logger.info("Loaded the network weights from %s.", path)
    return network
