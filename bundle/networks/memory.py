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

"""The memory policy of the networks, in one place: when activations are recomputed in backward,
and handing freed CPU memory back to the operating system as a checkpointed backward runs.

:func:`recomputes` is the one question every block asks before it checkpoints: recomputation is
only ever worth its time when a backward will follow in eager PyTorch, so never under
``torch.no_grad``, TorchScript tracing or scripting, or ``torch.export`` (ONNX's dynamo exporter).

Two kinds of recomputation ask it. ``use_checkpoint`` (the memory knob a user sets) recomputes whole
blocks. The *cheap* recomputations that run by default (window attention's q/k/v, the pre-norm MLPs'
hidden activations, DS-TransUNet's conv stem and half-resolution decoder stage) buy much memory for a few percent of
the time on large maps, but on small ones the memory they save is small and their overhead is
not: measured (docs/benchmarks.md, "What recomputation buys"), a ``tiny`` step at 128 px, batch 8,
is 25% faster without them and a ``base`` step at 256 px 14% faster, for 0.2-0.3 GB, while at 512 px
they save 1.7 GB of ``base``'s 4.9 GB for 8% of its time. So a network decides once per forward, from
the size of its largest token map, whether the cheap ones run (:func:`cheap_recomputation`, with
:data:`CHEAP_RECOMPUTE_MIN_BYTES`); a block used on its own keeps them on. :func:`checkpoint` carries
that decision into backward, where the recomputed forward runs outside the network's ``forward``.


glibc serves blocks of up to 32 MB from its heap (its mmap threshold rises to the largest block
freed so far), and freed heap pages stay resident: on the CPU a process's memory is that of its
heap, not that of its live tensors. Under activation checkpointing, whose point is memory, that
garbage is most of what is left. So, on Linux with glibc, the training side (the workflow's
``bundle.workflows.handlers.HeapReleaseHandler``, or a script that trains) calls
:func:`enable_heap_release` when it trains with ``use_checkpoint``: it fixes the mmap threshold at 1 MB
(larger tensors get their own mappings and leave the process when freed; a process-wide setting) and from
then on each recomputed segment returns the heap's free pages (``malloc_trim``) as backward reaches it. A
network alone never changes the process's allocator.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import sys
from typing import Any, Callable, Dict, Iterator

import torch
import torch.utils.checkpoint

__all__ = [
    "CHEAP_RECOMPUTE_MIN_BYTES",
    "autocast_state",
    "cheap_recomputation",
    "checkpoint",
    "recomputes",
    "enable_heap_release",
    "release_heap_in_backward",
]

# A network's cheap recomputation runs when its largest token map has at least this many bytes: a
# ``base`` model's first fine stage is 8 MiB at 512 px (recomputes) and 2 MiB at 256 px (does not).
CHEAP_RECOMPUTE_MIN_BYTES = 4 * 2**20
_CHEAP = contextvars.ContextVar("cheap_recomputation", default=True)

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 1024 * 1024
_GLIBC: Any | None = None
_LOOKED_UP = False
_RELEASING = False


def recomputes(requested: bool = True, cheap: bool = False) -> bool:
    """Whether a block that ``requested`` recomputation (its ``use_checkpoint``, or a ``cheap`` one)
    recomputes now: only with autograd on, in eager PyTorch, and a cheap one only where the network
    running it allows it (:func:`cheap_recomputation`)."""
    if not requested or not torch.is_grad_enabled():
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_exporting():
        return False
    return not cheap or _CHEAP.get()


def autocast_state(device_type: str) -> Dict[str, Any]:
    """The autocast (mixed precision) in force for ``device_type``, as ``torch.autocast`` keyword
    arguments: a hand-written backward that recomputes part of its forward runs under it again."""
    if not torch.is_autocast_enabled(device_type):
        return {"enabled": False}
    return {"enabled": True, "dtype": torch.get_autocast_dtype(device_type)}


@contextlib.contextmanager
def cheap_recomputation(largest_map_bytes: float) -> Iterator[bool]:
    """Within this context, cheap recomputation runs only if ``largest_map_bytes`` (the size of the
    network's largest token map in this forward) is at least :data:`CHEAP_RECOMPUTE_MIN_BYTES`;
    yields that decision."""
    token = _CHEAP.set(largest_map_bytes >= CHEAP_RECOMPUTE_MIN_BYTES)
    try:
        yield _CHEAP.get()
    finally:
        _CHEAP.reset(token)


@contextlib.contextmanager
def _cheap_state(enabled: bool) -> Iterator[None]:
    token = _CHEAP.set(enabled)
    try:
        yield
    finally:
        _CHEAP.reset(token)


def checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """``torch.utils.checkpoint.checkpoint`` (non-reentrant) whose recomputation in backward makes the
    cheap-recomputation decision its forward made, so that both save the same tensors."""
    enabled = _CHEAP.get()
    return torch.utils.checkpoint.checkpoint(
        function,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _cheap_state(enabled)),
    )


def _glibc() -> Any | None:
    global _GLIBC, _LOOKED_UP
    if not _LOOKED_UP:
        _LOOKED_UP = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                libc = None
            if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
                _GLIBC = libc
    return _GLIBC


def enable_heap_release(enabled: bool = True) -> bool:
    """Turn the release of freed CPU heap on (or off) for this process: the training side's choice. On Linux
    with glibc, fixes the mmap threshold at 1 MB; returns whether the release is on."""
    global _RELEASING
    libc = _glibc()
    _RELEASING = bool(enabled) and libc is not None
    if _RELEASING:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    return _RELEASING


def _trim(grad: torch.Tensor) -> None:
    if _RELEASING:
        _GLIBC.malloc_trim(0)


@torch.jit.unused
def release_heap_in_backward(output: Any) -> Any:
    """Return ``output`` (a tensor or a tuple of them); when backward reaches it (CPU, after
    :func:`enable_heap_release`), the heap's free pages go back to the operating system."""
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    if _RELEASING and tensor.requires_grad and tensor.device.type == "cpu":
        tensor.register_hook(_trim)
    return output
