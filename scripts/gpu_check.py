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
"""The GPU path in one run (issue 10): AMP training steps, a one-epoch bundle run, and the exported TorchScript.

    python scripts/gpu_check.py --output gpu_check.json                         # on a CUDA machine, under 8 minutes
    python scripts/gpu_check.py --data ../shared/data/kvasir-seg/datalist_800_100_100.json --authors-code DIR
    python scripts/gpu_check.py --device cpu --quick --output /tmp/gpu_check.json   # a smoke test of this script

What it measures, each part under its own time limit so that one slow part cannot use up the others':

1. ``steps``: AMP (float16 autocast and a gradient scaler) training steps of DSTransUNet ``base`` at 352 and
   512 px (batch 4; with ``--authors-code``, the authors' ``UNet(128, 1)`` in the same run): images/s over
   the timed steps after warm-up, and peak CUDA memory; the largest size also at twice the batch, and with
   ``--profile`` one step of each model under ``torch.profiler`` (wall time against kernel time, kernel count);
2. ``bundle_epoch``: ``python -m monai.bundle run training --config_file configs/train.yaml --preset base
   --max_epochs 1`` on ``--data`` (AMP is on by default on CUDA), then the evaluate workflow on the test split:
   wall time, epoch time and test Dice;
3. ``torchscript``: that run exported (``python -m bundle.export``), ``models/model.ts`` loaded on CUDA and
   compared with the PyTorch network on CUDA at the size it was traced at (max abs difference, ms per image).

Figures go to ``--output`` (JSON) and are printed as a Markdown table with the card's name, for
docs/benchmarks.md. Without a CUDA device (and without ``--device cpu``) it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))
from benchmark import _outputs_sum  # noqa: E402  (the CPU benchmark's loss: the mean of every output)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back, so that the next model's peak is its own."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _amp_training_step(
    build: Callable[[], torch.nn.Module], size: int, batch: int, device: torch.device
) -> Tuple[torch.nn.Module, Callable[[], None]]:
    """``build()`` on ``device`` and one training step of it on a fixed random batch: float16 autocast and a
    gradient scaler on CUDA, plain float32 elsewhere; AdamW."""
    torch.manual_seed(0)
    model = build().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    x = torch.rand(batch, 3, size, size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = _outputs_sum(model(x))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def training_steps(
    build: Callable[[], torch.nn.Module], size: int, batch: int, device: torch.device, warmup: int, steps: int
) -> Dict[str, Any]:
    """AMP training steps of ``build()`` on random images: images/s and peak memory."""
    model, step = _amp_training_step(build, size, batch, device)
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: List[float] = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    result = {
        "size": size,
        "batch": batch,
        "step_s": statistics.median(times),
        "images_per_s": batch / statistics.median(times),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device.type == "cuda":
        result["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    del model, step
    return result


def profile_step(build: Callable[[], torch.nn.Module], size: int, batch: int, device: torch.device) -> Dict[str, Any]:
    """One AMP training step of ``build()`` under ``torch.profiler`` after two warm-up steps: wall time against
    the time the device's kernels ran, how many kernels it launched, and the operators that took the most
    host (CPU) and device time. Kernel time far below wall time means the step waits on the host (launches)."""
    from torch.profiler import ProfilerActivity, profile

    model, step = _amp_training_step(build, size, batch, device)
    for _ in range(2):
        step()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        _sync(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]

    def top(key: Callable[[Any], float]) -> List[List[Any]]:
        ranked = sorted(events, key=key, reverse=True)[:8]
        return [[e.key[:60], e.count, round(key(e) / 1e3, 1)] for e in ranked]  # microseconds to ms

    result = {
        "size": size,
        "batch": batch,
        "wall_ms": round(1000 * wall, 1),
        "host_ops": sum(e.count for e in events if e.key.startswith("aten::")),
        "kernels": len(kernels),
        "kernel_ms": round(sum(k.time_range.elapsed_us() for k in kernels) / 1e3, 1),
        "top_host_self_ms": top(lambda e: e.self_cpu_time_total),
    }
    if kernels:
        result["top_device_self_ms"] = top(lambda e: e.self_device_time_total)
    del model, step
    return result


def _run(command: List[str], log: str, timeout: float) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=True)
    return time.perf_counter() - start


def bundle_epoch(data: str, work: str, preset: str, device: torch.device, timeout: float) -> Dict[str, Any]:
    """One epoch of the bundle's own training on ``data`` (a datalist JSON or a dataset folder), then its evaluation."""
    if data == "demo":  # the bundle's generated demo set (a smoke test)
        source = ["--demo_count", "12"]
    else:
        source = ["--datalist", data] if data.endswith(".json") else ["--dataset_dir", data]
    common = ["--bundle_root", work, "--preset", preset, "--device", device.type]
    run = [sys.executable, "-m", "monai.bundle", "run"]
    train_s = _run(
        [*run, "training", "--config_file", "configs/train.yaml", *source, *common, "--max_epochs", "1"],
        os.path.join(work, "train.log"),
        timeout,
    )
    eval_s = _run(
        [*run, "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", *common], os.path.join(work, "evaluate.log"), timeout
    )
    metrics = {}
    with open(os.path.join(work, "eval", "metrics.csv")) as f:
        for line in f:
            name, _, value = line.strip().partition(",")
            metrics[name] = float(value)
    with open(os.path.join(work, "runs", "train", "plan.json")) as f:
        plan = json.load(f)
    return {
        "train_s": train_s,
        "evaluate_s": eval_s,
        "test_mean_dice": metrics.get("mean_dice"),
        "plan": {k: plan.get(k) for k in ("image_size", "roi_size", "batch_size", "crops_per_image")},
    }


