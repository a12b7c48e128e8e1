"""Small ignite handlers with the ``attach(engine)`` that MONAI workflows call.

- :class:`TerminateOnNanHandler`: ignite's ``TerminateOnNan``.
- :class:`ProgressBarHandler`: ignite's tqdm ``ProgressBar``.
"""

from __future__ import annotations

from typing import Callable, Optional

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, TerminateOnNan

__all__ = ["TerminateOnNanHandler", "ProgressBarHandler"]


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
