"""Compare networks on Kvasir-SEG through the bundle's own commands; writes docs/results.* figures.

    python scripts/compare_networks.py                                      # the full comparison
    python scripts/compare_networks.py --rows unet ds_transunet --budget-minutes 2 --work /tmp/cmp

There is no second training loop here: every row is the command a user runs,

    python -m monai.bundle run training --config_file "['configs/train.yaml','configs/networks/X.yaml']" \\
        --datalist DATALIST --time_budget_minutes B --seed S [row flags]
    python -m monai.bundle run --config_file "['configs/train.yaml','configs/networks/X.yaml','configs/evaluate.yaml']" \
        --split validation
    python -m monai.bundle run --config_file "['configs/train.yaml','configs/networks/X.yaml','configs/evaluate.yaml']"

so each network gets the plan (scale, batch, epochs fitted to the same wall-clock budget on this
machine), the recipe, the validation-decided largest-component option and the evaluation (Dice,
IoU, HD95 at native resolution on the 100 test images) that `configs/train.yaml` gives it. Each row
trains in its own folder under ``--work``; a row whose ``result.json`` exists is read back, not run
again, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATALIST = os.path.join(REPO, "..", "shared", "data", "kvasir-seg", "datalist_800_100_100.json")

# The bundle's settings before the recipe (commit ac54034): native-resolution 64 px crops, 4 crops of
# 4 images a step, sliding-window validation, no warm-up, no clipping, MONAI's default deep-supervision
# weights, validation every 2 epochs. (The Swin initialisation fix stays: that was a bug, not a setting.)
OLD_DEFAULT = [
    "--image_size", "null", "--roi_size", "[64, 64]", "--batch_size", "4", "--crops_per_image", "4",
    "--warmup_fraction", "0.0", "--max_grad_norm", "0.0", "--deep_supervision_weights", "[1.0, 0.5, 0.25]",
    "--val_interval", "2",
]  # fmt: skip

# key: (label, network config, seeds, extra training flags); the order is the running order, most telling first.
ROWS: Dict[str, tuple] = {
    "ds_transunet": ("DS-TransUNet tiny (default)", "ds_transunet", (0, 1), []),
    "unet": ("UNet (MONAI BasicUNet)", "unet", (0,), []),
    "ds_concat": ("DS-TransUNet tiny, concat fusion (no TIF)", "ablation_multiscale_sd", (0, 1), []),
    "unet_tif": ("UNet+TIF", "unet_tif", (0,), []),
    "swin_unetr": ("SwinUNETR (MONAI)", "swin_unetr", (0,), []),
    "old_default": ("DS-TransUNet tiny, old default settings", "ds_transunet", (0,), OLD_DEFAULT),
}


def config_list(*files: str) -> str:
    return "[" + ",".join(f"'{os.path.join(REPO, f)}'" for f in files) + "]"


def run_logged(command: List[str], log_path: str) -> float:
    """Run a bundle command with its output in ``log_path``; the wall time in seconds."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"compare_networks: exit {code} from {' '.join(command[:6])} ...; see {log_path}")
    return time.perf_counter() - start


def read_metrics(eval_dir: str) -> Dict[str, float]:
    """MONAI MetricsSaver's metrics.csv: one 'name,value' line per metric."""
    with open(os.path.join(eval_dir, "metrics.csv")) as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}


def read_validation_history(output_dir: str) -> List[Dict[str, float]]:
    from tensorboard.backend.event_processing import event_accumulator

    history: Dict[int, float] = {}
    for path in glob.glob(os.path.join(output_dir, "tensorboard", "events.*")):
        events = event_accumulator.EventAccumulator(path)
        events.Reload()
        if "val_mean_dice" in events.Tags()["scalars"]:
            history.update({e.step: e.value for e in events.Scalars("val_mean_dice")})
    return [{"epoch": k, "val_dice": v} for k, v in sorted(history.items())]


