"""Model-zoo export (issue 5): a tiny trained model exported by ``python -m bundle.export`` passes MONAI's
checks from another directory without this repository importable, gives the repository's masks, loads
offline through ``monai.bundle.download``/``load``, and its ONNX copy agrees with ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from bundle.export import main
from bundle.export.artifacts import LARGE_FILE_BYTES, _md5
from bundle.export.metadata import package_versions
from helpers import EVALUATE, REPO, SMALL, local_metadata_schema, run_bundle, run_command

NAME = "demo_polyp_segmentation"
# Python code that switches this repository's (editable) install off, as on the machine of someone
# who only has the exported folder
HIDE_REPO = (
    "import os, runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, '__name__', '') != '_EditableFinder']; "
    f"sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != {str(REPO)!r}]; "
)


def monai_bundle_without_repo(args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in ``cwd`` with the repository's code not importable."""
    code = (
        HIDE_REPO
        + "sys.argv = ['monai.bundle', *sys.argv[1:]]; runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
    )
    return run_command([sys.executable, "-c", code, *args], cwd)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One epoch of demo training, its evaluation, and the export (with ONNX) of that run."""
    run = tmp_path_factory.mktemp("trained_run")
    settings = [*SMALL, "--max_epochs", "1"]  # training's settings, given again to the export
    # ImageNet intensities, as a run from ImageNet weights gets them: the export must carry them to inference
    run_bundle(
        ["training", "--config_file", "configs/train.yaml", "--bundle_root", run, *settings, "--intensity", "imagenet"]
    )
    run_bundle(["--config_file", EVALUATE, "--bundle_root", run])
    out = tmp_path_factory.mktemp("dist")
    onnx = ["--onnx"] if all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")) else []
    result = run_command([sys.executable, "-m", "bundle.export", "--name", NAME, "--bundle_root", run, "--output", out,
                          *onnx, *settings], cwd=run, timeout=1200)  # fmt: skip
    return run, out / NAME, out / f"{NAME}_v0.1.0.zip", result


def test_the_bundle_has_the_zoo_layout(exported):
    _, bundle, zip_path, result = exported
    assert "torchscript vs PyTorch: max abs difference" in result.stdout + result.stderr
    for path in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/evaluate.json",
                 "configs/multi_gpu_train.json", "configs/multi_gpu_evaluate.json", "configs/logging.conf", "models/model.pt", "models/model.ts",
                 "docs/README.md", "docs/data_license.txt", "LICENSE", "large_files.yml",
                 "bundle/networks/nets/ds_transunet.py"):  # fmt: skip
        assert (bundle / path).is_file(), path
    assert (bundle / "models" / "model.onnx").is_file() or not importlib.util.find_spec("onnxruntime")
    assert not (bundle / "bundle" / "export.py").exists() and not list(bundle.rglob("__pycache__"))
    for config in (bundle / "configs").glob("*.json"):
        text = config.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{config.name}: not 4-space JSON"
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert {"bundle_root", "device", "network_def", "inferer", "output_dir"} <= set(inference)
    assert inference["bundle_root"] == "." and inference["network_def"]["_requires_"] == ["@add_bundle_code"]
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert train["max_epochs"] == 1 and train["demo_count"] == 12  # the settings the model was trained with
    # the run's plan as plain values: a zoo bundle has no runs/train/plan.json to read its scale from
    assert (train["image_size"], train["roi_size"], train["batch_size"], train["crops_per_image"]) == (
        None,
        [64, 64],
        4,
        2,
    )
    assert not any(str(v).startswith("%") for v in inference.values())  # train.yaml's macros written out
    assert (inference["image_size"], inference["roi_size"]) == (None, [64, 64])
    assert inference["intensity"] == "imagenet"  # the run's normalisation, from its plan
    # evaluate.json is an overlay on train.json, as in zoo bundles: it reads the scale train.json ships
    from monai.bundle import ConfigParser

    files = [bundle / "configs" / "train.json", bundle / "configs" / "evaluate.json"]
    evaluate = ConfigParser(ConfigParser.load_config_files(files))
    evaluate["bundle_root"] = str(bundle)
    plan = evaluate.get_parsed_content("plan")
    assert (plan.image_size, plan.roi_size, plan.intensity) == (None, [64, 64], "imagenet")

    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())  # weights only

    large = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    expected = sorted(
        p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.stat().st_size > LARGE_FILE_BYTES
    )
    assert sorted(f["path"] for f in large) == expected and "models/model.pt" in expected
    for entry in large:
        assert entry["hash_val"] == _md5(bundle / entry["path"]) and entry["hash_type"] == "md5"

    readme = (bundle / "docs" / "README.md").read_text()
    for heading in ("# Model Overview", "## Data", "## Training configuration", "## Performance",
                    "## MONAI Bundle Commands", "## System configuration", "## Limitations", "## Citation",
                    "## References", "# License"):  # fmt: skip
        assert f"\n{heading}\n" in f"\n{readme}", heading
    metrics = (exported[0] / "eval" / "metrics.csv").read_text().splitlines()
    measured = float(metrics[0].split(",")[1])
    assert f"| mean_dice | {measured:.4f} |" in readme  # the run's own figure, not a made-up one
    assert "synthetic demo" in readme and "not medicine" in (bundle / "configs" / "metadata.json").read_text()

    with zipfile.ZipFile(zip_path) as archive:
        names = {n for n in archive.namelist() if not n.endswith("/")}
    assert names == {f"{NAME}/{p.relative_to(bundle).as_posix()}" for p in bundle.rglob("*") if p.is_file()}


def test_metadata_is_valid_with_installable_pins(exported, tmp_path):
    _, bundle, _, _ = exported
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["required_packages_version"] == package_versions()  # what is installed here, from the registry
    for version in [meta["monai_version"], meta["pytorch_version"], *meta["required_packages_version"].values()]:
        assert "+" not in version  # pip cannot install local versions such as 2.13.0+cpu from PyPI
    data_format = meta["network_data_format"]
    assert data_format["inputs"]["image"]["num_channels"] == 3 and data_format["outputs"]["pred"]["num_channels"] == 1
    assert data_format["inputs"]["image"]["intensity"].startswith("imagenet: ")
    assert meta["eval_metrics"]["best_val_mean_dice"] >= 0.0
    local_schema = local_metadata_schema(tmp_path)
    result = monai_bundle_without_repo(
        ["verify_metadata", "--meta_file", bundle / "configs" / "metadata.json", "--filepath", local_schema],
        cwd=tmp_path,
    )
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_monai_checks_pass_from_another_directory_without_the_repository(exported, tmp_path):
    _, bundle, _, _ = exported
    common = ["--meta_file", bundle / "configs" / "metadata.json", "--config_file", bundle / "configs" / "inference.json",
              "--bundle_root", bundle]  # fmt: skip
    result = monai_bundle_without_repo(["verify_net_in_out", "--net_id", "network_def", *common], cwd=tmp_path)
    assert "data shape of network is verified with no error" in result.stdout + result.stderr
    ts_path = tmp_path / "model.ts"
    result = monai_bundle_without_repo(
        ["ckpt_export", "--net_id", "network_def", "--filepath", ts_path, "--ckpt_file", bundle / "models" / "model.pt",
         *common, "--use_trace", "true", "--input_shape", "[1, 3, 64, 64]"], cwd=tmp_path,
    )  # fmt: skip
    assert f"exported to file: {ts_path}" in result.stdout + result.stderr
    result = monai_bundle_without_repo(["download_large_files", "--bundle_path", bundle], cwd=tmp_path)
    assert "skipped downloading" in result.stdout + result.stderr  # present, MD5 checked, nothing fetched

    shipped = torch.jit.load(str(bundle / "models" / "model.ts"))
    for shape in ((4, 3, 64, 64), (1, 3, 128, 128)):  # traced: any batch, sides that are multiples of 64
        x = torch.rand(shape)
        assert torch.equal(shipped(x), torch.jit.load(str(ts_path))(x))


def test_exported_training_config_trains_elsewhere_and_keeps_the_shipped_weights(exported, tmp_path):
    _, bundle, _, _ = exported
    shipped = (bundle / "models" / "model.pt").read_bytes()
    new_run = tmp_path / "new_run"
    monai_bundle_without_repo(
        ["run", "training", "--config_file", bundle / "configs" / "train.json", "--bundle_root", bundle,
         "--ckpt_dir", new_run / "models", "--output_dir", new_run / "runs", "--max_epochs", "1"], cwd=tmp_path,
    )  # fmt: skip
    assert (new_run / "models" / "model.pt").is_file() and (new_run / "runs" / "datalist.json").is_file()
    assert (bundle / "models" / "model.pt").read_bytes() == shipped


def test_exported_multi_gpu_config_trains_with_two_processes(exported, tmp_path):
    """The model card's torchrun command (gloo on CPU), the repository's code switched off in each process."""
    _, bundle, _, _ = exported
    launcher = tmp_path / "monai_bundle_without_repo.py"
    launcher.write_text(
        HIDE_REPO.replace("; ", "\n")
        + "sys.argv = ['monai.bundle', *sys.argv[1:]]\nrunpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)\n"
    )
    configs = json.dumps([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
    new_run = tmp_path / "ddp_run"
    run_command([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", launcher, "run", "training",
          "--config_file", configs, "--bundle_root", bundle, "--ckpt_dir", new_run / "models",
          "--output_dir", new_run / "runs", "--max_epochs", "1"], cwd=tmp_path)  # fmt: skip
    assert (new_run / "models" / "model.pt").is_file() and (new_run / "models" / "checkpoint.pt").is_file()


def _new_images(folder: Path) -> list:
    """Images the model never saw, of sizes that are not multiples of the window."""
    from bundle.data.demo import draw_demo_pair

    folder.mkdir()
    paths = []
    for index, size in ((100, (97, 131)), (101, (160, 70))):
        image, _ = draw_demo_pair(index, seed=7)
        path = folder / f"new_{index}.png"
        Image.fromarray(image).resize(size).save(path)
        paths.append(path)
    return paths


def test_exported_inference_from_elsewhere_gives_the_repository_masks(exported, tmp_path):
    run, bundle, _, _ = exported
    images = _new_images(tmp_path / "new_images")
    inputs = json.dumps([str(p) for p in images])
    repo_out, zoo_out = tmp_path / "repo_masks", tmp_path / "zoo_masks"
    run_bundle(
        ["--config_file", "configs/inference.yaml", "--bundle_root", run, "--inputs", inputs, "--output_dir", repo_out]
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monai_bundle_without_repo(["run", "--config_file", bundle / "configs" / "inference.json", "--bundle_root", bundle,
                               "--inputs", inputs, "--output_dir", zoo_out], cwd=elsewhere)  # fmt: skip
    foreground = []
    for path in images:
        ours = np.asarray(Image.open(zoo_out / f"{path.stem}_mask.png"))
        assert ours.shape == np.asarray(Image.open(path)).shape[:2]
        np.testing.assert_array_equal(ours, np.asarray(Image.open(repo_out / f"{path.stem}_mask.png")))
        foreground.append(float((ours > 0).mean()))
    assert 0.0 < np.mean(foreground) < 1.0, foreground  # masks with something in them, not blank pages that agree


def test_offline_download_and_load_from_the_zip(exported, tmp_path):
    """The docs' offline route: ``download`` from a file URL, ``load`` the network and the TorchScript module."""
    _, _, zip_path, _ = exported
    script = f"""
import sys, torch
from monai.bundle import download, load
download(name={NAME!r}, url={zip_path.as_uri()!r}, bundle_dir={str(tmp_path / 'zoo')!r})
sys.path.insert(0, {str(tmp_path / 'zoo' / NAME)!r})  # the bundle's own code, for network_def
net = load(name={NAME!r}, bundle_dir={str(tmp_path / 'zoo')!r}, workflow_type="inference", device="cpu")
ts, meta, _ = load(name={NAME!r}, bundle_dir={str(tmp_path / 'zoo')!r}, load_ts_module=True, device="cpu")
x = torch.rand(2, 3, 64, 64)
with torch.no_grad():
    print("max-diff", float((ts(x) - net.eval()(x)).abs().max()), meta["version"], type(net).__module__)
"""
    result = run_command([sys.executable, "-c", HIDE_REPO + f"exec({script!r})"], tmp_path)
    line = next(text for text in result.stdout.splitlines() if text.startswith("max-diff")).split()
    assert float(line[1]) == 0.0 and line[2] == "0.1.0" and line[3] == "bundle.networks.nets.ds_transunet"
    assert (tmp_path / "zoo" / NAME / "configs" / "inference.json").is_file()


