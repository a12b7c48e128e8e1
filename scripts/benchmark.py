"""Speed and memory of TIF and DSTransUNet on this machine; writes a Markdown table.

Every case runs in a fresh Python process, so its peak process memory (``ru_maxrss``) is its own.
Time is the median of ``--repeats`` runs after one warm-up run.

    python scripts/benchmark.py                      # full run, writes docs/benchmarks.md
    python scripts/benchmark.py --quick --output /tmp/bench.md
    python scripts/benchmark.py --authors-code /path/to/DS-TransUNet   # adds the authors' model
    python scripts/benchmark.py --count-flops                   # FLOP counts only, as JSON (no timing)

``--authors-code`` takes a folder holding the authors' ``lib/DS_TransUNet.py`` made runnable on the
CPU (their code needs ``timm`` and ``mmseg`` and calls ``.cuda()``); it is never part of this project.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn as nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bundle.networks.memory import CHEAP_RECOMPUTE_MIN_BYTES  # noqa: E402
from bundle.networks.nets.ds_transunet import PRESETS  # noqa: E402
from bundle.workflows.inferers import cpu_has_native_bf16  # noqa: E402


# -- the naive reference: the seed's TIF written with einsum and a materialised attention matrix --
class NaiveAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Identity() if (heads == 1 and dim_head == dim) else nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = (torch.einsum("bhid,bhjd->bhij", q, k) * self.scale).softmax(dim=-1)
        return self.to_out(torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(b, n, -1))


class NaivePreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class NaiveFeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NaiveTransformer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        NaivePreNorm(dim, NaiveAttention(dim, heads, dim_head)),
                        NaivePreNorm(dim, NaiveFeedForward(dim, mlp_dim)),
                    ]
                )
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class NaiveTIF(nn.Module):
    """The seed's TIF, in its own parameter layout, as plainly as it can be written."""

    def __init__(self, dim_s: int, dim_l: int, pair: bool = False) -> None:
        super().__init__()
        self.transformer_s = NaiveTransformer(dim_s, 3, 32, 128)
        self.transformer_l = NaiveTransformer(dim_l, 1, 64, 256)
        self.norm_s, self.norm_l = nn.LayerNorm(dim_s), nn.LayerNorm(dim_l)
        self.linear_s, self.linear_l = nn.Linear(dim_s, dim_l), nn.Linear(dim_l, dim_s)
        self.pair = pair

    def forward(self, e: torch.Tensor, r: torch.Tensor):
        e_seq, r_seq = e.flatten(2).transpose(1, 2), r.flatten(2).transpose(1, 2)
        e_t = self.linear_l(self.norm_l(e_seq).mean(dim=1)).unsqueeze(1)
        r_t = self.linear_s(self.norm_s(r_seq).mean(dim=1)).unsqueeze(1)
        r_out = self.transformer_s(torch.cat([e_t, r_seq], dim=1))[:, 1:].transpose(1, 2).reshape(r.shape)
        e_out = self.transformer_l(torch.cat([r_t, e_seq], dim=1))[:, 1:].transpose(1, 2).reshape(e.shape)
        return (e_out, r_out) if self.pair else e_out + r_out


# -- one measurement, in a worker process -----------------------------------------------------
def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _outputs_sum(out: Any) -> torch.Tensor:
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum(o.float().mean() for o in outs)


def _build(case: Dict[str, Any]):
    torch.manual_seed(0)
    if case["kind"] in ("tif", "naive_tif"):
        c, s, b = case["channels"], case["tokens_side"], case["batch"]
        if case["kind"] == "tif":
            from bundle.networks import TIF

            model = TIF(c, c)
        else:
            model = NaiveTIF(c, c)
        inputs = (torch.rand(b, c, s, s), torch.rand(b, c, s, s))
        return model, inputs
    size = case["size"]
    x = torch.rand(case.get("batch", 1), 3, size, size)
    if case["kind"] == "authors":
        sys.path.insert(0, case["authors_code"])
        from lib.DS_TransUNet import UNet  # the authors' code, from outside this project

        return UNet(128, 1), (x,)
    from bundle.networks import DSTransUNet

    model = DSTransUNet(preset=case["preset"], deep_supervision=True, use_checkpoint=case.get("checkpoint", False))
    return model, (x,)


