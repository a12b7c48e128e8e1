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
"""The files beside the configs: the code, TorchScript, ONNX, large_files.yml, the zip."""

from __future__ import annotations

import hashlib
import logging
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from bundle.errors import BundleInputError
from bundle.export.constants import LARGE_FILE_BYTES

logger = logging.getLogger(__name__)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_large_files(root: Path, files_url: str | None) -> List[str]:
    """``large_files.yml`` in the zoo's form (path, url, hash) for files over 25 MB; returns their paths."""
    large = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.stat().st_size > LARGE_FILE_BYTES
    )
    lines = [
        "# Files over 25 MB: the zoo keeps them out of git and fetches them with",
        "#   python -m monai.bundle download_large_files --bundle_path <this folder>",
        "# (already here: the MD5 is checked and nothing is downloaded).",
    ]
    if not files_url:
        lines.append("# url: where you upload the file (bundle.export --files_url BASE writes BASE/<path>).")
    lines.append("large_files:" if large else "large_files: []")
    for path in large:
        url = f"{files_url.rstrip('/')}/{path}" if files_url else ""
        lines += [
            f'  - path: "{path}"',
            f'    url: "{url}"',
            f'    hash_val: "{_md5(root / path)}"',
            '    hash_type: "md5"',
        ]
    (root / "large_files.yml").write_text("\n".join(lines) + "\n")
    return large


def copy_code(root: Path) -> None:
    """The ``bundle`` package the configs name (this exporter left out), without caches."""
    source = Path(__file__).resolve().parents[1]
    shutil.copytree(
        source,
        root / "bundle",
        ignore=lambda d, names: [
            n for n in names if n == "__pycache__" or n.endswith(".pyc") or (Path(d) == source and n == "export")
        ],
    )


def export_torchscript(root: Path, net: Dict[str, Any]) -> None:
    """``models/model.ts`` through MONAI's ``ckpt_export``, traced on one tile (scripting fails in MONAI's 2D
    ``PatchEmbed``)."""
    from monai.bundle import ckpt_export

    shape = [1, net["in_channels"], *net["inference_size"]]
    with warnings.catch_warnings():  # the tracer's notes on shape-dependent branches: the padding is traced out
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        ckpt_export(
            net_id="network_def",
            filepath=str(root / "models" / "model.ts"),
            ckpt_file=str(root / "models" / "model.pt"),
            meta_file=str(root / "configs" / "metadata.json"),
            config_file=str(root / "configs" / "inference.json"),
            bundle_root=str(root),
            use_trace=True,
            input_shape=shape,
        )


def _compare_torchscript(root: Path, network: torch.nn.Module, net: Dict[str, Any]) -> float:
    """Max abs difference of ``model.ts`` and the PyTorch network on a sliding-window batch of random tiles."""
    scripted = torch.jit.load(str(root / "models" / "model.ts"), map_location="cpu")
    x = torch.rand(4, net["in_channels"], *net["inference_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((scripted(x) - network.eval()(x)).abs().max())


# the sizes the ONNX model is checked at after export (issue 11): not multiples of the window or of 64
ONNX_CHECK_SHAPES = ((1, 300, 420), (1, 64, 500))


def onnx_converter_kwargs() -> Dict[str, Any]:
    """What MONAI's ``onnx_export`` passes to ``torch.onnx.export``: the dynamo exporter, batch, height and
    width free."""
    axes = {0: "batch", 2: "height", 3: "width"}
    return {
        "dynamo": True,
        "input_names": ["image"],
        "output_names": ["pred"],
        "dynamic_axes": {"image": axes, "pred": axes},
    }


def export_onnx(root: Path, network: torch.nn.Module, net: Dict[str, Any]) -> Dict[str, float]:
    """``models/model.onnx`` through MONAI's ``onnx_export`` (the dynamo exporter) with batch, height and width
    symbolic; returns the max abs difference of ONNX Runtime's output to PyTorch's at each checked size."""
    try:
        import onnxruntime
        from monai.bundle import onnx_export
    except ImportError as e:
        raise BundleInputError(
            "--onnx needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime"
        ) from e
    path = root / "models" / "model.onnx"
    c = net["in_channels"]
    try:
        onnx_export(
            net_id="network_def",
            filepath=str(path),
            ckpt_file=str(root / "models" / "model.pt"),
            meta_file=str(root / "configs" / "metadata.json"),
            config_file=str(root / "configs" / "inference.json"),
            bundle_root=str(root),
            use_trace=True,  # MONAI's name for "let torch.onnx.export capture the graph" (here torch.export)
            input_shape=[1, c, 128, 192],  # an example only: the sizes stay symbolic
            converter_kwargs=onnx_converter_kwargs(),
        )
    except Exception as e:
        raise BundleInputError(f"ONNX export of {net['class']} failed: {type(e).__name__}: {str(e)[:500]}") from e
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    network = network.eval()
    generator = torch.Generator().manual_seed(0)
    differences = {}
    for batch, height, width in (*ONNX_CHECK_SHAPES, (2, *net["inference_size"])):
        x = torch.rand(batch, c, height, width, generator=generator)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            differences[f"{batch}x{height}x{width}"] = float((torch.from_numpy(out) - network(x)).abs().max())
    return differences


def make_zip(root: Path, zip_path: Path) -> None:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, Path(root.name) / path.relative_to(root))
