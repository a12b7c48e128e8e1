"""Small ignite handlers with the ``attach(engine)`` that MONAI workflows call.

- :class:`PeriodicValidationHandler`: MONAI's ``ValidationHandler`` that also validates after the
  last epoch, so a run whose length is not a multiple of the interval still ends validated (and
  has a best model).
- :class:`TerminateOnNanHandler`: ignite's ``TerminateOnNan``.
- :class:`ProgressBarHandler`: ignite's tqdm ``ProgressBar``.
- :class:`GradientClipHandler`: clips the gradient norm between backward and the optimizer step.
- :class:`RunRecordWriter`: writes the run's split and plan when training starts, after every check.
- :class:`LargestComponentDecision`: after evaluating the validation split, records in the training
  plan whether keeping the largest connected component raises mean Dice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, TerminateOnNan
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler

__all__ = [
    "PeriodicValidationHandler",
    "TerminateOnNanHandler",
    "ProgressBarHandler",
    "GradientClipHandler",
    "LargestComponentDecision",
    "RunRecordWriter",
]

logger = logging.getLogger(__name__)


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


class LargestComponentDecision:
    """Decide, on the validation split, whether inference keeps only the largest connected component.

    As nnU-Net decides its post-processing: when an evaluation of the training run's ``validation``
    split completes, the mean Dice of the predictions (``plain_metric``) is compared with that of their
    largest components (``largest_metric``); ``keep_largest`` and both figures are written into the
    run's ``plan.json``, which evaluation of other splits and inference then follow.

    Args:
        train_output_dir: the training run's folder (its ``plan.json`` is updated).
        split: the split being evaluated; only ``"validation"`` decides.
        plain_metric: metric name of the predictions' mean Dice.
        largest_metric: metric name of the largest components' mean Dice.
    """

    def __init__(
        self,
        train_output_dir: Union[str, Path],
        split: Optional[str],
        plain_metric: str = "mean_dice",
        largest_metric: str = "mean_dice_largest_component",
    ) -> None:
        self.path = Path(train_output_dir) / "plan.json"
        self.split, self.plain_metric, self.largest_metric = split, plain_metric, largest_metric

    def attach(self, engine: Engine) -> None:
        if self.split == "validation":
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from bundle.planning import update_plan

        plain, largest = engine.state.metrics[self.plain_metric], engine.state.metrics[self.largest_metric]
        keep = bool(largest > plain)
        if update_plan(self.path.parent, keep_largest=keep, keep_largest_dice={"plain": plain, "largest_component": largest}):
            logger.info(
                "Validation Dice %.4f as predicted, %.4f keeping the largest connected component: inference %s it "
                "(recorded in %s).", plain, largest, "keeps" if keep else "does not keep", self.path,
            )  # fmt: skip


class RunRecordWriter:
    """Write the run's split (``datalist.json``) and plan (``plan.json``) into ``output_dir`` when
    training starts: the data are loaded and cached, the network, optimizer and (on resume) checkpoint
    are in place, so a run that fails before leaves the previous run's files as they were. A resumed
    run keeps its own files (its plan holds later choices such as ``keep_largest``).

    Args:
        output_dir: the training run's output folder.
        datalists: the checked training / validation / test lists.
        plan: the run's :class:`bundle.planning.TrainingPlan`.
        dataset_dir: the data folder given (recorded in the split for resume's check), or None.
        datalist: the datalist given, or None.
        resume: whether this run resumes one.
        ckpt_dir: the models folder: a new run moves an earlier run's ``model.pt`` and ``checkpoint.pt``
            into ``ckpt_dir/previous_<time>/``, so the folder never holds files of two runs and nothing is lost.
    """

    def __init__(
        self,
        output_dir: Union[str, Path],
        datalists: Mapping[str, Sequence[Mapping[str, str]]],
        plan: Any,
        dataset_dir: Optional[Union[str, Path]] = None,
        datalist: Optional[Union[str, Path]] = None,
        resume: bool = False,
        ckpt_dir: Optional[Union[str, Path]] = None,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.output_dir = Path(output_dir)
        self.datalists, self.plan = datalists, plan
        self.dataset_dir, self.datalist, self.resume = dataset_dir, datalist, resume

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from bundle.data import SPLIT_FILE, write_training_split
        from bundle.planning import PLAN_FILE, write_plan

        if not self.resume and self.ckpt_dir is not None:
            self._keep_previous_models()
        if not (self.resume and (self.output_dir / SPLIT_FILE).is_file()):
            write_training_split(self.output_dir, self.datalists, self.dataset_dir, self.datalist)
        if not (self.resume and (self.output_dir / PLAN_FILE).is_file()):
            write_plan(self.output_dir, self.plan)

    def _keep_previous_models(self) -> None:
        import datetime
        import os

        earlier = [self.ckpt_dir / n for n in ("model.pt", "checkpoint.pt") if (self.ckpt_dir / n).is_file()]
        if not earlier:
            return
        stamp = datetime.datetime.fromtimestamp(max(p.stat().st_mtime for p in earlier)).strftime("%Y%m%d-%H%M%S")
        keep = self.ckpt_dir / f"previous_{stamp}"
        keep.mkdir(exist_ok=True)
        for path in earlier:
            os.replace(path, keep / path.name)
        logger.info("Moved the earlier run's %s to %s (a new run starts here).", " and ".join(p.name for p in earlier), keep)