# the cheap-recomputation threshold the "What recomputation buys" cases force (None: the network decides)
_CHEAP_THRESHOLDS = {"auto": None, "always": 0, "never": float("inf")}


def _autocast(case: Dict[str, Any]) -> Any:
    """bf16 autocast on the CPU for a ``precision: bf16`` case (fp32 weights, bf16 matrix work), else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.get("precision") == "bf16")


def _train_step(model: nn.Module, inputs: Any, autocast: Any = None) -> None:
    with autocast or contextlib.nullcontext():
        total = _outputs_sum(model(*inputs))
    total.backward()
    model.zero_grad(set_to_none=True)


def _bf16_differences(model: nn.Module, inputs: Any) -> Dict[str, float]:
    """How far one training step under bf16 autocast is from fp32 on the same weights and input: the
    relative L2 difference of the main logits and of all gradients (drop path off, so both see one network)."""
    for module in model.modules():  # the same stochastic depth in both steps: none
        if type(module).__name__ == "DropPath":
            module.drop_prob = 0.0
    model.train()
    found: Dict[str, List[torch.Tensor]] = {}
    for precision in ("fp32", "bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            outs = model(*inputs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        _outputs_sum(outs).backward()
        found[precision] = [outs[0].detach().float(), torch.cat([p.grad.flatten() for p in model.parameters()])]
        model.zero_grad(set_to_none=True)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    return {"logits_rel": rel(found["bf16"][0], found["fp32"][0]), "grads_rel": rel(found["bf16"][1], found["fp32"][1])}


def _profile_rows(step: Callable[[], None], rows: int) -> List[Dict[str, Any]]:
    """The operators taking the most time in one ``step()`` (self CPU time, torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {"op": e.key, "calls": e.count, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in events[:rows]
    ]


def _count_cpu_attention_flops() -> None:
    """Give FlopCounterMode the CPU flash-attention kernels, which it does not count by itself
    (``F.scaled_dot_product_attention`` on the CPU would count 0 FLOPs)."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):  # type: ignore[no-untyped-def]
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):  # type: ignore[no-untyped-def]
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _gflops(step: Callable[[], None]) -> float:
    """GFLOPs of one ``step()`` as torch's FlopCounterMode counts them (CPU flash attention included)."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def _tif_sides(quick: bool) -> List[int]:
    return [16, 32] if quick else [32, 64, 88, 128]


def _preset_grid(quick: bool) -> List[Tuple[str, List[int]]]:
    return [("tiny", [64])] if quick else [(p, [256, 352, 512]) for p in ("tiny", "small", "base")]


def run_case(case: Dict[str, Any]) -> Dict[str, Any]:
    torch.set_num_threads(case["threads"])
    if case["kind"] == "matmul":  # the machine's matrix-multiply rate, for scale
        dtype = torch.bfloat16 if case.get("precision") == "bf16" else torch.float32
        a, b = torch.rand(2048, 2048, dtype=dtype), torch.rand(2048, 2048, dtype=dtype)
        times = []
        for _ in range(case["repeats"] + 1):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return {"gflops_per_s": 2 * 2048**3 / statistics.median(times[1:]) / 1e9}
    model, inputs = _build(case)
    result: Dict[str, Any] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if case["mode"] == "precision":
        return dict(result, **_bf16_differences(model, inputs))
    if case["mode"] == "forward":
        model.eval()
        grad: Any = torch.no_grad

        def step() -> None:
            with _autocast(case):
                model(*inputs)

    else:
        if case["kind"] == "ds":
            from bundle.networks import memory

            if case.get("checkpoint"):  # as the bundle's training does (HeapReleaseHandler)
                memory.enable_heap_release()
            threshold = _CHEAP_THRESHOLDS[case.get("cheap", "auto")]
            if threshold is not None:
                memory.CHEAP_RECOMPUTE_MIN_BYTES = threshold
        model.train()
        grad = torch.enable_grad

        def step() -> None:
            _train_step(model, inputs, _autocast(case))

    times: List[float] = []
    with grad():
        base = _peak_mb()
        for _ in range(case["repeats"] + 1):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        timed = times[1:] if len(times) > 1 else times
        # the peak is taken before FLOP counting and profiling, whose dispatch modes allocate differently
        result.update(seconds=statistics.median(timed), runs=timed, peak_mb=_peak_mb(), step_mb=_peak_mb() - base)
        if case.get("flops"):  # recomputation included in training
            result["gflops"] = _gflops(step)
        if case.get("profile"):
            result["profile"] = _profile_rows(step, case["profile"])
    return result


def count_flops(quick: bool = False) -> Dict[str, float]:
    """GFLOPs of the TIF cases (forward + backward) and the preset cases (forward; forward + backward),
    counted as the timed run counts them, without timing anything."""

    def gflops(case: Dict[str, Any], train: bool) -> float:
        model, inputs = _build(case)
        model.train(train)
        with torch.set_grad_enabled(train):
            return _gflops(lambda: _train_step(model, inputs) if train else model(*inputs))

    found: Dict[str, float] = {}
    for side in _tif_sides(quick):
        found[f"TIF {side} x {side} fwd+bwd"] = gflops(dict(kind="tif", channels=64, tokens_side=side, batch=2), True)
    for preset, sizes in _preset_grid(quick):
        for size in sizes:
            case = dict(kind="ds", preset=preset, size=size)
            found[f"{preset} {size} fwd"] = gflops(case, False)
            found[f"{preset} {size} fwd+bwd"] = gflops(case, True)
    if not quick:
        found["base 512 use_checkpoint fwd+bwd"] = gflops(dict(kind="ds", preset="base", size=512, checkpoint=True), True)
    return found


def measure(case: Dict[str, Any], env_extra: Dict[str, str]) -> Dict[str, Any]:
    if (case.get("precision") == "bf16" or case.get("mode") == "precision") and not cpu_has_native_bf16():
        # emulated bf16 is many times slower than fp32 (a `base` step at 256 px: 137 s against 3.2 s)
        return {"error": "not run (no native bf16 on this CPU)"}
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra)
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(case)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the report ---------------------------------------------------------------------------------
ROUNDS = 2  # alternating processes per size in the comparison with the authors' model


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _seconds(result: Dict[str, Any], spec: str) -> str:
    return _fmt(result.get("seconds", result.get("error")), spec)


