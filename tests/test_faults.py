"""Bad input and faults (issue 9): label maps under a binary model, empty masks, a failed run's files,
resuming with other data or settings, and two runs in one folder. Each case is reproduced as a user
meets it (the bundle's command line where it matters) and must end in one ERROR line, with nothing
saved before lost or mixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.errors import BundleInputError, find_input_error
from bundle.workflows.locks import LOCK_FILE, lock_run_folders
from bundle.workflows.planning import fingerprint
from bundle.data.transforms import LoadImage2Dd, PrepareMaskd
from helpers import REPO, SMALL, cli_env, run_bundle

pytestmark = pytest.mark.faults


def train_args(root: Path, *extra) -> list:
    return ["training", "--config_file", "configs/train.yaml", "--bundle_root", root, *SMALL, *extra]


def failing_bundle(args) -> str:
    """Run ``python -m monai.bundle run ARGS``; it must fail with exactly one ERROR line (returned)."""
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *map(str, args)], cwd=REPO, env=cli_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def write_pairs(folder: Path, masks: list, suffix: str = ".png") -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, mask in enumerate(masks):
        image = np.stack([mask.astype(np.uint8) * 40 + 60] * 3, -1)
        Image.fromarray(image).save(folder / "images" / f"c{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"c{i}{suffix}", **({"quality": 75} if suffix == ".jpg" else {}))
    return folder


def blob(value: int = 255, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 20:44] = value
    return mask


# ---- 1. label maps under --out_channels 1 -------------------------------------------------------------


def test_label_maps_under_a_binary_model_are_refused_binary_encodings_are_not(tmp_path):
    labels = blob(1)
    labels[30:48, 20:44] = 2
    palette = Image.new("P", labels.shape[::-1])
    palette.putdata(labels.flatten().tolist())
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    (tmp_path / "maps").mkdir()
    palette.save(tmp_path / "maps" / "palette.png")
    Image.fromarray(labels * 2 + labels // 2 * 1).save(tmp_path / "maps" / "zero_to_five.png")  # values 0, 2, 5
    load = LoadImage2Dd("label", as_mask=True)
    for name in ("palette.png", "zero_to_five.png"):
        with pytest.raises(BundleInputError, match=rf"mask .*{name} has values \[0, .*label map .*--out_channels \d"):
            PrepareMaskd("label", out_channels=1)(load({"label": str(tmp_path / "maps" / name)}))
    binary = write_pairs(tmp_path / "binary", [blob(1), blob(255), blob(255)], ".png")
    Image.fromarray(blob(255)).save(binary / "masks" / "lossy.jpg", quality=60)
    for path in sorted((binary / "masks").iterdir()):
        label = PrepareMaskd("label", out_channels=1)(load({"label": str(path)}))["label"]
        assert set(np.unique(label.numpy())) == {0, 1}, path.name


def test_a_training_set_of_empty_masks_is_refused(tmp_path):
    data = write_pairs(tmp_path / "empty", [np.zeros((64, 64), np.uint8)] * 3)
    pairs = [{"image": str(p), "label": str(data / "masks" / p.name)} for p in sorted((data / "images").iterdir())]
    with pytest.raises(BundleInputError, match=r"every mask of the training set is empty .*c\d\.png: nothing to learn"):
        fingerprint(pairs)


# ---- 3. a failed run leaves the last run's split and plan; resume checks what it is given -------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    run_bundle(train_args(root, "--max_epochs", "1"))
    return root


def test_a_failed_run_keeps_the_previous_runs_split_and_plan(finished_run, tmp_path):
    split, plan = finished_run / "runs" / "train" / "datalist.json", finished_run / "runs" / "train" / "plan.json"
    before = split.read_bytes(), plan.read_bytes(), (finished_run / "models" / "model.pt").read_bytes()
    other = write_pairs(tmp_path / "other", [blob()] * 5)
    Image.fromarray(blob(255, 48)).save(other / "masks" / "c4.png")  # a mask of another size: fails the checks
    failing_bundle(train_args(finished_run, "--dataset_dir", other, "--max_epochs", "1"))
    assert (split.read_bytes(), plan.read_bytes(), (finished_run / "models" / "model.pt").read_bytes()) == before
    assert json.loads(split.read_text())["source"] == {"dataset_dir": None, "datalist": None}  # the demo data


def test_resume_with_other_data_or_settings_is_refused(finished_run, tmp_path):
    other = write_pairs(tmp_path / "other", [blob()] * 6)
    error = failing_bundle(train_args(finished_run, "--resume", "true", "--dataset_dir", other, "--max_epochs", "2"))
    assert "--resume true" in error and "demo data" in error and str(other.resolve()) in error
    error = failing_bundle(train_args(finished_run, "--resume", "true", "--preset", "small", "--max_epochs", "2"))
    assert "preset 'tiny' (now 'small')" in error
    error = failing_bundle(
        train_args(finished_run, "--resume", "true", "--image_size", "[128, 128]", "--max_epochs", "2")
    )
    assert "image_size None (now [128, 128])" in error


# ---- 4. one run per folder ------------------------------------------------------------------------------


def test_a_second_run_in_a_folder_stops_at_once_naming_the_first(finished_run, tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = finished_run / "models" / LOCK_FILE
        lock.write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename, "started": "earlier"}))
        before = (finished_run / "models" / "model.pt").read_bytes()
        error = failing_bundle(train_args(finished_run, "--max_epochs", "1"))
        assert f"another training (PID {other.pid}, started earlier) is writing to {finished_run / 'models'}" in error
        assert (finished_run / "models" / "model.pt").read_bytes() == before
    finally:
        other.kill()
        other.wait()
    # its process gone, the lock is stale: the next run takes it over, and removes it at exit
    taken = lock_run_folders([finished_run / "models"])
    assert taken == [lock] and json.loads(lock.read_text())["pid"] == os.getpid()
    lock.unlink()


# ---- 5 and 6. every setting checked before any data are read; no misspelt id --------------------------------


BAD_SETTINGS = [
    (["--max_epoch", "1"], "--max_epoch is not a setting of configs/train.yaml; did you mean --max_epochs?"),
    (
        ["--train#dataloader#num_worker", "2"],
        "--train#dataloader#num_worker is not a setting of configs/train.yaml; did you mean --train#dataloader#num_workers?",
    ),
    (
        ["--network_def#stem_channel", "32"],  # the network's arguments count as settings, so the hint names one
        "--network_def#stem_channel is not a setting of configs/train.yaml; did you mean --network_def#stem_channels?",
    ),
    (["--batch_size", "0"], "--batch_size 0: give auto or a whole number of at least 1."),
    (["--learning_rate", "abc"], "--learning_rate 'abc': give a number above 0."),
    (["--preset", "huge"], "--preset 'huge': give one of base, small, tiny."),
    (["--max_epochs", "-1"], "--max_epochs -1: give auto or a whole number of at least 1."),
    (["--val_interval", "0"], "--val_interval 0: give auto or a whole number of at least 1."),
    (["--epoch_length", "0"], "--epoch_length 0: give a whole number at least 1."),
    (["--ema_fraction", "1.5"], "--ema_fraction 1.5: give a number at least 0 and at most 1."),
    (["--roi_size", "[0, 0]"], "--roi_size [0, 0]: give auto, [height, width] in pixels."),
    (["--fine_weights", "/nowhere/swin.pth"], "Swin weights file not found: /nowhere/swin.pth"),
    (["--amp", "maybe"], "--amp 'maybe': give true or false."),
    (["--resume", "maybe"], "--resume 'maybe': give true or false."),
]


@pytest.mark.parametrize("args, message", BAD_SETTINGS)
def test_bad_settings_are_one_line_each(args, message):
    """The checks the configs' initialize runs, called as the CLI calls them (fire has parsed the values)."""
    import ast

    from monai.bundle import ConfigParser

    from bundle.workflows.settings import check_command_line_ids

    argv = [
        str(REPO / ".venv/lib/monai/bundle/__main__.py"),
        "run",
        "training",
        "--config_file",
        "configs/train.yaml",
        *args,
    ]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        parser = ConfigParser()
        parser.read_config(REPO / "configs" / "train.yaml")
        value = args[1]
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # fire passes words as strings
        parser[args[0][2:]] = value
        with pytest.raises(Exception) as error:  # MONAI wraps what a component raises; the CLI hook unwraps it
            check_command_line_ids(argv)
            parser.get_parsed_content("check_settings")
    finally:
        os.chdir(cwd)
    assert str(find_input_error(error.value)) == message


