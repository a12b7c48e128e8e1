"""Small ignite handlers with the ``attach(engine)`` that MONAI workflows call.

- :class:`PeriodicValidationHandler`: MONAI's ``ValidationHandler`` that also validates after the
  last epoch, so a run whose length is not a multiple of the interval still ends validated (and
  has a best model).
- :class:`TerminateOnNanHandler`: ignite's ``TerminateOnNan``.
- :class:`ProgressBarHandler`: ignite's tqdm ``ProgressBar``.
- :class:`GradientClipHandler`: clips the gradient norm between backward and the optimizer step.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, TerminateOnNan
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler

__all__ = ["PeriodicValidationHandler", "TerminateOnNanHandler", "ProgressBarHandler", "GradientClipHandler"]


class PeriodicValidationHandler(ValidationHandler):
    """Run the validator every ``interval`` epochs and after the last epoch (epoch level only).

    Arguments as MONAI's ``ValidationHandler`` (``epoch_level`` must stay true).
    """

    def attach(self, engine: Engine) -> None:
        if not self.epoch_level:
            raise ValueError("PeriodicValidationHandler validates at epoch level; use ValidationHandler for iterations.")
        interval = self.interval

        def due(engine: Engine, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


class TerminateOnNanHandler:
    """ignite ``TerminateOnNan`` on ``Events.ITERATION_COMPLETED``, attachable by MONAI workflows.

    Args:
        output_transform: picks the values to check from ``engine.state.output`` (e.g. the loss).
    """

    def __init__(self, output_transform: Callable = lambda output: output) -> None:
        self.handler = TerminateOnNan(output_transform=output_transform)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.handler)


class ProgressBarHandler:
    """ignite's tqdm ``ProgressBar``, attachable by MONAI workflows, showing ``output_transform``'s values.

    Args:
        output_transform: maps ``engine.state.output`` to a number or a dict of numbers to show.
        desc: text before the bar.
        persist: keep each finished bar on screen.
    """

    def __init__(self, output_transform: Optional[Callable] = None, desc: str = "", persist: bool = False) -> None:
        self.bar = ProgressBar(persist=persist, desc=desc)
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=self.output_transform)


class GradientClipHandler:
    """Clip the trainer's gradients (total norm) after backward, before the optimizer steps.

    MONAI's ``SupervisedTrainer`` fires ``IterationEvents.BACKWARD_COMPLETED`` between the two; under
    mixed precision the gradients are unscaled first, so the limit is on the true gradient.

    Args:
        max_norm: the largest total gradient norm; ``None`` or 0 disables clipping.
    """

    def __init__(self, max_norm: Optional[float] = 1.0) -> None:
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        if self.max_norm:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)