def _ratio(slow: Dict[str, Any], fast: Dict[str, Any], key: str) -> str:
    if key in slow and key in fast:
        return f"{slow[key] / max(fast[key], 1e-9):.1f}x"
    return "-"


def _speedup(slow: Dict[str, Any], fast: Dict[str, Any], spec: str = ".2f") -> str:
    if "seconds" in slow and "seconds" in fast:
        return f"{slow['seconds'] / fast['seconds']:{spec}}x"
    return "-"


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:g} MiB"


def _pooled(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One figure from several processes' measurements: the median of all timed steps, the largest peak."""
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    runs = [t for r in results for t in r["runs"]]
    return {"seconds": statistics.median(runs), "runs": runs, "peak_mb": max(r["peak_mb"] for r in results)}


def _preset_row(label: str, size: int, fwd: Dict[str, Any], train: Dict[str, Any], bf16: Dict[str, Any]) -> str:
    rate = train["gflops"] / train["seconds"] if "gflops" in train and "seconds" in train else "-"
    return (
        f"| {label} | {size} | {_fmt(fwd.get('params_m', '-'), '.1f')} | {_fmt(fwd.get('gflops', '-'), '.1f')} "
        f"| {_seconds(fwd, '.2f')} | {_fmt(fwd.get('peak_mb', '-'), '.0f')} "
        f"| {_seconds(train, '.2f')} | {_fmt(train.get('peak_mb', '-'), '.0f')} | {_fmt(rate, '.0f')} "
        f"| {_seconds(bf16, '.2f')} | {_fmt(bf16.get('peak_mb', '-'), '.0f')} |"
    )


def gpu_section(results_path: str) -> List[str]:
    """The GPU figures of scripts/gpu_check.py (its JSON, when a GPU run has been made), or what to run."""
    lines = ["## GPU", ""]
    if not os.path.isfile(results_path):
        return lines + [
            "No GPU has been lent to this work: mixed precision, the `base` preset at the paper's sizes on CUDA, "
            "the exported TorchScript on CUDA and NCCL DDP are untested. `scripts/gpu_check.py` is the prepared "
            "check, written to fit in 8 minutes on one GPU and not yet run on one (each subprocess part is limited to "
            "3 minutes; AMP training steps of `base` at 352 and 512 px, ours and, with "
            "`--authors-code`, the authors' model; a one-epoch bundle run with `--preset base`; the exported "
            "TorchScript on CUDA):",
            "",
            "```bash",
            "python scripts/gpu_check.py --data ../shared/data/kvasir-seg/datalist_800_100_100.json "
            "--output docs/gpu_check.json",
            "python scripts/benchmark.py     # then regenerates this file with the GPU figures",
            "```",
        ]
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from gpu_check import report

    with open(results_path) as f:
        lines += report(json.load(f)).splitlines()
    return lines + ["", "What that run showed, and what changed after it: [gpu.md](gpu.md)."]


# the page's sections, in order (--sections runs a subset)
SECTIONS = ("tif", "presets", "authors", "bf16", "recompute", "profile", "heap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "benchmarks.md"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes only (a smoke test of this script)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--authors-code", default=None, help="folder with the authors' code made runnable on CPU")
    parser.add_argument(
        "--naive-max-side",
        type=int,
        default=88,
        help="largest token grid for the naive TIF " "(at 128 x 128 it needs about 19 GB)",
    )
    parser.add_argument(
        "--count-flops",
        action="store_true",
        help="only count the FLOPs of the TIF and preset cases (no timing) and print them as JSON",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (a subset needs --output: it is not the whole page)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if set(sections) != set(SECTIONS) and "--output" not in sys.argv:
        parser.error("--sections with a subset writes a partial page: give --output (not docs/benchmarks.md)")
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return
    if args.count_flops:
        print(json.dumps(count_flops(quick=args.quick), indent=1))
        return

    common = {"threads": args.threads, "repeats": 1 if args.quick else args.repeats}
    lean_env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `python scripts/benchmark.py{' --quick' if args.quick else ''}` on {platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. CPU only. "
        "Each case runs in its own process; *peak* is the process's peak resident memory (ru_maxrss, "
        "interpreter, torch and MONAI included), *step* is how much the measured step added to it. "
        "Times are medians after a warm-up run.",
        "",
    ]

    matmul = measure(dict(common, kind="matmul"), {})
    matmul_bf16 = measure(dict(common, kind="matmul", precision="bf16"), {})
    bf16_rate = (
        f"in fp32 and {_fmt(matmul_bf16['gflops_per_s'], '.0f')} GFLOP/s in bf16 here"
        if "gflops_per_s" in matmul_bf16
        else f"in fp32 here, bf16 {matmul_bf16.get('error', 'failed')}"
    )
    lines += [
        f"For scale: a 2048 x 2048 matrix multiply runs at {_fmt(matmul.get('gflops_per_s', '-'), '.0f')} GFLOP/s "
        f"{bf16_rate} (CPU capability {torch.backends.cpu.get_cpu_capability()}); a training step mixes far less "
        "efficient work in. "
        "*bf16* columns run the forward under `torch.autocast('cpu', dtype=torch.bfloat16)` (fp32 weights and "
        "gradients, matrix work in bf16), the backward outside it, as mixed-precision training does.",
        "",
    ]

    authors = dict(kind="authors", authors_code=os.path.abspath(args.authors_code)) if args.authors_code else {}

    # 1. TIF against the naive einsum TIF (same math, same parameters)
    if "tif" in sections:
        sides = _tif_sides(args.quick)
        lines += [
            "## TIF vs. a naive einsum TIF",
            "",
            "`TIF(64, 64)` against `NaiveTIF` (the seed's math with a materialised N x N attention matrix, "
            "in this script), forward + backward, batch 2, 64 channels, both maps with the given tokens, all fp32 "
            "but the last two columns. *TIF GFLOP/s* is the forward and backward FLOPs (FlopCounterMode, with the CPU "
            "flash-attention kernels counted) over TIF's time.",
            "",
            "| tokens | naive s | TIF s | speed-up | naive step MB | TIF step MB | memory ratio | TIF process peak MB "
            "| TIF GFLOP/s | TIF bf16 s | bf16 speed-up over naive |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for side in sides:
            case = dict(common, mode="train", channels=64, tokens_side=side, batch=2)
            if side > args.naive_max_side:  # the naive TIF's attention matrices outgrow the machine
                naive = {"error": f"not run (> {args.naive_max_side} x {args.naive_max_side})"}
            else:
                naive = measure(dict(case, kind="naive_tif"), {})
            ours = measure(dict(case, kind="tif", flops=True), {})
            ours_bf16 = measure(dict(case, kind="tif", precision="bf16"), {})
            print("TIF", side, naive, ours, ours_bf16, flush=True)
            lines.append(
                f"| {side} x {side} | {_seconds(naive, '.3f')} | {_seconds(ours, '.3f')} | {_speedup(naive, ours, '.1f')} "
                f"| {_fmt(naive.get('step_mb', '-'), '.0f')} | {_fmt(ours.get('step_mb', '-'), '.0f')} "
                f"| {_ratio(naive, ours, 'step_mb')} | {_fmt(ours.get('peak_mb', '-'), '.0f')} "
                f"| {_fmt(ours['gflops'] / ours['seconds'] if 'gflops' in ours and 'seconds' in ours else '-', '.0f')} "
                f"| {_seconds(ours_bf16, '.3f')} | {_speedup(naive, ours_bf16, '.1f')} |"
            )

    # 2. DSTransUNet presets
    if "presets" in sections:
        grid = _preset_grid(args.quick)
        lines += [
            "",
            "## DSTransUNet presets",
            "",
            "Batch 1, 3 input channels, 1 class. *fwd* is inference (eval, no grad); *fwd+bwd* is one "
            "training step's forward and backward (train mode, deep supervision on). GFLOPs count a "
            "multiply-add as 2 (torch's FlopCounterMode); *fwd+bwd GFLOP/s* is what the training step executes "
            "(recomputation included) over its time.",
            "",
            "| model | input | params (M) | GFLOPs | fwd s | fwd peak MB | fwd+bwd s | fwd+bwd peak MB | fwd+bwd GFLOP/s "
            "| bf16 fwd+bwd s | bf16 fwd+bwd peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        models = [(f"DSTransUNet `{p}`", dict(kind="ds", preset=p), sizes) for p, sizes in grid]
        if not args.quick:
            models.append(("DSTransUNet `base`, use_checkpoint", dict(kind="ds", preset="base", checkpoint=True), [512]))
        for label, spec, sizes in models:
            for size in sizes:
                fwd = measure(dict(common, **spec, mode="forward", size=size, flops=True), {})
                train = measure(dict(common, **spec, mode="train", size=size, flops=True), {})
                bf16 = measure(dict(common, **spec, mode="train", size=size, precision="bf16"), {})
                print(label, size, fwd, train, bf16, flush=True)
                lines.append(_preset_row(label, size, fwd, train, bf16))

    # 3. against the authors' model: the same step, measured in alternating processes
    if args.authors_code and "authors" in sections:
        sizes = [64] if args.quick else [256, 512]
        lines += [
            "",
            "## Against the authors' model",
            "",
            "The authors' `UNet(128, 1)` (their `lib/DS_TransUNet.py`, made runnable on the CPU outside this "
            "project) against DSTransUNet `base` with the same weights' shapes, batch 1, the same training step "
            "(forward + backward), in fp32 and under bf16 autocast (the authors train in fp32). Measured in "
            f"alternating processes, ours then theirs, fp32 then bf16, {ROUNDS} rounds at each size; each figure is "
            f"the median of the {ROUNDS * common['repeats']} timed steps (each process: one warm-up step, then the "
            "timed ones). *Peak* is the larger of the rounds' process peaks. *Speed-up* is the authors' fp32 step "
            "over ours in fp32 and over ours in bf16; *both bf16* puts their model under the same autocast.",
            "",
            "| input | ours fp32 s | ours bf16 s | authors' fp32 s | authors' bf16 s | speed-up fp32 "
            "| speed-up, ours bf16 | speed-up, both bf16 | ours fp32 / bf16 peak MB | authors' fp32 / bf16 peak MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for size in sizes:
            runs: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
            for _ in range(ROUNDS):
                for precision in ("fp32", "bf16"):
                    for who, spec in (("ours", dict(kind="ds", preset="base")), ("authors", authors)):
                        case = dict(common, **spec, mode="train", size=size, precision=precision)
                        runs.setdefault((who, precision), []).append(measure(case, {}))
            found = {key: _pooled(results) for key, results in runs.items()}
            print("authors", size, found, flush=True)
            ours, ours_bf16 = found["ours", "fp32"], found["ours", "bf16"]
            theirs, theirs_bf16 = found["authors", "fp32"], found["authors", "bf16"]
            lines.append(
                f"| {size} | {_seconds(ours, '.2f')} | {_seconds(ours_bf16, '.2f')} | {_seconds(theirs, '.2f')} "
                f"| {_seconds(theirs_bf16, '.2f')} | {_speedup(theirs, ours)} | {_speedup(theirs, ours_bf16)} "
                f"| {_speedup(theirs_bf16, ours_bf16)} "
                f"| {_fmt(ours.get('peak_mb', '-'), '.0f')} / {_fmt(ours_bf16.get('peak_mb', '-'), '.0f')} "
                f"| {_fmt(theirs.get('peak_mb', '-'), '.0f')} / {_fmt(theirs_bf16.get('peak_mb', '-'), '.0f')} |"
            )
        fwd = measure(dict(common, **authors, mode="forward", size=sizes[-1], flops=True), {})
        lines += [
            "",
            f"The authors' model at {sizes[-1]} px: {_fmt(fwd.get('params_m', '-'), '.1f')} M parameters, "
            f"{_fmt(fwd.get('gflops', '-'), '.1f')} forward GFLOPs (their TIF materialises its attention), inference "
            f"{_fmt(fwd.get('seconds', fwd.get('error')), '.2f')} s.",
        ]

    # 3b. what bf16 changes in one training step (the accuracy effect on real data: docs/recipe.md)
    if "bf16" in sections:
        sizes = [64] if args.quick else [256, 512]
        lines += [
            "",
            "## What bf16 changes",
            "",
            "One training step of DSTransUNet `base` (random weights, seed 0, drop path off) under bf16 autocast "
            "against fp32 on the same weights and input: the relative L2 difference of the main logits and of all "
            "parameter gradients. What it does to a trained model's Dice on real data is in docs/recipe.md.",
            "",
            "| input | logits, relative difference | gradients, relative difference |",
            "|---|---|---|",
        ]
        for size in sizes:
            found = measure(dict(common, kind="ds", preset="base", mode="precision", size=size), {})
            print("bf16 differences", size, found, flush=True)
            lines.append(
                f"| {size} | {_fmt(found.get('logits_rel', found.get('error')), '.4f')} | {_fmt(found.get('grads_rel', '-'), '.4f')} |"
            )

    # 4. what the cheap recomputation buys, at the sizes where the network switches it on and off
    if "recompute" in sections:
        recompute_cases = (
            [("tiny", 64, 2)] if args.quick else [("tiny", 128, 8), ("base", 256, 1), ("base", 512, 1)]
        )
        lines += [
            "",
            "## What recomputation buys",
            "",
            "In training, DSTransUNet recomputes window attention's q/k/v, the pre-norm MLPs' hidden activations "
            "and the conv stem and half-resolution decoder stage in backward only when its first token map has at least "
            f"{_mib(CHEAP_RECOMPUTE_MIN_BYTES)} (`bundle/networks/memory.py`). The same training step with that "
            "choice, with those pieces always recomputed, and never (fwd+bwd s / peak MB; `tiny` at 128 px, batch 8, "
            "is the default recipe's step on Kvasir-SEG):",
            "",
            "| model | input | batch | first token map | the network's choice | always | never |",
            "|---|---|---|---|---|---|---|",
        ]
        for preset, size, batch in recompute_cases:
            found = {}
            for mode in ("auto", "always", "never"):
                found[mode] = measure(dict(common, kind="ds", preset=preset, mode="train", size=size, batch=batch, cheap=mode), {})
            print("recompute", preset, size, batch, found, flush=True)
            embed = PRESETS[preset]["embed_dim"]
            padded = -(-size // 64) * 64
            first_map = batch * (padded // 4) ** 2 * embed * 4
            choice = "recomputes" if first_map >= CHEAP_RECOMPUTE_MIN_BYTES else "stores"
            cells = [
                f"{_fmt(r.get('seconds', r.get('error')), '.2f')} / {_fmt(r.get('peak_mb', '-'), '.0f')}" for r in found.values()
            ]
            lines.append(f"| `{preset}` | {size} | {batch} | {_mib(first_map)}: {choice} | " + " | ".join(cells) + " |")

    # 5. where a training step's time goes (torch.profiler), ours and the authors'
    if "profile" in sections:
        profile_size = 64 if args.quick else 512
        profiled = [("DSTransUNet `base`", dict(kind="ds", preset="base"))]
        if args.authors_code:
            profiled.append(("authors' `UNet(128, 1)`", authors))
        lines += [
            "",
            "## Where the time goes",
            "",
            f"One training step at {profile_size} px, batch 1, under `torch.profiler` (self CPU time per operator, "
            "the profiler's overhead included), after the timed steps of its process:",
            "",
        ]
        for label, spec in profiled:
            prof = measure(dict(common, **spec, mode="train", size=profile_size, repeats=1, profile=10), {})
            print("profile", label, prof.get("error", ""), flush=True)
            lines += [f"{label}:", "", "| operator | calls | ms | share |", "|---|---|---|---|"]
            for row in prof.get("profile", []):
                lines.append(f"| `{row['op']}` | {row['calls']} | {row['ms']:.0f} | {100 * row['share']:.1f}% |")
            lines.append("")

    # 6. the 512 training step under glibc's fixed mmap threshold (freed memory goes back to the OS)
    if not args.quick and "heap" in sections:
        lines += [
            "## The 512 x 512 training step with and without heap fragmentation",
            "",
            "glibc raises its mmap threshold as large blocks are freed, so freed activations stay in the "
            "heap and count towards the process's memory. `MALLOC_MMAP_THRESHOLD_=65536` fixes the "
            "threshold: every large tensor is its own mapping and goes back to the OS when freed. "
            "The same step, batch 1, forward + backward:",
            "",
            "| model | glibc default: s / peak MB | MALLOC_MMAP_THRESHOLD_=65536: s / peak MB |",
            "|---|---|---|",
        ]
        steps = [
            ("DSTransUNet `base`", dict(kind="ds", preset="base")),
            ("DSTransUNet `base`, use_checkpoint", dict(kind="ds", preset="base", checkpoint=True)),
        ]
        if args.authors_code:
            steps.append(("authors' `UNet(128, 1)`", authors))
        for label, spec in steps:
            case = dict(common, **spec, mode="train", size=512)
            plain, lean = measure(case, {}), measure(case, lean_env)
            print(label, plain, lean, flush=True)
            lines.append(
                f"| {label} | {_fmt(plain.get('seconds', plain.get('error')), '.1f')} / {_fmt(plain.get('peak_mb', '-'), '.0f')} "
                f"| {_fmt(lean.get('seconds', lean.get('error')), '.1f')} / {_fmt(lean.get('peak_mb', '-'), '.0f')} |"
            )

    lines += ["", *gpu_section(os.path.join(REPO, "docs", "gpu_check.json"))]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