def test_onnx_model_takes_any_size_and_runs_the_inference_config(exported, tmp_path):
    """Issue 11: ``models/model.onnx`` (MONAI's onnx_export, batch, height and width free) gives the PyTorch
    network's logits at sizes that are not multiples of 64, and ``inference_onnx.json`` over ``inference.json``
    writes the PyTorch masks."""
    onnxruntime = pytest.importorskip("onnxruntime")
    run, bundle, _, result = exported
    if not (bundle / "models" / "model.onnx").is_file():
        pytest.skip("exported without --onnx: onnx or onnxscript is not installed")
    assert "onnx 1x300x420 vs PyTorch: max abs difference" in result.stdout + result.stderr
    from monai.bundle import ConfigParser

    # the network as the zoo bundle's own inference config builds it (its stem, widths and heads)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    network = ConfigParser(inference).get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    session = onnxruntime.InferenceSession(str(bundle / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 300, 420), (1, 3, 64, 500), (3, 3, 97, 131)):
        x = torch.rand(shape)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            # float32 sums in another order (ONNX runs the up-convolutions as written, PyTorch through the
            # 2x2-kernel path): up to ~2e-4 on logits of order 1 through the conv blocks at full resolution
            assert out.shape == shape[:1] + (1,) + shape[2:] and np.abs(out - network(x).numpy()).max() <= 1e-3, shape

    images = _new_images(tmp_path / "new_images")
    inputs = json.dumps([str(p) for p in images])
    torch_out, onnx_out = tmp_path / "torch_masks", tmp_path / "onnx_masks"
    configs = json.dumps([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "inference_onnx.json")])
    for config, out in ((str(bundle / "configs" / "inference.json"), torch_out), (configs, onnx_out)):
        monai_bundle_without_repo(["run", "--config_file", config, "--bundle_root", bundle, "--inputs", inputs,
                                   "--output_dir", out], cwd=tmp_path)  # fmt: skip
    for path in images:
        ours = np.asarray(Image.open(onnx_out / f"{path.stem}_mask.png"))
        reference = np.asarray(Image.open(torch_out / f"{path.stem}_mask.png"))
        assert ours.shape == reference.shape and (ours != reference).mean() < 1e-3  # logits agree to ~1e-5


