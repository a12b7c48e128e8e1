"""The bundle end to end on small settings: training on the demo data, evaluation and inference on its
output, real-data training through --dataset_dir, resume after SIGKILL, DDP with gloo, metadata
(issue 3, items 1-8). Each run is a subprocess of MONAI's own CLI, as a user would type it."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import EVALUATE, REPO, SCHEMA, SMALL, cli_env, local_metadata_schema, run_bundle


def train_args(root: Path, *extra) -> list:
    return ["training", "--config_file", "configs/train.yaml", "--bundle_root", root, *SMALL, *extra]


def trainer_epoch(checkpoint: dict) -> int:
    """Finished epochs in a resumable checkpoint (ignite saves the iteration count and epoch length)."""
    state = checkpoint["trainer"]
    return state["epoch"] if "epoch" in state else state["iteration"] // state["epoch_length"]


def epochs_logged(log: str) -> list:
    """Trainer epochs in StatsHandler's per-epoch lines, in order."""
    return [int(e) for e in re.findall(r"Epoch\[(\d+)\] Metrics -- train_loss", log)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One short training on the demo data; evaluation and inference tests use its outputs."""
    root = tmp_path_factory.mktemp("demo_bundle")
    result = run_bundle(train_args(root, "--max_epochs", "2"))
    return root, result


def test_training_on_demo_data(demo_run):
    root, result = demo_run
    log = result.stdout + result.stderr
    assert "DEMO DATA" in log and "not medicine" in log
    assert "moving average of the weights" not in log  # ema_fraction 0, the default: the network as trained
    assert epochs_logged(log) == [1, 2]
    assert re.search(r"val_mean_dice: [0-9.]+", log) and re.search(r"val_mean_iou: [0-9.]+", log)
    assert re.search(r"train \[2/2\]: \[\d+/\d+\]", result.stderr)  # the progress bar
    models = root / "models"
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert "head.conv.weight" in state or any(k.startswith("head") for k in state)
    # train.yaml's network from scratch: early convolutions embed the patches from the stem's half-resolution map
    # (one stride-2 conv in the fine branch, two in the coarse), two conv blocks where the stem joins
    fine_embed = "fine_branch.patch_embed.convs"
    assert f"{fine_embed}.0.conv.weight" in state and f"{fine_embed}.1.conv.weight" not in state
    assert state["coarse_branch.patch_embed.convs.0.conv.weight"].shape[1] == state["stem_half.2.conv.weight"].shape[0]
    assert any(k.startswith("decoder.4.refine.0.") for k in state)
    assert json.loads((root / "runs" / "train" / "plan.json").read_text())["settings"]["pretrained"] is False
    resumable = torch.load(models / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert set(resumable) >= {"model", "optimizer", "lr_scheduler", "trainer", "best_model_saver"}
    assert "weight_average" not in resumable
    assert trainer_epoch(resumable) == 2
    assert resumable["best_model_saver"]["best_metric_epoch"] in (1, 2)
    split = json.loads((root / "runs" / "train" / "datalist.json").read_text())
    assert [len(split[s]) for s in ("training", "validation", "test")] == [10, 1, 1]
    assert list((root / "runs" / "train" / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(models.glob(".*.tmp"))


def test_run_id_training_and_default_run_are_the_same():
    """`run training` (the issue's command) and plain `run` (MONAI's default id) start the same workflow."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.yaml"))
    assert parser["training"] == "@run" and parser["run"] == ["$@train#trainer.run()"]
    assert isinstance(parser.get_parsed_content("learning_rate"), float)  # 1.0e-3, not the string '1e-3'