def test_the_words_true_and_false_from_the_command_line_mean_what_they_say(tmp_path):
    """fire passes --resume false as the string 'false', which Python reads as true: every consumer of a
    true/false setting reads the words (a fresh run given --resume false starts, it does not look for a
    checkpoint), and the config's mixed-precision switches are off for --amp false."""
    from monai.bundle import ConfigParser

    from bundle.data.datalists import prepare_training_datalist
    from bundle.workflows.checkpoints import ResumeCheckpointLoader
    from bundle.errors import flag

    assert [flag("x", v) for v in ("true", "false", " True", "FALSE", True, False)] == [True, False, True, False, True, False]
    assert ResumeCheckpointLoader(tmp_path / "none.pt", {}, resume="false").resume is False
    with pytest.raises(BundleInputError, match="--resume true but there is no checkpoint"):
        ResumeCheckpointLoader(tmp_path / "none.pt", {}, resume="true")
    lists = prepare_training_datalist(tmp_path / "out", resume="false", demo_dir=tmp_path / "demo", demo_count=6)
    assert sum(len(v) for v in lists.values()) == 6
    parser = ConfigParser()
    parser.read_config(REPO / "configs" / "train.yaml")
    parser["amp"], parser["device"] = "false", "cuda"
    assert parser.get_parsed_content("cuda_amp") is False and parser.get_parsed_content("cpu_amp") is False


