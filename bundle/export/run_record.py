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
"""What a training run recorded: epochs, best validation Dice, the split, the evaluation."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Dict


from bundle.workflows.checkpoints import read_checkpoint
from bundle.workflows.planning import read_plan

logger = logging.getLogger(__name__)

# ---- what the run recorded -------------------------------------------------------------------


def read_run(bundle_root: Path) -> Dict[str, Any]:
    """Epochs trained and best validation Dice (``models/checkpoint.pt``), which weights ``model.pt`` kept
    (``runs/train/plan.json``), the split (``runs/train/datalist.json``) and test figures (``eval/``, written
    by ``configs/evaluate.yaml``), each where present."""
    run: Dict[str, Any] = {}
    checkpoint_path = bundle_root / "models" / "checkpoint.pt"
    if checkpoint_path.is_file():
        checkpoint = read_checkpoint(
            checkpoint_path, mmap=True
        )  # two numbers wanted: leave the optimizer state on disk
        trainer = checkpoint.get("trainer", {})
        saver = checkpoint.get("best_model_saver", {})
        if "epoch" in trainer or "epoch_length" in trainer:  # ignite keeps the iteration count and epoch length
            run["epochs"] = trainer.get("epoch") or trainer["iteration"] // max(1, trainer["epoch_length"])
        if "best_metric" in saver and saver.get("best_metric_epoch", -1) >= 0:
            run["best_val_dice"], run["best_epoch"] = float(saver["best_metric"]), int(saver["best_metric_epoch"])
    plan = read_plan(bundle_root / "runs" / "train")
    if plan:
        run["keep_weights"] = plan.get("keep_weights", "best")
    datalist_path = bundle_root / "runs" / "train" / "datalist.json"
    if datalist_path.is_file():
        with open(datalist_path) as f:
            datalist = json.load(f)
        run["split"] = {k: len(v) for k, v in datalist.items() if isinstance(v, list)}
        images = [
            str(item.get("image", "")) for items in datalist.values() if isinstance(items, list) for item in items
        ]
        run["demo_data"] = bool(images) and all("demo_data" in Path(p).parts for p in images)
        run["test_names"] = sorted(Path(item["image"]).name for item in datalist.get("test", []))
    metrics_path = bundle_root / "eval" / "metrics.csv"
    weights = bundle_root / "models" / "model.pt"
    if metrics_path.is_file() and metrics_path.stat().st_mtime < weights.stat().st_mtime:
        logger.warning(
            "%s is older than %s (another model's evaluation): left out of the model card", metrics_path, weights
        )
    elif metrics_path.is_file():
        with open(metrics_path) as f:
            run["eval"] = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
        raw_path = bundle_root / "eval" / "mean_dice_raw.csv"
        if raw_path.is_file():
            with open(raw_path) as f:
                rows = list(csv.reader(f))[1:]
            names = sorted(Path(row[0]).name for row in rows if row)
            run["eval_count"] = len(names)
            run["eval_is_test_split"] = bool(names) and names == run.get("test_names")
    return run


def _eval_metrics(run: Dict[str, Any]) -> Dict[str, Any]:
    metrics: Dict[str, Any] = {}
    if "eval" in run:
        where = "test split" if run.get("eval_is_test_split") else f"{run.get('eval_count', '?')} evaluated images"
        for key, value in run["eval"].items():
            metrics[key] = round(value, 4)
        metrics["evaluated_on"] = f"the run's {where} at native resolution (configs/evaluate.yaml)"
    if "best_val_dice" in run:
        metrics["best_val_mean_dice"] = round(run["best_val_dice"], 4)
    if not metrics:
        metrics["mean_dice"] = "not measured: run configs/evaluate.yaml before exporting"
    return metrics