# Project-MONAI/model-zoo ci/bundle_custom_data.py entries this bundle needs, and why (docs/sharing.md):
# torch.jit.script stops in MONAI's 2D PatchEmbed, so the zoo's verify_torchscript (ckpt_export without
# tracing) cannot pass; the shipped models/model.ts is traced. Nothing else is excluded.
ZOO_EXCLUSIONS = {"exclude_verify_torchscript_list": [NAME]}

ZOO_FULL_MODE = """
import json, os, sys
import torch
from monai.apps.utils import download_url
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out
from monai.bundle.config_parser import ConfigParser

models_path, bundle, excluded = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
path = os.path.join(models_path, bundle)
sys.path = [path] + sys.path  # as the zoo's verify() does
# verify_bundle_directory: large files (present: their hash is checked, nothing is fetched) ...
parser = ConfigParser()
parser.read_config(os.path.join(path, "large_files.yml"))
for entry in parser.get()["large_files"]:
    entry = dict(entry, fuzzy=True, filepath=os.path.join(path, entry.pop("path")))
    download_url(**entry)
# ... the necessary and the preferred files
for file in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
    assert os.path.exists(os.path.join(path, file)), file
# verify_version_changes
meta = json.load(open(os.path.join(path, "configs/metadata.json")))
assert meta["version"] in meta["changelog"]
assert f"{bundle}_v{meta['version']}" not in json.load(open(os.path.join(models_path, "model_info.json")))
# verify_metadata_format (the zoo downloads the schema to eval/schema.json; here it is already there)
verify_metadata(meta_file=os.path.join(path, "configs/metadata.json"), filepath=os.path.join(path, "eval/schema.json"))
assert "supported_apps" not in meta  # so the zoo checks no app properties
# verify_data_shape
verify_net_in_out(net_id="network_def", meta_file=os.path.join(path, "configs/metadata.json"),
                  config_file=os.path.join(path, "configs/inference.json"), bundle_root=path)
# verify_torchscript: ckpt_export without tracing, i.e. torch.jit.script
try:
    ckpt_export(net_id="network_def", filepath=os.path.join(path, "models/verify_model.ts"),
                ckpt_file=os.path.join(path, "models/model.pt"), meta_file=os.path.join(path, "configs/metadata.json"),
                config_file=os.path.join(path, "configs/inference.json"), bundle_root=path)
    scripted = "yes"
except Exception as e:
    scripted = f"no: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
print("SCRIPTED", scripted)
if bundle not in excluded.get("exclude_verify_torchscript_list", []):
    assert scripted == "yes", scripted
torch.jit.load(os.path.join(path, "models/model.ts"))
print("ZOO FULL MODE PASSED")
"""


