"""The training plan (bundle.workflows.planning), the inferer that serves both of its scales, and the training
recipe's handlers: fingerprints of synthetic data, given settings winning, plan.json, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import BasicUNet
from PIL import Image

from bundle.errors import BundleInputError
from bundle.workflows.averaging import WeightAverage, WeightAverageHandler
from bundle.workflows.handlers import GradientClipHandler, LargestComponentDecision, TimeBudgetHandler
from bundle.workflows.inferers import AutocastInferer, SegmentationInferer
from bundle.workflows.planning import CANDIDATE_SIZES, RecordedPlan, fingerprint, plan_training, read_plan, write_plan
from bundle.data.transforms import LargestComponentd


def _write_pairs(folder: Path, masks: list, size: tuple) -> list:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    pairs = []
    for i, mask in enumerate(masks):
        image = folder / "images" / f"{i}.png"
        label = folder / "masks" / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(image)
        Image.fromarray(mask.astype(np.uint8) * 255).save(label)
        pairs.append({"image": str(image), "label": str(label)})
    return pairs


def _blob(size: tuple, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 < radius**2


def _lines(size: tuple) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[:, 40::37] = True  # one-pixel vessels
    mask[50::41, :] = True
    return mask


def _plan(pairs, tmp_path, network=None, **settings):
    network = network or BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 4, 8, 8, 16, 4))
    loss = DiceCELoss(sigmoid=True)  # the per-output loss; the plan times it with deep supervision
    args = dict(datalists={"training": pairs, "validation": pairs[:1]}, output_dir=tmp_path / "run", network=network,
                loss=loss, time_budget_minutes=0.5)  # fmt: skip
    plan = plan_training(**{**args, **settings})
    write_plan(args["output_dir"], plan)  # as training does when it starts
    return plan


def test_fingerprint_tells_blobs_from_thin_lines(tmp_path):
    blobs = fingerprint(_write_pairs(tmp_path / "blobs", [_blob((600, 500), 150)] * 3, (600, 500)))
    lines = fingerprint(_write_pairs(tmp_path / "lines", [_lines((600, 500))] * 3, (600, 500)))
    assert blobs["height"]["median"] == 600 and blobs["width"]["median"] == 500 and blobs["channels"] == [3]
    assert blobs["objects_per_image"] == 1 and 0.2 < blobs["foreground_fraction"] < 0.3
    assert blobs["structure_width_px"] > 100 > 5 > lines["structure_width_px"]
    assert all(blobs["resize_dice"][str(s)] > 0.97 for s in CANDIDATE_SIZES)
    assert all(lines["resize_dice"][str(s)] < 0.95 for s in CANDIDATE_SIZES)


def test_plan_resizes_blobs_and_patches_thin_lines(tmp_path):
    blobs = _plan(_write_pairs(tmp_path / "blobs", [_blob((300, 300), 80)] * 4, (300, 300)), tmp_path / "a")
    assert blobs.image_size in ([s, s] for s in CANDIDATE_SIZES if s <= 320) and blobs.crops_per_image == 1
    assert blobs.max_epochs >= 1 and blobs.timing["seconds_per_step"] > 0
    assert blobs.deep_supervision_weights == [0.6, 0.2, 0.2]  # the authors'
    assert blobs.flip_tta is True  # whole images: the flips run in one batch
    lines = _plan(_write_pairs(tmp_path / "lines", [_lines((300, 300))] * 4, (300, 300)), tmp_path / "b")
    assert lines.image_size is None and lines.roi_size == [128, 128] and lines.crops_per_image > 1
    # one-pixel lines vanish at the auxiliary heads' 1/32 and 1/4: the main output only
    assert lines.deep_supervision_weights == [1.0, 0.0, 0.0] and any("too thin" in r for r in lines.reasons)
    assert lines.flip_tta is False  # sliding windows would run three times
    saved = read_plan(tmp_path / "b" / "run")
    assert saved["image_size"] is None and saved["inference_size"] == [128, 128] and saved["given"] == {}
    assert saved["flip_tta"] is False and read_plan(tmp_path / "a" / "run")["flip_tta"] is True
    assert saved["fingerprint"]["training_images"] == 4 and saved["reasons"]


def test_plan_buys_epochs_with_scale_and_batches_small_images(tmp_path, monkeypatch):
    """Smallest size first, the plan keeps the largest whose epochs still reach MIN_EPOCHS; images under
    128 px are batched up to the pixels of 8 at 128 px; a given batch size wins (timings faked per size)."""
    from bundle.workflows import planning

    seconds = {64: 0.05, 128: 1.0}  # a step at 128 px leaves < MIN_EPOCHS epochs in the budget
    timed = []

    def fake_step(network, loss, batch, in_channels, size, *rest):
        timed.append((size[0], batch))
        return seconds.get(size[0], 10.0)

    monkeypatch.setattr(planning, "_time_step", fake_step)
    pairs = _write_pairs(tmp_path / "blobs", [_blob((300, 300), 80)] * 4, (300, 300))
    plan = _plan(pairs, tmp_path / "a")
    assert timed == [(64, 32), (128, 8)]  # stops at the first size below MIN_EPOCHS
    assert plan.image_size == [64, 64] and plan.batch_size == 32 and plan.max_epochs >= planning.MIN_EPOCHS
    assert plan.timing["128x128"]["epochs_in_budget"] < planning.MIN_EPOCHS <= plan.timing["64x64"]["epochs_in_budget"]
    assert any("32 images a step at 64x64" in r for r in plan.reasons)
    seconds[128] = 0.05  # now 128 px fits too, and the next size does not
    timed.clear()
    assert _plan(pairs, tmp_path / "b").image_size == [128, 128] and timed[-1] == (192, 8)
    given = _plan(pairs, tmp_path / "c", batch_size=8)
    assert given.batch_size == 8 and given.given == {"batch_size": 8}


def test_plan_spaces_validations_to_a_share_of_the_time(tmp_path, monkeypatch):
    """Validation every N epochs so that it takes about VALIDATION_SHARE of the training time, but at least
    MIN_VALIDATIONS times a run; a given val_interval wins; plan.json records it (timings faked)."""
    from bundle.workflows import planning

    seconds = {"step": 0.05, "validation": 0.02}
    monkeypatch.setattr(planning, "_time_step", lambda *args, **kwargs: seconds["step"])
    monkeypatch.setattr(planning, "_time_validation_image", lambda *args, **kwargs: seconds["validation"])
    pairs = _write_pairs(tmp_path / "blobs", [_blob((300, 300), 80)] * 4, (300, 300))
    plan = _plan(pairs, tmp_path / "a")  # one step (0.05 s) and one validation image (0.02 s) an epoch
    share = 0.02 / plan.val_interval / (0.05 + 0.02 / plan.val_interval)
    assert plan.val_interval == 8 and share <= planning.VALIDATION_SHARE  # 7 would be 5.4%
    assert plan.max_epochs // plan.val_interval >= planning.MIN_VALIDATIONS
    assert read_plan(tmp_path / "a" / "run")["val_interval"] == 8 and any("every 8 epoch" in r for r in plan.reasons)
    seconds.update(step=1.0, validation=0.5)  # 10 by the share, but only 25 epochs fit: validate every 2
    plan = _plan(pairs, tmp_path / "b")
    assert plan.val_interval == 2 and plan.max_epochs == int(0.5 * 60 * 0.9 // (1.0 + 0.5 / 2))
    given = _plan(pairs, tmp_path / "c", val_interval=3)
    assert given.val_interval == 3 and given.given["val_interval"] == 3
    assert _plan(pairs, tmp_path / "d", image_size=[64, 64], max_epochs=40).val_interval == 4  # no timing


def test_plan_times_each_samples_augmentation_on_copies(tmp_path, monkeypatch):
    """The random transforms of a training sample join the step's time (batch x their cost), timed on
    copies: the run's own transforms, and so its augmentation sequence, are untouched."""
    import time

    from bundle.workflows import planning

    class SlowTransform:
        calls = 0

        def __call__(self, data):
            self.calls += 1
            time.sleep(0.02)
            return data

    monkeypatch.setattr(planning, "_time_step", lambda *args, **kwargs: 0.01)
    pairs = _write_pairs(tmp_path / "blobs", [_blob((200, 200), 60)] * 4, (200, 200))
    slow = SlowTransform()
    plan = _plan(pairs, tmp_path, image_size=[64, 64], batch_size=4, sample_transforms={"whole_image": [slow]})
    assert 0.01 + 4 * 0.02 <= plan.timing["64x64"]["seconds_per_step"] < 0.01 + 4 * 0.04
    assert slow.calls == 0 and plan.timing["64x64"]["seconds_per_validation_image"] > 0