def test_cpu_mixed_precision_without_native_bf16_is_one_line(monkeypatch):
    """--amp true on a CPU that would emulate bf16 (slower than fp32) stops before any data are read."""
    from monai.bundle import ConfigParser

    from bundle.workflows import inferers

    monkeypatch.setattr(inferers, "cpu_has_native_bf16", lambda: False)
    parser = ConfigParser()
    parser.read_config(REPO / "configs" / "train.yaml")
    parser["amp"], parser["device"] = True, "cpu"
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("check_settings")
    assert str(find_input_error(error.value)).startswith("--amp true on the CPU runs bf16 autocast, but this CPU has no")


@pytest.mark.parametrize("args", [BAD_SETTINGS[0][0], BAD_SETTINGS[3][0]])
def test_bad_settings_stop_the_command_before_any_data_are_read(tmp_path, args):
    root = tmp_path / "b"
    error = failing_bundle(["training", "--config_file", "configs/train.yaml", "--bundle_root", root, *args])
    assert error == "ERROR: " + dict((tuple(a), m) for a, m in BAD_SETTINGS)[tuple(args)]
    assert not (root / "runs" / "train" / "demo_data").exists()  # stopped before the (demo) data were made


def test_a_truncated_or_foreign_checkpoint_under_resume_is_one_line(finished_run, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    checkpoint = root / "models" / "checkpoint.pt"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    error = failing_bundle(train_args(root, "--resume", "true", "--max_epochs", "2"))
    assert error.startswith(f"ERROR: cannot read the model file {checkpoint}")
    state = torch.load(finished_run / "models" / "checkpoint.pt", weights_only=True)
    state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}  # another width
    torch.save(state, checkpoint)
    error = failing_bundle(train_args(root, "--resume", "true", "--max_epochs", "2"))
    assert "holds another network" in error and "resume with the run's preset" in error


def test_resuming_with_a_weight_average_from_a_checkpoint_without_one(finished_run, tmp_path):
    """A run without the average (the default, or an older bundle) resumed with --ema_fraction: the average
    restarts from the resumed weights."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(finished_run, root)
    checkpoint = root / "models" / "checkpoint.pt"
    done = torch.load(checkpoint, weights_only=True)["trainer"]["iteration"]
    result = run_bundle(train_args(root, "--resume", "true", "--max_epochs", "2", "--ema_fraction", "0.1"))
    log = result.stdout + result.stderr
    assert f"{checkpoint} holds no weight_average (its run had none): it starts afresh." in log
    resumed = torch.load(checkpoint, weights_only=True)
    assert resumed["weight_average"]["updates"] == resumed["trainer"]["iteration"] - done > 0


# ---- 8. smaller ones ---------------------------------------------------------------------------------------


def test_inference_inputs_missing_or_empty_are_named_and_the_rest_run(tmp_path):
    from bundle.data.datalists import prepare_inference_datalist

    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleInputError, match=f"no image files in the inference folder {tmp_path / 'empty'}"):
        prepare_inference_datalist(tmp_path / "empty")
    data = write_pairs(tmp_path / "d", [blob()] * 2)
    items = prepare_inference_datalist(
        [str(data / "images" / "c0.png"), str(tmp_path / "gone.png"), str(data / "images" / "c1.png")]
    )
    assert [i["name"] for i in items] == ["c0", "c1"]  # the missing one skipped, the rest run
    with pytest.raises(BundleInputError, match="no readable image among the 2 inference inputs"):
        prepare_inference_datalist([str(tmp_path / "gone.png"), str(tmp_path / "gone2.png")])


def test_weights_of_another_preset_name_the_preset_they_fit(tmp_path):
    from bundle.workflows.checkpoints import load_model_weights
    from bundle.networks import DSTransUNet

    torch.save(DSTransUNet(preset="small", out_channels=2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(BundleInputError, match="the file holds preset 'small', in_channels 3, out_channels 2"):
        load_model_weights(DSTransUNet(preset="tiny"), tmp_path / "model.pt")


def test_a_new_run_moves_the_earlier_runs_models_aside(finished_run, tmp_path):
    """A kill before the new run's first validation must not leave model.pt of one run beside checkpoint.pt of another."""
    import shutil

    root = tmp_path / "again"
    shutil.copytree(finished_run, root)
    before = {n: (root / "models" / n).read_bytes() for n in ("model.pt", "checkpoint.pt")}
    run_bundle(train_args(root, "--max_epochs", "1", "--seed", "1"))
    kept = list((root / "models").glob("previous_*"))
    assert len(kept) == 1 and {n: (kept[0] / n).read_bytes() for n in before} == before
    assert (root / "models" / "model.pt").read_bytes() != before["model.pt"]