def test_evaluate_writes_per_image_metrics_summary_and_pngs(demo_run):
    root, _ = demo_run
    out = root / "eval"
    run_bundle(["--config_file", EVALUATE, "--bundle_root", root, "--split", "validation"])
    with open(out / "mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    split = json.loads((root / "runs" / "train" / "datalist.json").read_text())
    image = split["validation"][0]["image"]
    assert rows[1][0] == image and 0.0 <= float(rows[1][1]) <= 1.0
    assert (out / "mean_iou_raw.csv").is_file()
    assert (out / "mean_dice_summary.csv").is_file() and (out / "mean_iou_summary.csv").is_file()
    metrics = (out / "metrics.csv").read_text()
    assert "mean_dice" in metrics and "mean_iou" in metrics
    stem = Path(image).stem
    mask = Image.open(out / "predictions" / f"{stem}_mask.png")
    assert mask.size == Image.open(image).size
    assert (out / "predictions" / f"{stem}_overlay.png").is_file()


def test_evaluating_with_another_network_than_trained_is_one_error_naming_both(demo_run):
    """The run's plan records the network class; evaluation and inference built with another network file
    stop with one line naming the model file and both classes, and write nothing."""
    root, _ = demo_run
    images = ["--inputs", str(root / "runs" / "train" / "demo_data" / "images")]
    for configs, extra in (("['configs/train.yaml','configs/networks/unet.yaml','configs/evaluate.yaml']", []),
                           ("['configs/inference.yaml','configs/networks/unet.yaml']", images)):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(root),
             *extra, "--output_dir", str(root / "wrong")],
            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert len(errors) == 1 and "was trained as DSTransUNet" in errors[0] and "build BasicUNet" in errors[0]
        assert str(root / "models" / "model.pt") in errors[0]
        assert not (root / "wrong").exists()


def test_inference_any_size_and_unreadable_files(demo_run, tmp_path):
    root, _ = demo_run
    images = sorted((root / "runs" / "train" / "demo_data" / "images").glob("*.png"))[:3]
    odd = tmp_path / "odd_size.png"
    Image.open(images[0]).crop((0, 0, 83, 41)).save(odd)  # smaller than a window on one side
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    inputs = json.dumps([str(p) for p in [*images, odd, broken]])
    out = tmp_path / "out"
    result = run_bundle(["--config_file", "configs/inference.yaml", "--bundle_root", root, "--inputs", inputs,
                         "--output_dir", out])  # fmt: skip
    log = result.stdout + result.stderr
    assert "broken.png" in log
    for path in [*images, odd]:
        mask = Image.open(out / f"{path.stem}_mask.png")
        assert mask.size == Image.open(path).size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{path.stem}_overlay.png").size == mask.size
    assert not list(out.glob("broken*"))