def test_timed_steps_use_the_runs_optimizer(tmp_path, monkeypatch):
    """The plan times steps with an optimizer of the run's class and settings (fused AdamW in train.yaml),
    built over the timed copy's parameters; the run's own optimizer is not stepped."""
    from bundle.workflows import planning

    built = []
    real = planning._optimizer_like
    monkeypatch.setattr(planning, "_optimizer_like", lambda opt, params: built.append(real(opt, params)) or built[-1])
    network = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 4, 8, 8, 16, 4))
    runs = torch.optim.AdamW(network.parameters(), lr=3.0e-3, weight_decay=0.02, fused=True)
    before = [p.detach().clone() for p in network.parameters()]
    pairs = _write_pairs(tmp_path / "blobs", [_blob((200, 200), 60)] * 2, (200, 200))
    _plan(pairs, tmp_path, network=network, optimizer=runs, image_size=[64, 64])
    assert built and all(type(o) is torch.optim.AdamW for o in built)
    assert all(o.defaults["fused"] and o.defaults["lr"] == 3.0e-3 and o.defaults["weight_decay"] == 0.02 for o in built)
    assert all(o is not runs and o.param_groups[0]["params"][0] is not next(network.parameters()) for o in built)
    assert all(torch.equal(a, b) for a, b in zip(before, network.parameters())) and not runs.state


