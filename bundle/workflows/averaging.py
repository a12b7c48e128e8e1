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

"""An option for what validation judges and ``models/model.pt`` holds: a moving average of the trained weights.

With ``--ema_fraction`` above 0, :class:`WeightAverage` keeps an exponential moving average (EMA) of the
network's weights and buffers and :class:`WeightAverageHandler` updates it after every training step.
Validation, the best-model file and so evaluation, inference and export then use the average; the
optimizer keeps training the network itself. The average is a plain copy of the network under
``module``, so ``model.pt`` holds the same keys as the network. Off by default: on Kvasir-SEG's
default run it did not beat the latest weights (docs/recipe.md).
"""

from __future__ import annotations

import copy
import logging

import torch
from ignite import distributed as idist
from ignite.engine import Engine, Events

from bundle.workflows.checkpoints import unwrap_ddp

__all__ = ["WeightAverage", "WeightAverageHandler"]

logger = logging.getLogger(__name__)


class WeightAverage(torch.nn.Module):
    """An exponential moving average of a network's weights and buffers, updated after each training step.

    Until ``horizon_steps`` updates have been made it is the plain mean of all the weights so far, then
    each update moves it ``1 / horizon_steps`` of the way to the network's current weights (decay
    ``1 - 1 / horizon_steps``), so the random initial weights do not linger in it. Integer buffers
    (e.g. Swin's relative position index) are copied, not averaged.

    Args:
        network: the network being trained (a ``DistributedDataParallel`` wrapper is unwrapped); the
            average starts as a copy of it, on its device, and is never trained.
        horizon_steps: the average's time constant in training steps; 1 or less: no averaging, the
            average is the network's latest weights.
    """

    def __init__(self, network: torch.nn.Module, horizon_steps: float = 1.0) -> None:
        super().__init__()
        self.module = copy.deepcopy(unwrap_ddp(network)).requires_grad_(False)
        self.horizon_steps = max(float(horizon_steps), 1.0)
        # saved with the average, so a resumed run goes on averaging where it stopped
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._pairs: tuple | None = None  # (network id, float pairs, other pairs), made at the first update

    def _tensor_pairs(self, network: torch.nn.Module) -> tuple:
        """The average's tensors beside the network's, made once: both state dicts' tensors are updated
        in place (training, ``load_state_dict``), so the lists stay valid for the run."""
        if self._pairs is None or self._pairs[0] != id(network):
            own, current = self.module.state_dict(), unwrap_ddp(network).state_dict()
            floats = [k for k, v in own.items() if v.is_floating_point()]
            others = [k for k, v in own.items() if not v.is_floating_point()]
            self._pairs = (
                id(network),
                ([own[k] for k in floats], [current[k] for k in floats]),
                [(own[k], current[k]) for k in others],
            )
        return self._pairs[1], self._pairs[2]

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        """Move the average towards ``network``'s current weights and buffers."""
        self.updates += 1
        weight = 1.0 / min(float(self.updates), self.horizon_steps)  # 1 at the first update: a copy
        (own_floats, current_floats), others = self._tensor_pairs(network)
        if own_floats:
            torch._foreach_lerp_(own_floats, current_floats, weight)
        for own, current in others:
            own.copy_(current)


class WeightAverageHandler:
    """Update a :class:`WeightAverage` from the trainer's network after every iteration.

    Args:
        average: the average to update.
    """

    def __init__(self, average: WeightAverage) -> None:
        self.average = average

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.average.update(e.network))
        if idist.get_rank() == 0:
            logger.info(
                "Validation and model.pt use a moving average of the weights over about %d steps.",
                round(self.average.horizon_steps),
            )
