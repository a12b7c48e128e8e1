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

"""Settings checked before any data are loaded: one line per bad value, and no misspelt id.

MONAI's bundle CLI adds an unknown ``--id value`` to the config without a word (``--max_epoch 1``
trains the default number of epochs) and reports a bad value only where it is first used, sometimes
after a whole epoch, as a long traceback. The configs' ``initialize`` lists call these functions
first, so a typo or a bad value stops the run at once with one ``ERROR:`` line naming the setting.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from bundle.errors import BundleInputError, flag

__all__ = ["check_command_line_ids", "check_training_settings", "MONAI_RUN_ARGUMENTS"]

# arguments of monai.bundle's `run` itself, not config ids
MONAI_RUN_ARGUMENTS = {
    "config_file",
    "meta_file",
    "logging_file",
    "args_file",
    "run_id",
    "init_id",
    "final_id",
    "tracking",
}


def _children(node: Any, prefix: str) -> Iterator[tuple]:
    """``(id, value)`` of a config node's entries (``_target_`` and other reserved keys left out)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return
    for key, value in items:
        if not str(key).startswith("_"):
            yield (f"{prefix}#{key}" if prefix else str(key)), value


def _config_ids(node: Any, prefix: str = "") -> Iterator[str]:
    for name, value in _children(node, prefix):
        yield name
        yield from _config_ids(value, name)


def _constructor_ids(node: Any, prefix: str = "") -> Iterator[str]:
    """``id#argument`` for every argument of each ``_target_``'s constructor: a setting the config leaves
    at its default (``--network_def#stem_channels 32``) is still a setting."""
    import inspect

    from monai.bundle.config_item import ComponentLocator
    from monai.utils import optional_import

    target = node.get("_target_") if isinstance(node, dict) else None
    if isinstance(target, str) and not target.startswith(("$", "@")):
        module = ComponentLocator().get_component_module_name(target)
        if isinstance(module, str):
            target = f"{module}.{target}"
        component, found = optional_import(target.rsplit(".", 1)[0], name=target.rsplit(".", 1)[-1])
        try:
            parameters = inspect.signature(component).parameters if found else {}
        except (TypeError, ValueError):
            parameters = {}
        yield from (f"{prefix}#{p}" if prefix else p for p in parameters if p not in ("self", "args", "kwargs"))
    for name, value in _children(node, prefix):
        yield from _constructor_ids(value, name)


def _is_bundle_cli(argv: Sequence[str]) -> bool:
    first = argv[0].replace("\\", "/") if argv else ""
    return first.endswith("monai/bundle/__main__.py") or first == "monai.bundle"


def check_command_line_ids(argv: Sequence[str] | None = None) -> bool:
    """Refuse a ``--name`` on the bundle's command line that is no id of the given config files
    (the message names the nearest known id). Does nothing outside ``python -m monai.bundle``."""
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_cli(argv) or "--config_file" not in argv:
        return True
    files = argv[argv.index("--config_file") + 1]
    try:
        config = ConfigParser.load_config_files(ast.literal_eval(files) if files.lstrip().startswith("[") else files)
    except Exception:
        return True  # MONAI reports unreadable config files itself
    known = set(_config_ids(config)) | _tracking_ids(argv)
    given = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--") and len(a) > 2]
    arguments: set = set()
    if any(name not in known and name not in MONAI_RUN_ARGUMENTS for name in given):
        arguments = set(_constructor_ids(config))  # imports the targets: only where a name is not an id
    for name in given:
        if name in known or name in arguments or name in MONAI_RUN_ARGUMENTS or name.replace("::", "#") in known:
            continue
        near = difflib.get_close_matches(name, sorted(known | arguments), n=1, cutoff=0.6)
        hint = f"; did you mean --{near[0]}?" if near else ""
        raise BundleInputError(f"--{name} is not a setting of {files}{hint}")
    return True