def test_plan_times_every_size_on_one_copy_of_the_network(tmp_path, monkeypatch):
    """Steps and validation at every candidate size run on one copy of the run's network (not a copy per
    timing), the run's network untouched; a multi-class run's validation timing takes the argmax."""
    from bundle.workflows import planning

    models = []

    def recording(real):
        return lambda model, *args, **kwargs: models.append(model) or real(model, *args, **kwargs)

    for name in ("_time_step", "_time_validation_image"):
        monkeypatch.setattr(planning, name, recording(getattr(planning, name)))
    network = BasicUNet(spatial_dims=2, in_channels=3, out_channels=3, features=(4, 4, 8, 8, 16, 4))
    before = [p.detach().clone() for p in network.parameters()]
    labels = [_blob((200, 200), 60).astype(np.uint8) * (1 + i % 2) for i in range(2)]
    pairs = _write_pairs(tmp_path / "blobs", labels, (200, 200))
    for pair, label in zip(pairs, labels):  # label maps 0..2, not binary masks
        Image.fromarray(label).save(pair["label"])
    plan = _plan(pairs, tmp_path, network=network, loss=DiceCELoss(softmax=True, to_onehot_y=True), out_channels=3,
                 time_budget_minutes=60)  # fmt: skip
    assert len(plan.timing) > 4 and len(models) >= 4  # two sizes or more, a step and a validation each
    assert len({id(m) for m in models}) == 1 and models[0] is not network
    assert all(torch.equal(a, b) for a, b in zip(before, network.parameters()))