def test_multi_class_label_maps(tmp_path):
    """out_channels=3 with label-map masks (values 0, 1, 2): trains, and inference writes class indices."""
    data = tmp_path / "classes"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.RandomState(0)
    for i in range(6):
        labels = np.zeros((70 + i, 90), np.uint8)
        labels[5:30, 10 + i : 40 + i] = 1
        labels[40:65, 50:80] = 2
        image = np.stack([labels * 100, 255 - labels * 80, np.full_like(labels, 90)], -1)
        image = np.clip(image + rng.randint(0, 30, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(data / "images" / f"c{i}.png")
        Image.fromarray(labels).save(data / "masks" / f"c{i}.png")
    root = tmp_path / "b"
    run_bundle(["training", "--config_file", "configs/train.yaml", "--bundle_root", root, "--dataset_dir", data,
                "--out_channels", "3", "--max_epochs", "1", *SMALL[2:]])  # fmt: skip
    # one validation image: the plan keeps the final weights, and model.pt holds what checkpoint.pt's run ended with
    assert json.loads((root / "runs" / "train" / "plan.json").read_text())["keep_weights"] == "final"
    kept = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    final = torch.load(root / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert kept.keys() == final.keys() and all(torch.equal(kept[k], final[k]) for k in kept)
    out = tmp_path / "out"
    run_bundle(["--config_file", "configs/inference.yaml", "--bundle_root", root, "--out_channels", "3",
                "--inputs", data / "images" / "c0.png", "--output_dir", out])  # fmt: skip
    mask = np.asarray(Image.open(out / "c0_mask.png"))
    assert mask.shape == (70, 90) and set(np.unique(mask)) <= {0, 1, 2}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="this CPU has no native bf16 (AVX512-BF16 or AMX): --amp true refuses to run on it")
def test_cpu_mixed_precision_trains_evaluates_and_infers(tmp_path):
    """--amp true on the CPU: training, validation and inference run the network under bf16 autocast
    (the plan and the log say so) and every saved output is fp32: the weights, the metrics, the masks."""
    root = tmp_path / "b"
    result = run_bundle(train_args(root, "--max_epochs", "1", "--amp", "true"))
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert re.search(r"val_mean_dice: [0-9.]+", result.stdout + result.stderr)
    out = tmp_path / "out"
    inputs = json.loads((root / "runs" / "train" / "datalist.json").read_text())["test"][0]["image"]
    run_bundle(["--config_file", "configs/inference.yaml", "--bundle_root", root, "--amp", "true",
                "--inputs", inputs, "--output_dir", out])  # fmt: skip
    mask = np.asarray(Image.open(next(out.glob("*_mask.png"))))
    assert mask.shape == np.asarray(Image.open(inputs)).shape[:2] and set(np.unique(mask)) <= {0, 255}


def _link_pairs(pairs, target: Path) -> Path:
    """A small dataset folder of symbolic links to real pairs (real data is never copied)."""
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for image, mask in pairs:
        os.symlink(image, target / "images" / Path(image).name)
        os.symlink(mask, target / "masks" / Path(mask).name)
    return target


@pytest.mark.slow
def test_short_training_on_kvasir_through_dataset_dir(kvasir_dir, tmp_path):
    images = sorted((kvasir_dir / "images").glob("*.jpg"))[:8]
    data = _link_pairs([(p, kvasir_dir / "masks" / p.name) for p in images], tmp_path / "kvasir8")
    result = run_bundle(
        ["training", "--config_file", "configs/train.yaml", "--bundle_root", tmp_path / "b", "--dataset_dir", data,
         "--max_epochs", "1", "--image_size", "[128, 128]", "--batch_size", "4", "--val_fraction", "0.125",
         "--test_fraction", "0"]
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "DEMO DATA" not in log and "Plan: whole images resized to 128x128" in log
    assert (tmp_path / "b" / "models" / "model.pt").is_file()
    split = json.loads((tmp_path / "b" / "runs" / "train" / "datalist.json").read_text())
    assert [len(split[s]) for s in ("training", "validation", "test")] == [7, 1, 0]
    plan = json.loads((tmp_path / "b" / "runs" / "train" / "plan.json").read_text())
    assert plan["given"] == {"image_size": [128, 128], "batch_size": 4, "max_epochs": 1}
    assert plan["fingerprint"]["training_images"] == 7 and plan["fingerprint"]["resize_dice"]["128"] > 0.95


@pytest.mark.slow
def test_drive_plan_chooses_patches_and_the_network_finds_vessels(drive_dir, tmp_path):
    """The README's DRIVE command, shortened: the plan trains on native-resolution patches (vessels are
    too thin to resize), and after a few minutes DS-TransUNet predicts vessel pixels on an unseen image
    (before the Swin branches started from the Swin initialisation it predicted none, whatever the budget)."""
    names = [str(n) for n in range(21, 33)]
    data = _link_pairs(
        [(drive_dir / "images" / f"{n}_training.tif", drive_dir / "masks" / f"{n}_manual1.gif") for n in names],
        tmp_path / "drive12",
    )
    root = tmp_path / "b"
    result = run_bundle(
        ["training", "--config_file", "configs/train.yaml", "--bundle_root", root, "--dataset_dir", data,
         "--image_pattern", "*_training", "--mask_pattern", "*_manual1", "--roi_size", "[64, 64]",
         "--max_epochs", "40", "--val_interval", "10", "--val_fraction", "0.1", "--test_fraction", "0.1"],
        timeout=900,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "Plan: native-resolution patches of 64x64" in log and "resizing would lose fine structures" in log
    assert "deep supervision weights [1.0, 0.0, 0.0]" in log  # vessels vanish at the auxiliary heads' scales
    best = torch.load(root / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)["best_model_saver"]
    assert best["best_metric"] > 0.3, f"validation Dice {best['best_metric']:.3f}: the network found no vessels"
    run_bundle(["--config_file", EVALUATE, "--bundle_root", root])
    masks = list((root / "eval" / "predictions").glob("*_mask.png"))
    assert masks and all(np.asarray(Image.open(m)).any() for m in masks)  # vessel pixels on the unseen test image
    with open(root / "eval" / "metrics.csv") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
    assert metrics["mean_dice"] > 0.3 and np.isfinite(metrics["hd95"])


def test_resume_after_sigkill_mid_epoch(tmp_path):
    """Kill training with SIGKILL during an epoch after a checkpoint exists; `--resume true` carries on
    from that checkpoint with its epoch count, optimizer, scheduler and best metric, and nothing saved
    before the kill is lost or overwritten by something worse."""
    root = tmp_path / "b"
    max_epochs = 4
    args = train_args(root, "--max_epochs", max_epochs, "--epoch_length", "6", "--batch_size", "2",
                      "--learning_rate", "1.0e-3", "--ema_fraction", "0.1")  # fmt: skip
    models = root / "models"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", "run", *[str(a) for a in args]],
            cwd=REPO, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 240
        try:
            while not (models / "checkpoint.pt").is_file():
                assert first.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint within 240 s"
                time.sleep(0.2)
            started = time.time()
            # wait into the next epoch: its progress bar shows the first iterations
            while time.time() - started < 60 and first.poll() is None:
                text = log_path.read_text()
                if re.search(r"train \[\d+/\d+\]: \[[1-5]/6\]", text.split("Saved checkpoint at epoch")[-1]):
                    break
                time.sleep(0.1)
            assert first.poll() is None, "training ended before it could be killed"
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == -signal.SIGKILL

    killed = torch.load(models / "checkpoint.pt", map_location="cpu", weights_only=True)
    killed_epoch = trainer_epoch(killed)
    assert 1 <= killed_epoch < max_epochs
    best_before = killed["best_model_saver"]
    model_before = (models / "model.pt").read_bytes()
    split_before = (root / "runs" / "train" / "datalist.json").read_bytes()
    events_before = {p: p.stat().st_size for p in (root / "runs" / "train" / "tensorboard").glob("events.*")}
    assert events_before

    result = run_bundle([*args, "--resume", "true"])
    log = result.stdout + result.stderr
    assert epochs_logged(log) == list(range(killed_epoch + 1, max_epochs + 1))
    final = torch.load(models / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert trainer_epoch(final) == max_epochs
    assert final["lr_scheduler"]["last_epoch"] == max_epochs * 6  # stepped every iteration, through the resume
    end_lr = 1.0e-5  # warm-up, then cosine down to 1% of --learning_rate 1.0e-3 at the last step
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(end_lr, rel=1e-6)
    assert final["weight_average"]["updates"] == max_epochs * 6  # averaged every step, through the resume
    best_after = final["best_model_saver"]
    assert best_after["best_metric"] >= best_before["best_metric"]
    if best_after["best_metric_epoch"] == max_epochs:  # model.pt: the average (24 steps, horizon 2.4), not the latest
        best = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
        averaged = {k[len("module."):]: v for k, v in final["weight_average"].items() if k.startswith("module.")}
        assert best.keys() == averaged.keys() == final["model"].keys()
        assert all(torch.equal(best[k], averaged[k]) for k in best)
        assert not all(torch.equal(best[k], final["model"][k]) for k in best)
    if best_after["best_metric_epoch"] <= killed_epoch:  # no better epoch after resuming: model.pt untouched
        assert best_after == best_before
        assert (models / "model.pt").read_bytes() == model_before
    assert (root / "runs" / "train" / "datalist.json").read_bytes() == split_before
    for path, size in events_before.items():
        assert path.is_file() and path.stat().st_size >= size
    assert not list(models.glob(".*.tmp"))  # a temporary file of the killed run is cleaned up


def test_resume_without_a_checkpoint_is_one_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *[str(a) for a in train_args(tmp_path / "b", "--resume", "true")]],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "no checkpoint to resume from" in errors[0]


def test_atomic_checkpoints_keep_the_old_file_when_a_save_fails(tmp_path):
    from bundle.workflows.checkpoints import AtomicDiskSaver

    saver = AtomicDiskSaver(tmp_path, filename="model.pt")
    saver({"w": torch.ones(2)}, "ignored_name.pt")
    saver.remove("ignored_name.pt")  # a fixed name is replaced by the next save, never deleted first
    assert (tmp_path / "model.pt").is_file()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError, match="disk full"):
        saver({"w": Unpicklable()}, "ignored_name.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    rolling = AtomicDiskSaver(tmp_path / "roll")
    rolling({"e": 1}, "checkpoint_epoch=1.pt")
    rolling.remove("checkpoint_epoch=1.pt")  # ignite asks for removal before writing the successor
    assert (tmp_path / "roll" / "checkpoint_epoch=1.pt").is_file()
    rolling({"e": 2}, "checkpoint_epoch=2.pt")
    assert sorted(p.name for p in (tmp_path / "roll").iterdir()) == ["checkpoint_epoch=2.pt"]


@pytest.mark.parametrize("keep_weights", ["best", "final"])
def test_model_pt_holds_the_weights_the_plan_keeps(tmp_path, keep_weights):
    """train.yaml's model.pt saver, as configured: with keep_weights best only a better validation replaces
    model.pt; with final every validation does, so the last one (after the last epoch) leaves the final weights."""
    from types import SimpleNamespace

    from ignite.engine import Engine, Events
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(REPO / "configs" / "train.yaml")
    network = torch.nn.Linear(1, 1, bias=False)
    parser["validated_network"] = network
    parser["plan"] = SimpleNamespace(keep_weights=keep_weights)
    parser["ckpt_dir"] = str(tmp_path)
    saver = parser.get_parsed_content("validate#best_model_saver")
    dice = [0.5, 0.7, 0.6]  # the second validation is the best, the third the last

    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def validated(engine):  # as a validation run ends: this epoch's weights and Dice
        network.weight.data.fill_(float(engine.state.epoch))
        engine.state.metrics["val_mean_dice"] = dice[engine.state.epoch - 1]

    evaluator.state.key_metric_name = "val_mean_dice"  # what MONAI's SupervisedEvaluator sets
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=3)
    kept = torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item()
    assert kept == {"best": 2.0, "final": 3.0}[keep_weights]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_model_weights_that_do_not_fit_are_one_clear_error(tmp_path):
    from bundle.workflows.checkpoints import load_model_weights
    from bundle.errors import BundleInputError
    from bundle.networks import DSTransUNet

    torch.save(DSTransUNet(preset="tiny", out_channels=1).state_dict(), tmp_path / "model.pt")
    load_model_weights(DSTransUNet(preset="tiny", out_channels=1), tmp_path / "model.pt")
    with pytest.raises(BundleInputError, match="does not fit this network.*--out_channels"):
        load_model_weights(DSTransUNet(preset="tiny", out_channels=2), tmp_path / "model.pt")
    # the same preset and channels, another window: the message names the tensor and the other setting
    with pytest.raises(BundleInputError, match=r"size mismatch for .*relative_position.*as this network: another"):
        load_model_weights(DSTransUNet(preset="tiny", out_channels=1, window_size=4), tmp_path / "model.pt")
    # a model of the class defaults (the authors' stem, patch embedding and decoder) under train.yaml's network:
    # each setting to give
    configs_network = DSTransUNet(
        preset="tiny", stem="conv", stem_channels=16, patch_embed="stem", stem_decoder_convs=2
    )
    with pytest.raises(BundleInputError) as error:
        load_model_weights(configs_network, tmp_path / "model.pt")
    assert str(error.value).endswith(
        "as this network, but it was built otherwise: give --network_def#stem linear --network_def#stem_channels 8 "
        "--network_def#patch_embed linear --network_def#stem_decoder_convs 1."
    )
    # only the settings that differ are named: a model of the configs before the stem fed the patch embedding
    torch.save(configs_network.state_dict(), tmp_path / "configs.pt")
    differ = r"give --network_def#patch_embed stem --network_def#stem_decoder_convs 2\.$"
    with pytest.raises(BundleInputError, match=differ):
        load_model_weights(
            DSTransUNet(preset="tiny", stem="conv", stem_channels=16, patch_embed="conv"), tmp_path / "configs.pt"
        )
    with pytest.raises(BundleInputError, match="no trained model"):
        load_model_weights(DSTransUNet(preset="tiny"), tmp_path / "missing.pt")


@pytest.mark.slow
def test_ddp_training_and_evaluation_with_gloo_on_two_processes(tmp_path):
    """torchrun, 2 CPU processes, gloo: both train their shard, step the LR scheduler and validate;
    only rank 0 writes checkpoints and logs. Then multi_gpu_evaluate.yaml: the same per-image Dice as one process."""
    probe = tmp_path / "probe.yaml"
    probe.write_text(
        "imports:\n  - $import os\n  - $import json\n"
        "+run:\n"  # after training, before multi_gpu_train.yaml's own finalize (barrier, teardown)
        "  - \"$open(@output_dir + '/rank' + str(torch.distributed.get_rank()) + '.json', 'w').write(json.dumps({"
        "'lr': @optimizer.param_groups[0]['lr'], 'scheduler_epoch': @lr_scheduler.last_epoch, "
        "'trainer_epoch': @train#trainer.state.epoch, 'validated_epoch': @validate#evaluator.state.epoch, "
        "'val_dice': float(@validate#evaluator.state.metrics['val_mean_dice']), "
        "'train_batches': len(@train#dataloader), 'val_images': len(@validate#dataloader)}))\"\n"
    )
    root = tmp_path / "b"
    configs = json.dumps(["configs/train.yaml", "configs/multi_gpu_train.yaml", str(probe)])
    env = dict(cli_env(), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(root),
         *SMALL, "--demo_count", "20", "--max_epochs", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    ranks = [json.loads((root / "runs" / "train" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for state in ranks:  # the LR schedule steps every iteration
        assert state["trainer_epoch"] == 2 and state["validated_epoch"] == 2
        assert state["scheduler_epoch"] == 2 * state["train_batches"]
    assert ranks[0]["lr"] == ranks[1]["lr"]
    assert ranks[0]["val_dice"] == pytest.approx(ranks[1]["val_dice"])  # gathered over both shards
    split = json.loads((root / "runs" / "train" / "datalist.json").read_text())
    assert ranks[0]["train_batches"] == math.ceil(math.ceil(len(split["training"]) / 2) / 4)  # each rank its half
    assert ranks[0]["val_images"] + ranks[1]["val_images"] == len(split["validation"])
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "checkpoint.pt").is_file()
    logged = result.stdout + result.stderr
    assert epochs_logged(logged) == [1, 2]  # rank 0 logs once per epoch; rank 1 is quiet
    assert len(list((root / "runs" / "train" / "tensorboard").glob("events.*"))) == 2  # rank 0: trainer + evaluator

    # evaluation under torchrun: each process its shard; the metrics and CSVs cover every image once
    configs = json.dumps(["configs/train.yaml", "configs/evaluate.yaml", "configs/multi_gpu_evaluate.yaml"])
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(root), *SMALL,
         "--split", "training", "--output_dir", str(root / "eval_ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run_bundle(["--config_file", EVALUATE, "--bundle_root", root, *SMALL, "--split", "training",
                "--output_dir", root / "eval_one"])  # fmt: skip

    def per_image(folder):
        with open(root / folder / "mean_dice_raw.csv") as f:
            return {row[0]: float(row[1]) for row in list(csv.reader(f))[1:]}

    one, both = per_image("eval_one"), per_image("eval_ddp")
    assert sorted(both) == sorted(one) == sorted(item["image"] for item in split["training"])
    assert all(both[name] == pytest.approx(one[name], abs=1e-5) for name in one)
    with open(root / "eval_ddp" / "metrics.csv") as f:
        mean = {row[0]: float(row[1]) for row in csv.reader(f)}["mean_dice"]
    assert mean == pytest.approx(sum(one.values()) / len(one), abs=1e-5)


def test_metadata_is_valid_and_describes_the_network(tmp_path):
    meta = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert set(meta["network_data_format"]["inputs"]) == {"image"}
    assert set(meta["network_data_format"]["outputs"]) == {"pred"}
    assert meta["version"] in meta["changelog"]
    local_schema = local_metadata_schema(tmp_path)
    import jsonschema
    from monai.bundle import verify_metadata, verify_net_in_out

    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    verify_metadata(meta_file=str(REPO / "configs" / "metadata.json"), filepath=str(local_schema))
    verify_net_in_out(
        net_id="network_def", meta_file=str(REPO / "configs" / "metadata.json"),
        config_file=str(REPO / "configs" / "train.yaml"), n=1, device="cpu",
    )  # fmt: skip