def exported_torchscript(work: str, preset: str, device: torch.device, timeout: float) -> Dict[str, Any]:
    """The run in ``work`` exported; its ``models/model.ts`` on ``device`` against the PyTorch network there,
    at the size it was traced at (the plan's whole-image size or window)."""
    with open(os.path.join(work, "runs", "train", "plan.json")) as f:
        plan = json.load(f)
    height, width = plan.get("image_size") or plan.get("roi_size")
    dist = os.path.join(work, "dist")
    _run(
        [sys.executable, "-m", "bundle.export", "--name", "gpu_check", "--bundle_root", work, "--output", dist,
         "--preset", preset, "--overwrite"],
        os.path.join(work, "export.log"),
        timeout,
    )  # fmt: skip
    from monai.bundle import ConfigParser

    from bundle.workflows.checkpoints import load_model_weights

    bundle = os.path.join(dist, "gpu_check")
    scripted = torch.jit.load(os.path.join(bundle, "models", "model.ts"), map_location=device).eval()
    parser = ConfigParser()  # the network as the exported bundle states it (stem and all), as ckpt_export builds it
    parser.read_config(os.path.join(bundle, "configs", "inference.json"))
    parser["bundle_root"] = bundle
    network = parser.get_parsed_content("network_def")
    load_model_weights(network, os.path.join(bundle, "models", "model.pt"))
    network = network.to(device).eval()
    x = torch.rand(1, 3, height, width, device=device)
    times = []
    with torch.no_grad():
        difference = float((scripted(x) - network(x)).abs().max())
        for _ in range(6):
            _sync(device)
            start = time.perf_counter()
            scripted(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    return {
        "size": [height, width],
        "max_abs_difference": difference,
        "ms_per_image": 1000 * statistics.median(times[1:]),
    }


def _guarded(name: str, results: Dict[str, Any], part: Callable[[], Any]) -> None:
    start = time.perf_counter()
    try:
        results[name] = part()
    except Exception as e:  # one part failing must not lose the others' figures
        results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)


def report(results: Dict[str, Any]) -> str:
    precision = "float32, no AMP" if results["device_name"] == "CPU" else "AMP float16"
    lines = [f"GPU check on {results['device_name']} (PyTorch {results['torch']}, {precision})", ""]
    lines += ["| model | size | batch | images/s | peak GB |", "|---|---|---|---|---|"]
    for row in results.get("steps", []):
        if "error" in row:
            lines.append(f"| {row['model']} | {row.get('size', '')} | | error: {row['error']} | |")
        else:
            peak = f"{row['peak_gb']:.2f}" if "peak_gb" in row else "n/a"
            lines.append(f"| {row['model']} | {row['size']} | {row['batch']} | {row['images_per_s']:.1f} | {peak} |")
    for row in results.get("profiles", []):
        lines += ["", f"Profile of one step, {row['model']}: {json.dumps(row)}"]
    epoch = results.get("bundle_epoch")
    if epoch:
        lines += ["", f"One-epoch bundle run ({results['preset']}): {json.dumps(epoch)}"]
    ts = results.get("torchscript")
    if ts:
        lines += ["", f"Exported TorchScript on the device: {json.dumps(ts)}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--data", default=None, help="a datalist JSON, a dataset folder or 'demo', for the one-epoch run"
    )
    parser.add_argument("--authors-code", default=None, help="folder with the authors' lib/DS_TransUNet.py")
    parser.add_argument("--quick", action="store_true", help="tiny preset and sizes (a smoke test of this script)")
    parser.add_argument("--profile", action="store_true", help="profile one step of each model at the largest size")
    parser.add_argument("--part-timeout", type=float, default=180.0, help="seconds for each subprocess part")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (give --device cpu for a smoke test)")
        return 2
    preset, sizes, batch, warmup, steps = ("tiny", (64, 128), 2, 1, 2) if args.quick else ("base", (352, 512), 4, 3, 10)
    results: Dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "preset": preset,
        "steps": [],
    }
    from bundle.networks import DSTransUNet

    builders = {f"DSTransUNet {preset}": lambda: DSTransUNet(preset=preset, deep_supervision=True)}
    if args.authors_code:
        sys.path.insert(0, args.authors_code)

        def authors() -> torch.nn.Module:
            from lib.DS_TransUNet import UNet  # the authors' code, from outside this project

            return UNet(128, 1)

        builders["authors' UNet(128, 1)"] = authors
    # the paper's sizes at the batch, and the largest at twice the batch: whether a step's time follows its work
    shapes = [(size, batch) for size in sizes] + [(sizes[-1], 2 * batch)]
    for name, build in builders.items():
        for size, n in shapes:
            row: Dict[str, Any] = {}
            _guarded("steps", row, lambda: training_steps(build, size, n, device, warmup, steps))
            results["steps"].append({"model": name, "size": size, "batch": n, **row["steps"]})
            _free(device)
        if args.profile:
            row = {}
            _guarded("profile", row, lambda: profile_step(build, sizes[-1], batch, device))
            results.setdefault("profiles", []).append({"model": name, **row["profile"]})
            _free(device)
    if args.data:
        work = tempfile.mkdtemp(prefix="gpu_check_")
        _guarded("bundle_epoch", results, lambda: bundle_epoch(args.data, work, preset, device, args.part_timeout))
        if "error" not in results["bundle_epoch"]:
            _guarded("torchscript", results, lambda: exported_torchscript(work, preset, device, args.part_timeout))
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