def test_given_settings_win_and_are_recorded(tmp_path):
    pairs = _write_pairs(tmp_path / "blobs", [_blob((200, 200), 60)] * 2, (200, 200))
    plan = _plan(pairs, tmp_path, image_size=[96, 128], batch_size=3, max_epochs=7, deep_supervision_weights=[1, 0.5, 0])
    assert (plan.image_size, plan.batch_size, plan.max_epochs) == ([96, 128], 3, 7)
    assert plan.deep_supervision_weights == [1.0, 0.5, 0.0]
    assert plan.given == {"image_size": [96, 128], "batch_size": 3, "max_epochs": 7, "deep_supervision_weights": [1.0, 0.5, 0.0]}
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["given"]["batch_size"] == 3
    patches = _plan(pairs, tmp_path / "p", image_size=None, roi_size=64)
    assert patches.image_size is None and patches.roi_size == [64, 64]
    typed = _plan(pairs, tmp_path / "t", image_size="null", roi_size=64)  # `--image_size null` arrives as a word
    assert typed.image_size is None and typed.given["image_size"] is None
    no_tta = _plan(pairs, tmp_path / "f", image_size=[64, 64], max_epochs=1, flip_tta="false")  # a word too
    assert no_tta.flip_tta is False and no_tta.given["flip_tta"] is False


def test_plan_keeps_the_final_weights_when_validation_is_too_small_to_choose(tmp_path):
    """Fewer than MIN_VALIDATION_TO_CHOOSE validation images: model.pt keeps the final weights (stated in the
    reasons); enough of them: the best validation Dice's; a given setting wins; the demo keeps the best."""
    from bundle.workflows.planning import MIN_VALIDATION_TO_CHOOSE

    pairs = _write_pairs(tmp_path / "blobs", [_blob((128, 128), 40)] * 2, (128, 128))
    few = _plan(pairs, tmp_path / "a", max_epochs=1, image_size=[64, 64])
    assert few.keep_weights == "final" and any("final weights" in r for r in few.reasons)
    assert read_plan(tmp_path / "a" / "run")["keep_weights"] == "final"
    enough = _plan(pairs, tmp_path / "b", max_epochs=1, image_size=[64, 64],
                   datalists={"training": pairs, "validation": pairs[:1] * MIN_VALIDATION_TO_CHOOSE})  # fmt: skip
    assert enough.keep_weights == "best"
    given = _plan(pairs, tmp_path / "c", max_epochs=1, image_size=[64, 64], keep_weights="best")
    assert given.keep_weights == "best" and given.given["keep_weights"] == "best"
    assert _plan([], tmp_path / "d", demo=True).keep_weights == "best"


def test_evaluation_follows_the_recorded_test_time_augmentation(tmp_path):
    """Evaluation and inference use the run's flip_tta; a run planned before it existed had none; a given
    setting wins; a bad one is one clear error."""
    assert RecordedPlan.read(tmp_path).flip_tta is False  # no plan (an exported bundle gives its settings)
    (tmp_path / "plan.json").write_text(json.dumps({"image_size": [64, 64], "roi_size": [64, 64]}))
    assert RecordedPlan.read(tmp_path).flip_tta is False  # planned before flip_tta was planned
    (tmp_path / "plan.json").write_text(json.dumps({"image_size": [64, 64], "roi_size": [64, 64], "flip_tta": True}))
    assert RecordedPlan.read(tmp_path).flip_tta is True
    assert RecordedPlan.read(tmp_path, flip_tta="false").flip_tta is False
    assert RecordedPlan.read(tmp_path, keep_largest="true").keep_largest is True
    with pytest.raises(BundleInputError, match="--flip_tta"):
        RecordedPlan.read(tmp_path, flip_tta="sometimes")


def test_resume_reads_the_plan_back(tmp_path):
    pairs = _write_pairs(tmp_path / "blobs", [_blob((200, 200), 60)] * 2, (200, 200))
    first = _plan(pairs, tmp_path, max_epochs=5)
    (tmp_path / "blobs" / "masks" / "0.png").unlink()  # a new plan would fail to read this mask
    again = _plan(pairs, tmp_path, resume=True)
    assert (again.image_size, again.max_epochs, again.batch_size) == (first.image_size, 5, first.batch_size)