def count_parameters(network_config: str) -> float:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "configs", "networks", f"{network_config}.yaml"))
    parser.update({"in_channels": 3, "out_channels": 1, "preset": "tiny"})
    return sum(p.numel() for p in parser.get_parsed_content("network_def").parameters()) / 1e6


def run_row(key: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    label, network_config, _, extra = ROWS[key]
    work = os.path.join(args.work, f"{key}_seed{seed}")
    result_path = os.path.join(work, "result.json")
    if os.path.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(work, exist_ok=True)
    network = f"configs/networks/{network_config}.yaml"
    paths = ["--ckpt_dir", os.path.join(work, "models")]
    train_dir = os.path.join(work, "runs", "train")
    python = [sys.executable, "-m", "monai.bundle", "run"]
    load_before = os.getloadavg()[0]
    train_seconds = run_logged(
        python + ["training", "--config_file", config_list("configs/train.yaml", network), "--datalist", args.datalist,
                  "--time_budget_minutes", str(args.budget_minutes), "--seed", str(seed), "--output_dir", train_dir,
                  *paths, *extra],
        os.path.join(work, "train.log"),
    )  # fmt: skip
    load_after = os.getloadavg()[0]
    evaluate = python + ["--config_file", config_list("configs/train.yaml", network, "configs/evaluate.yaml"), *paths,
                         "--train_output_dir", train_dir]  # fmt: skip
    run_logged(evaluate + ["--split", "validation", "--output_dir", os.path.join(work, "eval_validation")],
               os.path.join(work, "eval_validation.log"))  # fmt: skip
    test_dir = os.path.join(work, "eval_test")
    test_seconds = run_logged(evaluate + ["--output_dir", test_dir], os.path.join(work, "eval_test.log"))
    with open(os.path.join(train_dir, "plan.json")) as f:
        plan = json.load(f)
    test = read_metrics(test_dir)
    history = read_validation_history(train_dir)
    overlays = sorted(glob.glob(os.path.join(test_dir, "predictions", "*_overlay.png")))
    result = {
        "key": key, "network": label, "config": network, "seed": seed, "extra_flags": extra,
        "params_m": count_parameters(network_config),
        "test_dice": test["mean_dice"], "test_iou": test["mean_iou"], "test_hd95": test["hd95"],
        "test_dice_before_largest_component_choice": test.get("mean_dice_largest_component"),
        "keep_largest": plan.get("keep_largest", False), "flip_tta": plan.get("flip_tta", False),
        "best_val_dice": max((h["val_dice"] for h in history), default=float("nan")),
        "image_size": plan["image_size"], "roi_size": plan["roi_size"], "batch_size": plan["batch_size"],
        "crops_per_image": plan["crops_per_image"], "max_epochs": plan["max_epochs"],
        "train_minutes": train_seconds / 60, "test_seconds_per_image": test_seconds / max(len(overlays), 1),
        "load_average_before_after": [load_before, load_after], "history": history,
        "test_overlays": overlays,
    }  # fmt: skip
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def write_figures(results: List[Dict[str, Any]], output: str, grid_images: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    names = [f"{r['network']} (seed {r['seed']})" for r in results]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1))
    ax.barh(names, [r["test_dice"] for r in results], color=["tab:orange" if "DS-" in n else "tab:blue" for n in names])
    for y, r in enumerate(results):
        ax.text(r["test_dice"] + 0.005, y, f"{r['test_dice']:.3f}", va="center")
    ax.set_xlabel("test Dice (Kvasir-SEG, 100 test images, native resolution)")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(output, "results_dice.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, r in zip(names, results):
        ax.plot([h["epoch"] for h in r["history"]], [h["val_dice"] for h in r["history"]], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="validation Dice (native resolution)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(output, "results_curves.png"), dpi=100)
    plt.close(fig)

    rows = min(grid_images, min(len(r["test_overlays"]) for r in results))
    fig, axes = plt.subplots(rows, len(results), figsize=(1.9 * len(results), 1.7 * rows), squeeze=False)
    for col, (name, r) in enumerate(zip(names, results)):
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(Image.open(r["test_overlays"][row]).convert("RGB").resize((256, 224)))
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace(" (", "\n("), fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(output, "results_predictions.png"), dpi=90)
    plt.close(fig)


def write_table(results: List[Dict[str, Any]], output: str, command: str, minutes: float | None) -> str:
    """The results table (also written to ``output/results_table.md``); ``minutes`` None: rebuilt, nothing run."""
    lines = [
        "| network | seed | params (M) | plan (size, batch, epochs trained of planned) | test Dice | test IoU | test HD95 (px) "
        "| best val Dice | largest component | train min | test s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        size = (
            f"{r['image_size'][0]} px whole"
            if r["image_size"]
            else f"{r['roi_size'][0]} px patches x{r['crops_per_image']}"
        )
        # the last epoch is always validated, so the history's last epoch is the last one trained (the budget may cut)
        trained = r["history"][-1]["epoch"] if r["history"] else r["max_epochs"]
        lines.append(
            f"| {r['network']} | {r['seed']} | {r['params_m']:.2f} | {size}, {r['batch_size']}, {trained} of {r['max_epochs']} "
            f"| {r['test_dice']:.4f} | {r['test_iou']:.4f} | {r['test_hd95']:.1f} | {r['best_val_dice']:.4f} "
            f"| {'kept' if r['keep_largest'] else 'not kept'} | {r['train_minutes']:.1f} | {r['test_seconds_per_image']:.2f} |"
        )  # fmt: skip
    table = "\n".join(lines)
    with open(os.path.join(output, "results_table.md"), "w") as f:
        made = "rebuilt from the finished rows" if minutes is None else f"{minutes:.0f} minutes in all"
        f.write(f"Made by `{command}` ({made}).\n\n{table}\n")
    return table


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", default=DEFAULT_DATALIST, help="a MONAI datalist (training / validation / test)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override every row's seeds")
    parser.add_argument(
        "--budget-minutes", type=float, default=12, help="training time per network (--time_budget_minutes)"
    )
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "compare"), help="one folder per row and seed")
    parser.add_argument(
        "--output", default=os.path.join(REPO, "docs"), help="where results.json, the table and figures go"
    )
    parser.add_argument("--grid-images", type=int, default=4)
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the table and figures from the finished rows; train nothing"
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(args.datalist):
        sys.exit(f"compare_networks: no datalist at {args.datalist} (give --datalist)")
    args.datalist = os.path.abspath(args.datalist)
    start = time.perf_counter()
    results = []
    for key in args.rows:
        for seed in args.seeds or ROWS[key][2]:
            if args.report_only:
                done = os.path.join(args.work, f"{key}_seed{seed}", "result.json")
                if os.path.isfile(done):
                    with open(done) as f:
                        results.append(json.load(f))
                continue
            print(
                f"{ROWS[key][0]}, seed {seed}: training ({args.budget_minutes:g} min budget) and evaluating", flush=True
            )
            results.append(run_row(key, seed, args))
            r = results[-1]
            print(f"  test Dice {r['test_dice']:.4f} IoU {r['test_iou']:.4f} HD95 {r['test_hd95']:.1f}", flush=True)
            os.makedirs(args.output, exist_ok=True)
            with open(os.path.join(args.output, "results.json"), "w") as f:  # partial results survive an interruption
                json.dump({"budget_minutes": args.budget_minutes, "results": results}, f, indent=2)
    if not results:
        sys.exit(f"compare_networks: no finished rows in {args.work}")
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"budget_minutes": args.budget_minutes, "results": results}, f, indent=2)
    command = "python scripts/compare_networks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_figures(results, args.output, args.grid_images)
    minutes = None if args.report_only else (time.perf_counter() - start) / 60
    print(write_table(results, args.output, command.strip(), minutes))
    if any(math.isnan(r["test_hd95"]) for r in results):
        print("note: HD95 is NaN where every prediction or mask was empty")


if __name__ == "__main__":
    main()