def _tracking_ids(argv: Sequence[str]) -> set:
    """The ids that ``--tracking`` adds (``tracking_uri``, ``experiment_name``, ...), which the command line may set."""
    if "--tracking" not in argv or argv.index("--tracking") + 1 >= len(argv):
        return set()
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    name = argv[argv.index("--tracking") + 1]
    try:
        settings = DEFAULT_EXP_MGMT_SETTINGS.get(name) or ConfigParser.load_config_file(name)
    except Exception:
        return set()  # MONAI reports an unknown tracking name or file itself
    return set(settings.get("configs", {}))


def _number(
    name: str, value: Any, low: float, high: float | None = None, low_open: bool = False, whole: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not whole or isinstance(value, int))
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        kind = "a whole number" if whole else "a number"
        bound = f"{'above' if low_open else 'at least'} {low:g}" + (
            f" and at most {high:g}" if high is not None else ""
        )
        raise BundleInputError(f"--{name} {value!r}: give {kind} {bound}.")


def check_training_settings(
    learning_rate: Any = 1.0e-3,
    preset: Any = "tiny",
    in_channels: Any = 3,
    out_channels: Any = 1,
    epoch_length: Any = None,
    warmup_fraction: Any = 0.0,
    max_grad_norm: Any = 0.0,
    ema_fraction: Any = 0.0,
    zoom_range: Any = (1.0, 1.0),
    cache_rate: Any = 1.0,
    num_workers: Any = 0,
    seed: Any = 0,
    weights: Sequence[Any] = (),
    planned: dict | None = None,
    amp: Any = False,
    device: Any = "cpu",
    resume: Any = False,
) -> bool:
    """Check a training run's settings; each bad one is a :class:`BundleInputError` naming it.

    ``weights`` are weight files that must exist (``fine_weights``, ``coarse_weights``); ``planned``
    the settings the plan resolves (``image_size``, ``roi_size``, ``batch_size``, ``crops_per_image``,
    ``max_epochs``, ``time_budget_minutes``, ``intensity``, ``deep_supervision_weights``, ``flip_tta``,
    ``val_interval``), checked as the plan checks them. ``amp`` and ``resume`` are true or false (the
    words, as the command line gives them, or booleans); ``amp`` on a CPU ``device`` needs native bf16.
    """
    import torch

    from bundle.networks.nets.ds_transunet import PRESETS
    from bundle.workflows.inferers import check_cpu_bf16
    from bundle.workflows.planning import check_planned_settings

    _number("learning_rate", learning_rate, 0.0, low_open=True)
    if preset not in PRESETS:
        raise BundleInputError(f"--preset {preset!r}: give one of {', '.join(PRESETS)}.")
    _number("in_channels", in_channels, 1, whole=True)
    _number("out_channels", out_channels, 1, whole=True)
    if epoch_length is not None:
        _number("epoch_length", epoch_length, 1, whole=True)
    _number("warmup_fraction", warmup_fraction, 0.0, 0.99)
    _number("max_grad_norm", max_grad_norm, 0.0)
    _number("ema_fraction", ema_fraction, 0.0, 1.0)
    if not (
        isinstance(zoom_range, (list, tuple))
        and len(zoom_range) == 2
        and all(isinstance(z, (int, float)) and not isinstance(z, bool) and z > 0 for z in zoom_range)
        and zoom_range[0] <= zoom_range[1]
    ):
        raise BundleInputError(
            f"--zoom_range {zoom_range!r}: give [smallest, largest] zoom factors above 0, e.g. [0.75, 1.25]."
        )
    _number("cache_rate", cache_rate, 0.0, 1.0)
    _number("num_workers", num_workers, 0, whole=True)
    _number("seed", seed, 0, whole=True)
    for path in weights:
        if path and not Path(os.fspath(path)).expanduser().is_file():
            raise BundleInputError(f"Swin weights file not found: {path}")
    flag("resume", resume)
    if flag("amp", amp) and torch.device(device).type == "cpu":
        check_cpu_bf16()
    if planned is not None:
        check_planned_settings(**planned)
    return True