def test_demo_plan_is_fixed_and_fast(tmp_path):
    plan = _plan([], tmp_path, demo=True)
    assert (plan.image_size, plan.roi_size, plan.batch_size, plan.max_epochs) == (None, [64, 64], 4, 30)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("batch_size", 0),
        ("max_epochs", "abc"),
        ("image_size", [0, 10]),
        ("roi_size", None),
        ("time_budget_minutes", -1),
        ("deep_supervision_weights", [0.6, -0.2]),
        ("flip_tta", "yes"),
        ("keep_weights", "last"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path, setting, value):
    with pytest.raises(BundleInputError, match=setting):
        _plan([], tmp_path, demo=True, **{setting: value})


def test_inferer_gives_native_size_logits_at_either_scale():
    calls = []

    def network(x):
        calls.append(tuple(x.shape[2:]))
        return x[:, :1] * 2.0

    image = torch.rand(1, 3, 150, 97)
    whole = SegmentationInferer(image_size=[64, 64])(image, network)
    assert whole.shape == (1, 1, 150, 97) and calls == [(64, 64)]
    windows = SegmentationInferer(roi_size=[64, 64], sw_batch_size=8)(image, network)
    assert windows.shape == (1, 1, 150, 97)
    torch.testing.assert_close(windows, image[:, :1] * 2.0)  # a pixelwise network: windows stitch back exactly


def test_flip_tta_averages_the_flipped_predictions():
    weight = torch.randn(1, 3, 3, 3)

    def network(x):
        return torch.nn.functional.conv2d(x, weight, padding=1)

    image = torch.rand(2, 3, 32, 48)
    out = SegmentationInferer(image_size=[32, 48], flip_tta=True)(image, network)
    expected = (network(image) + network(image.flip(2)).flip(2) + network(image.flip(3)).flip(3)) / 3
    torch.testing.assert_close(out, expected)


def test_whole_image_flips_run_as_one_batch_at_the_networks_scale():
    """Resized once, the image and its flips in one network call; the same logits as resizing each flip
    (the flips of a resized image are the resized flips)."""
    weight = torch.randn(1, 3, 3, 3)
    calls = []

    def network(x):
        calls.append(x.shape[0])
        return torch.nn.functional.conv2d(x, weight, padding=1)

    image = torch.rand(2, 3, 90, 70)

    def one_view(x):
        small = torch.nn.functional.interpolate(x, size=[32, 32], mode="bilinear", align_corners=False, antialias=True)
        return torch.nn.functional.interpolate(network(small), size=[90, 70], mode="bilinear", align_corners=False)

    out = SegmentationInferer(image_size=[32, 32], flip_tta=True)(image, network)
    assert calls == [6]  # 2 images x (image + 2 flips)
    assert SegmentationInferer(roi_size=[16, 16], flip_tta=True).views() == 3 == calls[0] // 2
    expected = (one_view(image) + one_view(image.flip(2)).flip(2) + one_view(image.flip(3)).flip(3)) / 3
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_the_network_sees_a_plain_tensor_and_the_logits_keep_the_metadata():
    from monai.data import MetaTensor, decollate_batch
    from monai.data.utils import list_data_collate

    seen = []

    def network(x):
        seen.append(type(x))
        return x[:, :1]

    items = [{"image": MetaTensor(torch.rand(3, 40, 30), meta={"filename_or_obj": f"{n}.png"})} for n in "ab"]
    batch = list_data_collate(items)["image"]
    for inferer in (SegmentationInferer(image_size=[32, 32], flip_tta=True), SegmentationInferer(roi_size=[16, 16])):
        seen.clear()
        out = inferer(batch, network)
        assert seen and all(t is torch.Tensor for t in seen)
        assert isinstance(out, MetaTensor) and out.shape == (2, 1, 40, 30)
        assert [item.meta["filename_or_obj"] for item in decollate_batch(out)] == ["a.png", "b.png"]