def test_model_zoo_full_mode_checks_pass_with_one_named_exclusion(exported, tmp_path):
    """The model zoo's ci/verify_bundle.py in full mode, step by step with MONAI's functions, on the export put
    into a zoo checkout's layout, in a process without this repository; the one exclusion is ZOO_EXCLUSIONS."""
    _, bundle, _, _ = exported
    models = tmp_path / "models"
    shutil.copytree(bundle, models / NAME)
    (models / "model_info.json").write_text("{}")
    (models / NAME / "eval").mkdir()
    local_metadata_schema(models / NAME / "eval")
    result = run_command(
        [sys.executable, "-c", HIDE_REPO + f"exec({ZOO_FULL_MODE!r})", models, NAME, json.dumps(ZOO_EXCLUSIONS)],
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert "ZOO FULL MODE PASSED" in output and "data shape of network is verified with no error" in output
    # the exclusion is still needed, for the reason docs/sharing.md gives; drop it when scripting works
    scripted = next(line for line in output.splitlines() if line.startswith("SCRIPTED"))
    assert scripted.startswith("SCRIPTED no:"), scripted
    assert list(ZOO_EXCLUSIONS) == ["exclude_verify_torchscript_list"]


def test_bad_export_requests_are_one_clear_error_and_keep_the_earlier_export(exported, capsys, tmp_path):
    run, bundle, zip_path, _ = exported
    before = {p: p.stat().st_mtime_ns for p in [zip_path, *bundle.rglob("*")]}
    common = ["--bundle_root", str(run), "--output", str(bundle.parent)]
    cases = [
        (["--name", NAME, *common], f"{bundle} exists: give --overwrite"),
        (["--name", "My Model", *common], "--name 'My Model'"),
        (["--name", NAME, "--version", "1", *common], "--version '1'"),
        (["--name", "other", *common, "--presett", "small"], "--presett is not a setting"),
        (["--name", "other", *common, "--max_epochs", "abc"], "--max_epochs 'abc': give auto or a whole number"),
        (["--name", "other", *common, "--preset", "small"], f"{run / 'models' / 'model.pt'} does not fit this network"),
        (["--name", "other", "--bundle_root", str(tmp_path), "--output", str(bundle.parent)],
         f"no trained model at {tmp_path / 'models' / 'model.pt'}"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ERROR: ") and message in err[0], (argv, err)
    assert {p: p.stat().st_mtime_ns for p in [zip_path, *bundle.rglob("*")]} == before
    assert not (bundle.parent / "other").exists() and not list(bundle.parent.glob(".*"))
