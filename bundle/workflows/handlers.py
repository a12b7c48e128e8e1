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

"""Small ignite handlers with the ``attach(engine)`` that MONAI workflows call.

- :class:`PeriodicValidationHandler`: MONAI's ``ValidationHandler`` that also validates after the
  last epoch, so a run whose length is not a multiple of the interval still ends validated (and
  has a best model).
- :class:`TimeBudgetHandler`: refits the epochs and the learning-rate schedule to the pace the run
  measures, and ends training (validated) where the next epoch would pass the time budget.
- :class:`TerminateOnNanHandler`: ignite's ``TerminateOnNan``.
- :class:`ProgressBarHandler`: ignite's tqdm ``ProgressBar``.
- :class:`GradientClipHandler`: clips the gradient norm between backward and the optimizer step.
- :class:`RunRecordWriter`: writes the run's split and plan when training starts, after every check.
- :class:`LargestComponentDecision`: after evaluating the validation split, records in the training
  plan whether keeping the largest connected component raises mean Dice.
- :class:`TrackingRecord`: with ``--tracking mlflow``, adds the plan's settings and, at the end, the
  best model and the run's records to the MLflow run that MONAI's own handler keeps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar, TerminateOnNan
from monai.engines.utils import IterationEvents
from monai.handlers import ValidationHandler

from bundle.errors import flag

__all__ = [
    "PeriodicValidationHandler",
    "TimeBudgetHandler",
    "TerminateOnNanHandler",
    "ProgressBarHandler",
    "GradientClipHandler",
    "LargestComponentDecision",
    "RunRecordWriter",
    "TrackingRecord",
]

logger = logging.getLogger(__name__)


class PeriodicValidationHandler(ValidationHandler):
    """Run the validator every ``interval`` epochs and after the last epoch (epoch level only).

    Arguments as MONAI's ``ValidationHandler`` (``epoch_level`` must stay true).
    """

    def attach(self, engine: Engine) -> None:
        if not self.epoch_level:
            raise ValueError(
                "PeriodicValidationHandler validates at epoch level; use ValidationHandler for iterations."
            )
        interval = self.interval

        def due(engine: Engine, epoch: int) -> bool:
            return epoch % interval == 0 or epoch == engine.state.max_epochs

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


class TimeBudgetHandler:
    """Fit training to ``minutes`` as it runs: refit the schedule to the measured pace after each
    validation, then end training after the epoch where going on would pass the budget.

    The plan fits ``max_epochs`` into 90% of the budget from one training step timed when training
    starts, but the loop's pace differs from that step and drifts (Kvasir-SEG: epochs of 40-41 s
    against 33 s planned on one day; on another, epochs 2-5 took 36-42 s and the later ones 31-33 s).
    Ending at the budget alone would cut the learning-rate schedule short (a 2026-12-02 run stopped
    after epoch 85 of 93), and a single refit from the first epochs would fix a passing slowness
    into the whole run. So, with ``lr_scheduler`` given, after every epoch that follows a validation
    the handler counts the epochs that fit ``fill`` of the budget at the pace measured so far (all
    epochs but the first, which warms up); where that is fewer than ``max_epochs``, or at least two
    more, it sets ``max_epochs`` and the schedule's length (``t_total``; the warm-up keeps its steps)
    to it, so the decay ends inside the budget, and records the refit in the run's ``plan.json``,
    which a resumed run reads. It does not refit a resumed run (the budget clock starts again at a
    resume).

    After every epoch, going on means its validation (if due), one more epoch, and the validation after
    that epoch (the last one is always validated): the handler assumes the epoch takes as long as the
    longer of the last two, and each validation as long as the longest time so far between an epoch's
    end and the next one's start. Stopping sets ``max_epochs`` to the current epoch, so the validation
    after the last epoch still runs (attach this before :class:`PeriodicValidationHandler`). Under DDP
    rank 0 decides for all.

    Args:
        minutes: the training time budget (``time_budget_minutes``).
        enabled: false where the epochs were given rather than fitted to the budget.
        lr_scheduler: the per-iteration schedule to refit, with a ``t_total`` in iterations (MONAI's
            ``WarmupCosineSchedule``); None: no refit, only the stop.
        val_interval: the epochs between validations (the plan's).
        output_dir: the training run's folder, whose ``plan.json`` records a refit; None: not recorded.
        fill: the share of the budget a refit fits the remaining epochs into (the stop guards the rest).
    """

    def __init__(
        self,
        minutes: float,
        enabled: bool = True,
        lr_scheduler: Any = None,
        val_interval: int = 1,
        output_dir: str | Path | None = None,
        fill: float = 0.95,
    ) -> None:
        if lr_scheduler is not None and not hasattr(lr_scheduler, "t_total"):
            raise TypeError(
                f"TimeBudgetHandler refits a schedule with a t_total (MONAI's WarmupCosineSchedule), not a "
                f"{type(lr_scheduler).__name__}; give lr_scheduler: null to only stop at the budget."
            )
        self.seconds = float(minutes) * 60.0
        self.enabled = enabled
        self.lr_scheduler, self.val_interval, self.fill = lr_scheduler, max(1, int(val_interval)), float(fill)
        self.output_dir = output_dir
        self._start = self._epoch_start = 0.0
        self._epoch_end: float | None = None
        self._trained: list = []  # seconds of each epoch's iterations
        self._gaps: list = []  # seconds from each epoch's end to the next one's start (validations are the long ones)
        self._refits = False  # a fresh run with a schedule to refit
        self._planned = 0

    @property
    def _between(self) -> float:  # the longest gap so far: an epoch's validation
        return max(self._gaps, default=0.0)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        self._epoch_end, self._trained, self._gaps = None, [], []

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_start = time.perf_counter()
        if self._epoch_end is None:  # this run's first epoch: the first of the training, or not (a resume)
            self._refits = self.lr_scheduler is not None and engine.state.epoch == 1
            self._planned = engine.state.max_epochs
        else:
            self._gaps.append(self._epoch_start - self._epoch_end)

    def __call__(self, engine: Engine) -> None:
        now = self._epoch_end = time.perf_counter()
        self._trained.append(now - self._epoch_start)
        if engine.state.epoch >= engine.state.max_epochs:
            return
        epoch = engine.state.epoch
        if self._refits and epoch > self.val_interval and (epoch - 1) % self.val_interval == 0:
            self._refit(engine, now)  # a validation has just run and been measured
        going_on = 2 * self._between + max(self._trained[-2:])
        if _decided_by_rank_0(float(now - self._start + going_on > self.seconds)):
            logger.warning(
                "Time budget: %.1f of %.1f minutes used after epoch %d of %d; another epoch and its validation "
                "would take up to %.0f s: training ends here (this machine runs slower than when the plan timed it).",
                (now - self._start) / 60.0, self.seconds / 60.0, engine.state.epoch, engine.state.max_epochs,
                going_on,
            )  # fmt: skip
            engine.state.max_epochs = engine.state.epoch

    def _refit(self, engine: Engine, now: float) -> None:
        """Set ``max_epochs`` and the schedule's length to what fits ``fill`` of the budget at the pace
        measured so far (a first epoch, which warms up, counts only when it is the only one): shorter
        whenever fewer fit, longer only by two epochs or more (the pace jitters)."""
        epoch, current = engine.state.epoch, engine.state.max_epochs
        trained = self._trained[1:] or self._trained
        training = sum(trained) / len(trained)
        idle = min(self._gaps)  # between two epochs without a validation (checkpoint, logging)
        validation = self._between
        per_epoch = training + idle + (validation - idle) / self.val_interval
        left = self.fill * self.seconds - (now - self._start) - validation  # the last epoch is validated
        fitted = epoch + int(left // per_epoch)
        refit = epoch < fitted and (fitted < current or fitted >= current + 2)
        epochs = int(_decided_by_rank_0(float(fitted if refit else 0)))
        if not epochs:
            return
        steps_per_epoch = engine.state.epoch_length
        self.lr_scheduler.t_total = epochs * steps_per_epoch
        self.lr_scheduler.warmup_steps = min(self.lr_scheduler.warmup_steps, self.lr_scheduler.t_total)
        engine.state.max_epochs = epochs
        logger.warning(
            "Time budget: after epoch %d, epochs take %.1f s and validations %.1f s; %d epochs fit %.0f%% of the "
            "%.1f minutes (planned %d, until now %d): max_epochs and the learning-rate schedule now end at epoch %d.",
            epoch, training, validation, epochs, 100 * self.fill, self.seconds / 60.0, self._planned, current, epochs,
        )  # fmt: skip
        if self.output_dir is not None and idist.get_rank() == 0:
            from bundle.workflows.planning import update_plan

            update_plan(
                self.output_dir,
                max_epochs=epochs,
                budget_refit={
                    "after_epoch": epoch,
                    "planned_epochs": self._planned,
                    "seconds_per_epoch": round(training, 2),
                    "seconds_per_validation": round(validation, 2),
                    "epochs": epochs,
                },
            )


def _decided_by_rank_0(value: float) -> float:
    """``value`` as rank 0 has it, on every process of a distributed run (timings differ between processes)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = torch.tensor(value, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        box = box.cuda()
    dist.broadcast(box, src=0)
    return float(box.item())


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

    def __init__(self, output_transform: Callable | None = None, desc: str = "", persist: bool = False) -> None:
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

    def __init__(self, max_norm: float | None = 1.0) -> None:
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        if self.max_norm:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


class HeapReleaseHandler:
    """When training starts, hand freed heap memory back to the operating system as the networks'
    recomputed segments run backward (``bundle.networks.memory.enable_heap_release``: Linux with glibc;
    a process-wide allocator setting, so the training side decides it, not a network).

    Args:
        enabled: True where it pays, training a network with ``use_checkpoint`` on the CPU (train.yaml's
            setting). Elsewhere the 1 MB mmap threshold costs time for memory that is not the limit: the
            ``base`` 512 px step without checkpointing took 30.1 s instead of 21.2 s with it (2525 MB instead
            of 3052 MB peak; scripts/benchmark.py's worker, docs/benchmarks.md).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from bundle.networks.memory import enable_heap_release

        if enable_heap_release(self.enabled):
            logger.debug("Freed CPU heap goes back to the OS during backward (glibc mmap threshold 1 MB).")


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
        train_output_dir: str | Path,
        split: str | None,
        plain_metric: str = "mean_dice",
        largest_metric: str = "mean_dice_largest_component",
    ) -> None:
        self.path = Path(train_output_dir) / "plan.json"
        self.split, self.plain_metric, self.largest_metric = split, plain_metric, largest_metric

    def attach(self, engine: Engine) -> None:
        if self.split == "validation":
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from bundle.workflows.planning import update_plan

        plain, largest = engine.state.metrics[self.plain_metric], engine.state.metrics[self.largest_metric]
        keep = bool(largest > plain)
        if update_plan(
            self.path.parent, keep_largest=keep, keep_largest_dice={"plain": plain, "largest_component": largest}
        ):
            logger.info(
                "Validation Dice %.4f as predicted, %.4f keeping the largest connected component: inference %s it "
                "(recorded in %s).",
                plain,
                largest,
                "keeps" if keep else "does not keep",
                self.path,
            )


class RunRecordWriter:
    """Write the run's split (``datalist.json``) and plan (``plan.json``) into ``output_dir`` when
    training starts: the data are loaded and cached, the network, optimizer and (on resume) checkpoint
    are in place, so a run that fails before leaves the previous run's files as they were. A resumed
    run keeps its own files (its plan holds later choices such as ``keep_largest``).

    Args:
        output_dir: the training run's output folder.
        datalists: the checked training / validation / test lists.
        plan: the run's :class:`bundle.workflows.planning.TrainingPlan`.
        dataset_dir: the data folder given (recorded in the split for resume's check), or None.
        datalist: the datalist given, or None.
        resume: whether this run resumes one.
        ckpt_dir: the models folder: a new run moves an earlier run's ``model.pt`` and ``checkpoint.pt``
            into ``ckpt_dir/previous_<time>/``, so the folder never holds files of two runs and nothing is lost.
    """

    def __init__(
        self,
        output_dir: str | Path,
        datalists: Mapping[str, Sequence[Mapping[str, str]]],
        plan: Any,
        dataset_dir: str | Path | None = None,
        datalist: str | Path | None = None,
        resume: bool = False,
        ckpt_dir: str | Path | None = None,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.output_dir = Path(output_dir)
        self.datalists, self.plan = datalists, plan
        self.dataset_dir, self.datalist, self.resume = dataset_dir, datalist, flag("resume", resume)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from bundle.data.datalists import SPLIT_FILE, write_training_split
        from bundle.workflows.planning import PLAN_FILE, write_plan

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
        logger.info(
            "Moved the earlier run's %s to %s (a new run starts here).", " and ".join(p.name for p in earlier), keep
        )


class TrackingRecord:
    """Complete the MLflow run that ``--tracking mlflow`` records (MONAI's ``MLFlowHandler``, which logs
    the loss, the learning rate, the validation metrics and the executed config) with what it cannot
    know: the plan's settings as parameters when training starts, and ``model.pt`` (the weights the
    plan keeps: best validation or final), ``plan.json`` and ``datalist.json`` as artifacts after the last epoch; a run
    that raises is marked FAILED instead of being left RUNNING. Does nothing when no MLflow handler
    is attached to the trainer (no ``--tracking``).

    Args:
        plan: the run's :class:`bundle.workflows.planning.TrainingPlan`.
        ckpt_dir: the models folder (``model.pt``).
        output_dir: the run's folder (``plan.json``, ``datalist.json``).
    """

    def __init__(self, plan: Any, ckpt_dir: str | Path, output_dir: str | Path) -> None:
        self.plan = plan
        self.files = [Path(ckpt_dir) / "model.pt", Path(output_dir) / "plan.json", Path(output_dir) / "datalist.json"]
        self.tracker: Any = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    @staticmethod
    def _mlflow_handler(engine: Engine) -> Any:
        try:
            from monai.handlers import MLFlowHandler
        except ImportError:  # pragma: no cover - MONAI without its handlers' optional imports
            return None
        for handler, _, _ in engine._event_handlers.get(Events.STARTED, []):
            owner = getattr(handler, "__self__", None)
            if isinstance(owner, MLFlowHandler):
                return owner
        return None

    def started(self, engine: Engine) -> None:
        # attached after MONAI's handler (train#handlers come first), so its run exists by now
        self.tracker = self._mlflow_handler(engine)
        if self.tracker is None or self.tracker.cur_run is None:
            return
        # first in line: ignite stops at the first EXCEPTION_RAISED handler that raises (StatsHandler's)
        if engine.has_event_handler(self.failed, Events.EXCEPTION_RAISED):
            return
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)
        failure_handlers = engine._event_handlers[Events.EXCEPTION_RAISED]
        failure_handlers.insert(0, failure_handlers.pop())
        run = self.tracker.client.get_run(self.tracker.cur_run.info.run_id)
        params = {
            "image_size": self.plan.image_size,
            "roi_size": self.plan.roi_size,
            "batch_size": self.plan.batch_size,
            "crops_per_image": self.plan.crops_per_image,
            "intensity": self.plan.intensity,
            "time_budget_minutes": self.plan.time_budget_minutes,
            **{str(k): v for k, v in self.plan.settings.items()},
        }
        for key, value in params.items():
            if key not in run.data.params:  # a resumed run keeps the values it started with
                self.tracker.client.log_param(run.info.run_id, key, str(value))

    def epoch_completed(self, engine: Engine) -> None:
        # the last epoch, after its validation (train#handlers run first): the best model is on disk
        if self.tracker is None or self.tracker.cur_run is None or engine.state.epoch < engine.state.max_epochs:
            return
        for path in self.files:
            if path.is_file():
                self.tracker.client.log_artifact(self.tracker.cur_run.info.run_id, str(path))

    def failed(self, engine: Engine, error: BaseException) -> None:
        if self.tracker is not None and self.tracker.cur_run is not None:
            self.tracker.client.set_terminated(self.tracker.cur_run.info.run_id, "FAILED")
            self.tracker.cur_run = None
        if len(engine._event_handlers[Events.EXCEPTION_RAISED]) == 1:
            raise error  # ignite hands the exception to its handlers; the others (StatsHandler) re-raise it