def test_autocast_inferer_runs_the_network_in_bf16_and_returns_fp32(monkeypatch):
    """--amp true on a CPU: the network's matrix work in bf16, its logits back in fp32 before the inferer
    blends or resizes them; off, the inferer as it is; on a CPU without native bf16, one clear error."""
    from bundle.workflows import inferers

    seen = []

    def network(x):
        out = torch.nn.functional.conv2d(x, torch.ones(2, 3, 1, 1))
        seen.append(out.dtype)
        return [out[:, :1], out[:, 1:]] if x.shape[0] == 3 else out

    image = torch.rand(1, 3, 40, 30)
    monkeypatch.setattr(inferers, "cpu_has_native_bf16", lambda: True)
    out = AutocastInferer(SegmentationInferer(roi_size=[16, 16]))(image, network)
    assert seen == [torch.bfloat16] * len(seen) and out.dtype == torch.float32 and out.shape == (1, 2, 40, 30)
    outs = AutocastInferer()(torch.rand(3, 3, 8, 8), network)  # training: MONAI's SimpleInferer, deep supervision
    assert isinstance(outs, list) and all(o.dtype == torch.float32 for o in outs)
    seen.clear()
    assert AutocastInferer(enabled=False)(image, network).dtype == torch.float32 and seen == [torch.float32]
    monkeypatch.setattr(inferers, "cpu_has_native_bf16", lambda: False)
    AutocastInferer(enabled=False)  # off: nothing to check
    with pytest.raises(BundleInputError, match="amp"):
        AutocastInferer()


def test_gradient_clip_handler_limits_the_norm():
    network = torch.nn.Linear(4, 1)
    engine = Engine(lambda e, b: None)
    engine.register_events(*IterationEvents)
    engine.network, engine.amp = network, False
    GradientClipHandler(max_norm=0.5).attach(engine)
    (network(torch.full((8, 4), 10.0)).sum() * 100).backward()
    engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in network.parameters()))
    assert norm == pytest.approx(0.5, rel=1e-4)


def test_weight_average_is_the_mean_then_an_exponential_average():
    """The plain mean of the weights until the horizon, then each update a 1/horizon step towards them;
    integer buffers copied; updated by the trainer's iterations; its count saved with it."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 1, bias=False)
            self.register_buffer("index", torch.tensor([7]))

    network = Net()
    average = WeightAverage(network, horizon_steps=4)
    engine = Engine(lambda e, b: None)
    engine.network = network
    WeightAverageHandler(average).attach(engine)
    for value in (1.0, 3.0, 5.0, 7.0, 9.0):
        network.linear.weight.data.fill_(value)
        engine.fire_event(Events.ITERATION_COMPLETED)
        if value == 5.0:
            assert average.module.linear.weight.item() == pytest.approx(3.0)  # the mean of 1, 3, 5
    assert average.module.linear.weight.item() == pytest.approx(4.0 + (9.0 - 4.0) / 4)  # after the mean 4
    assert average.module.index.item() == 7 and average.module.index.dtype == torch.long
    network.index.fill_(11)
    average.update(network)
    assert average.module.index.item() == 11
    assert not average.module.linear.weight.requires_grad and network.linear.weight.requires_grad
    state = average.state_dict()
    assert set(state) == {"module.linear.weight", "module.index", "updates"} and state["updates"] == 6
    restored = WeightAverage(Net(), horizon_steps=4)
    restored.load_state_dict(state)
    assert restored.updates == 6 and restored.module.linear.weight.item() == average.module.linear.weight.item()
    latest = WeightAverage(network, horizon_steps=0)  # no averaging: the latest weights
    for value in (2.0, 6.0):
        network.linear.weight.data.fill_(value)
        latest.update(network)
    assert latest.module.linear.weight.item() == 6.0


def test_time_budget_ends_training_validated_before_the_budget_passes(monkeypatch):
    """On a machine slower than planned, training ends after the epoch where another epoch and the
    validations it brings would pass the budget, as a last epoch (so the validation after the last epoch
    runs, inside the budget); off where epochs were given."""
    from types import SimpleNamespace

    from bundle.workflows import handlers

    clock = [0.0]
    monkeypatch.setattr(handlers, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def run(enabled: bool):
        def step(engine, batch):  # epochs of 20 s, then of 60 s from the 4th on (the machine slows down)
            clock[0] += 10.0 if engine.state.epoch <= 3 else 30.0

        engine = Engine(step)
        TimeBudgetHandler(minutes=5, enabled=enabled).attach(engine)
        last = []
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: last.append(e.state.epoch == e.state.max_epochs))

        @engine.on(Events.EPOCH_COMPLETED(event_filter=lambda e, epoch: epoch % 2 == 0 or epoch == e.state.max_epochs))
        def validate(engine):  # 10 s, every 2 epochs and after the last, as PeriodicValidationHandler
            clock[0] += 10.0

        clock[0] = 0.0
        engine.run([0, 1], max_epochs=15)  # planned: 15 epochs of 20 s
        return engine.state.epoch, last, clock[0]

    epochs, last, seconds = run(True)
    # 3 x 20 s + 3 x 60 s + 3 validations = 270 s; after epoch 5 (200 s) a 6th and its validation fit the
    # 300 s, after the 6th (260 s) a 7th (60 s) with the validations of the 6th and the 7th would not
    assert (epochs, seconds) == (6, 270.0) and last[-1] and not any(last[:-1])
    assert run(False)[0] == 15
    # the last epoch's validation counts too: epochs of 40 s, validations of 20 s, 345 s. After epoch 6 (280 s,
    # its validation due) a 7th epoch alone would fit, but with the validations of the 6th and the 7th it ends at
    # 360 s; training ends after the 6th, at 300 s (a 2026-12-02 Kvasir-SEG run ended 3 s past its hour that way)
    clock[0] = 0.0
    engine = Engine(lambda e, b: clock.__setitem__(0, clock[0] + 40.0))
    TimeBudgetHandler(minutes=345 / 60).attach(engine)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED(event_filter=lambda e, epoch: epoch % 2 == 0 or epoch == e.state.max_epochs),
        lambda e: clock.__setitem__(0, clock[0] + 20.0),
    )
    engine.run([0], max_epochs=20)
    assert (engine.state.epoch, clock[0]) == (6, 300.0)


def test_time_budget_refits_the_schedule_to_the_measured_pace(monkeypatch, tmp_path):
    """Where the loop runs slower than planned, the epochs after validations refit max_epochs and the
    learning-rate schedule to the measured pace, so the cosine decay ends inside the budget instead of
    being cut; the refit is recorded in plan.json. A faster run, or one whose first epochs were slow, is
    lengthened to what the budget holds; a resumed run is not refitted; a schedule without a t_total is
    refused by name."""
    from types import SimpleNamespace

    from monai.optimizers import WarmupCosineSchedule

    from bundle.workflows import handlers

    clock = [0.0]
    monkeypatch.setattr(handlers, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    (tmp_path / "plan.json").write_text(json.dumps({"max_epochs": 20, "val_interval": 2}))

    def run(seconds_per_iteration: float, resume_at: int = 0, slow_epochs: int = 0):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = WarmupCosineSchedule(optimizer, warmup_steps=4, t_total=40, end_lr=0.01)  # 20 epochs of 2 steps
        lrs = []

        def step(engine, batch):
            clock[0] += seconds_per_iteration * (2.0 if engine.state.epoch <= slow_epochs else 1.0)
            schedule.step()
            lrs.append(optimizer.param_groups[0]["lr"])

        engine = Engine(step)
        budget = TimeBudgetHandler(minutes=10, lr_scheduler=schedule, val_interval=2, output_dir=tmp_path)
        budget.attach(engine)
        engine.add_event_handler(  # validations of 20 s every 2 epochs and after the last
            Events.EPOCH_COMPLETED(event_filter=lambda e, epoch: epoch % 2 == 0 or epoch == e.state.max_epochs),
            lambda e: clock.__setitem__(0, clock[0] + 20.0),
        )
        clock[0] = 0.0
        if resume_at:
            engine.load_state_dict({"epoch": resume_at, "max_epochs": 20, "epoch_length": 2})
            engine.run([0, 1])
        else:
            engine.run([0, 1], max_epochs=20)
        return engine.state.epoch, schedule, lrs, clock[0]

    # epochs of 20 s and validations of 20 s every 2 epochs: 30 s an epoch, where 20 epochs need 600 s with
    # their 10 validations. After epoch 3 (80 s) 15 more fit 95% of the 600 s with the last validation: 18 epochs
    epochs, schedule, lrs, seconds = run(10.0)
    assert (epochs, schedule.t_total, seconds) == (18, 36, 540.0)
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)  # the decay ended (cut at step 36 of 40 it would be 0.03)
    saved = read_plan(tmp_path)
    assert saved["max_epochs"] == 18 and saved["budget_refit"]["planned_epochs"] == 20
    assert saved["budget_refit"]["after_epoch"] == 3 and saved["budget_refit"]["seconds_per_epoch"] == 20.0
    # twice as fast: 10 s epochs, 20 s an epoch with validation; after epoch 3 (50 s), 25 more fit; the
    # later refits find the same; 28 epochs and 14 validations end at 560 s
    (tmp_path / "plan.json").write_text(json.dumps({"max_epochs": 20}))
    epochs, schedule, lrs, seconds = run(5.0)
    assert (epochs, schedule.t_total, seconds) == (28, 56, 560.0)
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3) and read_plan(tmp_path)["max_epochs"] == 28
    # epochs 1-5 at 20 s, then 10 s: shortened to 18 after epoch 3, lengthened as the pace recovers; the
    # run ends in the budget with its decay ended
    epochs, schedule, lrs, seconds = run(5.0, slow_epochs=5)
    assert 20 < epochs < 28 and schedule.t_total == 2 * epochs and seconds <= 600.0
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3) and read_plan(tmp_path)["budget_refit"]["after_epoch"] > 3
    # resumed: not refitted (the budget stop alone ends it in budget)
    (tmp_path / "plan.json").write_text(json.dumps({"max_epochs": 20}))
    epochs, schedule, _, seconds = run(10.0, resume_at=4)  # the pace that refitted a fresh run above
    assert (epochs, schedule.t_total, seconds) == (20, 40, 480.0)
    assert read_plan(tmp_path) == {"max_epochs": 20}
    with pytest.raises(TypeError, match="t_total.*lr_scheduler: null"):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        TimeBudgetHandler(minutes=1, lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=1))


def test_largest_component_beside_or_instead_of_the_prediction():
    pred = torch.zeros(1, 20, 20)
    pred[0, 2:10, 2:10] = 1  # the largest object
    pred[0, 15:17, 15:17] = 1  # a speck
    out = LargestComponentd(keys="pred")({"pred": pred})
    assert out["pred"].sum() == 68 and out["pred_largest"].sum() == 64
    onehot = torch.stack([1 - pred[0], pred[0]])
    applied = LargestComponentd(keys="pred", apply=True)({"pred": onehot})
    assert applied["pred"][1].sum() == 64 and applied["pred"][0].sum() == 400 - 68  # background untouched


def test_validation_evaluation_records_the_largest_component_choice(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"image_size": [128, 128]}))
    engine = Engine(lambda e, b: None)
    LargestComponentDecision(tmp_path, split="validation").attach(engine)
    LargestComponentDecision(tmp_path, split="test").attach(engine)  # other splits never decide

    @engine.on(Events.EPOCH_COMPLETED)
    def metrics(e):
        e.state.metrics.update(mean_dice=0.80, mean_dice_largest_component=0.83)

    engine.run([0])
    plan = read_plan(tmp_path)
    assert plan["keep_largest"] is True and plan["image_size"] == [128, 128]
    assert plan["keep_largest_dice"] == {"plain": 0.80, "largest_component": 0.83}
