import os
import sys

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from bundle.networks import DSTransUNet, convert_authors_state_dict
from bundle.networks.nets.ds_transunet import PRESETS


def _zero_drop_path(**kwargs):
    return DSTransUNet(
        preset="tiny", drop_path_rate=0.0, coarse_drop_path_rate=0.0, decoder_drop_path_rate=0.0, **kwargs
    )


@pytest.mark.parametrize(
    "size, in_channels, out_channels",
    [((64, 64), 3, 1), ((100, 70), 1, 3), ((352, 352), 3, 2), ((300, 420), 1, 1), ((33, 129), 3, 4)],
)
def test_output_has_input_size(size, in_channels, out_channels):
    model = DSTransUNet(preset="tiny", in_channels=in_channels, out_channels=out_channels).eval()
    with torch.no_grad():
        out = model(torch.rand(1, in_channels, *size))
    assert out.shape == (1, out_channels, *size)


def test_deep_supervision_in_training_only():
    model = DSTransUNet(preset="tiny", out_channels=2, deep_supervision=True)
    x, y = torch.rand(2, 3, 96, 80), torch.randint(0, 2, (2, 1, 96, 80))
    outs = model.train()(x)
    assert isinstance(outs, list) and len(outs) == 3 and all(o.shape == (2, 2, 96, 80) for o in outs)
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weights=[0.6, 0.2, 0.2])(outs, y)
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 96, 80)


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_training_step_under_bf16_autocast_matches_fp32(monkeypatch, use_checkpoint):
    """Mixed precision (CPU bf16 autocast here; CUDA AMP is the same mechanism) through every recomputed
    piece, the hand-written pre-norm MLP backward included: the backward runs, every gradient is fp32,
    and the gradients agree with fp32's to bf16's precision."""
    from bundle.networks import memory

    monkeypatch.setattr(memory, "CHEAP_RECOMPUTE_MIN_BYTES", 0)  # recompute at this small size too
    model = _zero_drop_path(deep_supervision=True, use_checkpoint=use_checkpoint, stem="conv").train()
    x = torch.rand(2, 3, 64, 64)
    grads = {}
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outs = model(x)
        assert all(o.dtype == (torch.bfloat16 if bf16 else torch.float32) for o in outs)
        sum(o.float().square().mean() for o in outs).backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
        grads[bf16] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert grads[True].shape == grads[False].shape
    assert ((grads[True] - grads[False]).norm() / grads[False].norm()).item() < 0.2


def test_aux_heads_have_no_relu_unless_asked():
    assert not any(
        isinstance(m, torch.nn.ReLU) for m in DSTransUNet(preset="tiny", deep_supervision=True).aux_heads.modules()
    )
    assert any(
        isinstance(m, torch.nn.ReLU)
        for m in DSTransUNet(preset="tiny", deep_supervision=True, aux_relu=True).aux_heads.modules()
    )


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_every_parameter_gets_a_gradient(use_checkpoint):
    model = _zero_drop_path(deep_supervision=True, use_checkpoint=use_checkpoint).train()
    outs = model(torch.rand(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert sum(bool(p.grad.abs().sum() > 0) for p in model.parameters()) > 0.95 * len(list(model.parameters()))


def test_checkpointing_changes_nothing_but_memory():
    torch.manual_seed(1)
    plain = _zero_drop_path().train()
    ckpt = _zero_drop_path(use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 64, 64)
    out_a, out_b = plain(x), ckpt(x)
    torch.testing.assert_close(out_a, out_b)
    out_a.sum().backward()
    out_b.sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_cheap_recomputation_only_on_large_maps(monkeypatch):
    """The network decides once per forward: below CHEAP_RECOMPUTE_MIN_BYTES of first token map nothing is
    recomputed by default, above it the cheap pieces are; gradients are the same either way, with and
    without use_checkpoint (whose recomputation must save what its forward saved)."""
    import torch.utils.checkpoint

    from bundle.networks import memory

    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)  # tiny: 2 x 16 x 16 tokens x 32 channels x 4 bytes = 64 KiB
    weights = _zero_drop_path().state_dict()
    grads = {}
    for label, threshold, use_checkpoint in [
        ("small map", memory.CHEAP_RECOMPUTE_MIN_BYTES, False),
        ("large map", 1, False),
        ("small map, use_checkpoint", memory.CHEAP_RECOMPUTE_MIN_BYTES, True),
        ("large map, use_checkpoint", 1, True),
    ]:
        monkeypatch.setattr(memory, "CHEAP_RECOMPUTE_MIN_BYTES", threshold)
        net = _zero_drop_path(use_checkpoint=use_checkpoint).train()
        net.load_state_dict(weights)
        calls.clear()
        net(x).sum().backward()
        grads[label] = [p.grad for p in net.parameters()]
        if label == "small map":
            assert calls == []  # stored, not recomputed
        else:
            assert calls
    for label, g in grads.items():
        for a, b in zip(grads["small map"], g):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=label)


def test_heap_release_is_the_training_sides_choice(monkeypatch):
    """A network never changes the process's allocator: its recomputed segments return freed heap to the OS
    in backward only after the training side (HeapReleaseHandler) turned that on."""
    from ignite.engine import Engine

    from bundle.networks import memory
    from bundle.workflows.handlers import HeapReleaseHandler

    trims = []
    monkeypatch.setattr(memory, "_trim", lambda grad: trims.append(grad.shape))
    monkeypatch.setattr(memory, "_RELEASING", False)
    net = DSTransUNet(preset="tiny", use_checkpoint=True, deep_supervision=False).train()
    x = torch.rand(1, 3, 64, 64)
    net(x).sum().backward()
    assert trims == []

    engine = Engine(lambda e, batch: None)
    HeapReleaseHandler(enabled=False).attach(engine)
    engine.run([0])
    assert not memory._RELEASING
    HeapReleaseHandler(enabled=True).attach(engine)
    engine.run([0])
    if memory._glibc() is None:
        pytest.skip("no glibc here: the release is a no-op")
    assert memory._RELEASING
    net(x).sum().backward()
    assert trims  # each recomputed segment, as backward reaches it


@pytest.mark.parametrize(
    "variant",
    [dict(dual_scale=False), dict(fusion="concat"), dict(decoder="conv"), dict(dual_scale=False, decoder="conv")],
)
def test_ablation_variants(variant):
    model = DSTransUNet(preset="tiny", **variant).eval()
    full = DSTransUNet(preset="tiny")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    assert (model.coarse_branch is None) == (not variant.get("dual_scale", True))
    assert len(model.fusions) == (4 if variant.get("dual_scale", True) and variant.get("fusion", "tif") == "tif" else 0)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 1, 64, 96)


def test_presets_and_overrides():
    tiny = DSTransUNet(preset="tiny")
    assert sum(p.numel() for p in tiny.parameters()) < 10e6
    custom = DSTransUNet(preset="tiny", embed_dim=64, num_heads=(2, 4, 8, 16))
    assert custom.fine_branch.channels == [64, 128, 256, 512]
    with pytest.raises(ValueError, match="preset"):
        DSTransUNet(preset="huge")
    with pytest.raises(ValueError, match="fusion"):
        DSTransUNet(preset="tiny", fusion="add")


def test_stem_channels_widen_the_full_resolution_path():
    default, wide = DSTransUNet(preset="tiny"), DSTransUNet(preset="tiny", stem_channels=32).eval()
    assert default.stem_full.out_channels == 8  # tiny's embed_dim // 4
    assert PRESETS["base"]["embed_dim"] // 4 == 32  # the default at base: the authors' down1, 32 channels
    assert wide.stem_full.out_channels == 32 and wide.stem_half[-1].out_channels == 64
    assert wide.head.in_channels == 32
    with torch.no_grad():
        assert wide(torch.rand(1, 3, 64, 96)).shape == (1, 1, 64, 96)
    with pytest.raises(ValueError, match="stem_channels"):
        DSTransUNet(preset="tiny", stem_channels=0)


def test_conv_stem_gives_the_full_resolution_skip_local_features():
    linear, conv = DSTransUNet(preset="tiny"), DSTransUNet(preset="tiny", stem="conv").eval()
    assert linear.stem_full.conv.kernel_size == (1, 1)  # the authors' down1: a 1x1 conv of the image
    assert [block.conv.kernel_size for block in conv.stem_full] == [(3, 3), (3, 3)]
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert conv.stem_full(image).min() >= 0  # ReLU: features, not a linear mix of the colours
        assert conv(image).shape == (1, 1, 64, 96)
    # the skip of a pixel sees its neighbours: a change one pixel away reaches it
    moved = image.clone()
    moved[0, :, 10, 11] += 1.0
    with torch.no_grad():
        assert not torch.equal(conv.stem_full(image)[0, :, 10, 10], conv.stem_full(moved)[0, :, 10, 10])
        assert torch.equal(linear.stem_full(image)[0, :, 10, 10], linear.stem_full(moved)[0, :, 10, 10])
    with pytest.raises(ValueError, match="stem must be 'linear' or 'conv'"):
        DSTransUNet(preset="tiny", stem="deep")


def test_stem_decoder_convs_deepen_the_half_and_full_resolution_stages():
    authors, deeper = DSTransUNet(preset="tiny"), DSTransUNet(preset="tiny", stem_decoder_convs=2).eval()
    assert not any(".refine." in k for k in authors.state_dict())  # the authors' keys, unchanged
    refined = {k.split(".refine.")[0] for k in deeper.state_dict() if ".refine." in k}
    n = len(deeper.decoder)
    assert refined == {f"decoder.{n - 2}", f"decoder.{n - 1}"}  # only the two stages the stem feeds
    assert [len(deeper.decoder[i].refine) for i in (n - 2, n - 1)] == [1, 1]
    with torch.no_grad():
        assert deeper(torch.rand(1, 3, 64, 96)).shape == (1, 1, 64, 96)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="stem_decoder_convs must be 1 or more"):
            DSTransUNet(preset="tiny", stem_decoder_convs=bad)


def test_3d_volumes():
    model = DSTransUNet(spatial_dims=3, in_channels=1, out_channels=2, preset="tiny", embed_dim=16,
                        num_heads=(1, 1, 2, 2), coarse_embed_dim=16, coarse_num_heads=(1, 1, 2, 2), window_size=4).eval()  # fmt: skip
    with torch.no_grad():
        assert model(torch.rand(1, 1, 40, 36, 33)).shape == (1, 2, 40, 36, 33)


def test_torchscript_round_trip(tmp_path):
    model = DSTransUNet(preset="tiny").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    path = tmp_path / "model.ts"
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path))
    x2 = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x2), model(x2), atol=1e-5, rtol=1e-5)


def test_patch_embed_stem_feeds_both_branches_from_the_stems_half_resolution_map():
    net = DSTransUNet(preset="tiny", stem="conv", stem_channels=8, patch_embed="stem")
    seen = {}
    for name in ("fine_branch", "coarse_branch"):
        getattr(net, name).register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0]))
    x = torch.rand(2, 3, 72, 64)
    out = net(x)
    assert out.shape == (2, 1, 72, 64)
    # the padded input is 128 x 64; both branches read the stem's 16 channels at half of it, and halve their strides
    assert seen["fine_branch"].shape == seen["coarse_branch"].shape == (2, 16, 64, 32)
    assert len(net.fine_branch.patch_embed.convs) == 1 and len(net.coarse_branch.patch_embed.convs) == 2
    # the Swin branches' loss reaches the stem's first convolution
    net.zero_grad()
    net._skips(net.stem_half(net.stem_full(torch.rand(1, 3, 64, 64))))[-1].square().mean().backward()
    assert net.stem_full[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="patch_embed must be 'linear', 'conv' or 'stem', got 'early'"):
        DSTransUNet(preset="tiny", patch_embed="early")


@pytest.mark.parametrize(
    "options",
    [dict(stem="linear"), dict(stem="conv"), dict(stem="conv", patch_embed="conv"), dict(stem="conv", patch_embed="stem")],
)
def test_traced_on_the_cpu_runs_on_another_device(options):
    # the exported model.ts is traced on the CPU and loaded with map_location="cuda": no tensor the
    # forward makes (window masks, padding masks) may keep the tracing device (meta stands in for CUDA)
    model = DSTransUNet(preset="tiny", **options).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, 72, 64), check_trace=False).to("meta")
        out = traced(torch.rand(1, 3, 72, 64, device="meta"))
    assert out.device.type == "meta" and out.shape == (1, 1, 72, 64)


def _authors_random_state_dict(key_shapes):
    # relative_position_index is a buffer of indices, not weights: take the real ones
    index = DSTransUNet(preset="tiny").fine_branch.stages[0].blocks[0].attn.relative_position_index
    return {k: index.clone() if k.endswith("relative_position_index") else torch.randn(s) * 0.02 for k, s in key_shapes}


def test_from_authors_loads_strictly(authors_key_shapes, tmp_path):
    state = _authors_random_state_dict(authors_key_shapes)
    assert len(state) == 840
    assert len(convert_authors_state_dict(state)) == 840
    model = DSTransUNet.from_authors(state)  # strict: no missing or unexpected keys
    assert len(model.state_dict()) == 840
    torch.testing.assert_close(model.head.conv.weight, state["final.weight"])
    torch.testing.assert_close(
        model.decoder[0].swin.blocks[1].mlp.linear2.weight, state["layer1.up.layer.blocks.1.mlp.fc2.weight"]
    )
    torch.testing.assert_close(model.fusions[3].r_token_proj.weight, state["cross_att_4.linear_s.weight"])
    # a checkpoint file, wrapped and with DataParallel prefixes, works too
    path = tmp_path / "authors.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    again = DSTransUNet.from_authors(path)
    torch.testing.assert_close(again.fine_branch.norms[3].weight, state["encoder.norm3.weight"])
    with torch.no_grad():
        outs = again.eval()(torch.rand(1, 3, 64, 64))
    assert outs.shape == (1, 1, 64, 64)


def test_from_authors_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        DSTransUNet.from_authors(tmp_path / "nowhere.pth")
    with pytest.raises(KeyError, match="final.weight"):
        DSTransUNet.from_authors({"some.weight": torch.zeros(1)})


AUTHORS_CODE = os.environ.get("DS_TRANSUNET_AUTHORS_CODE")


@pytest.mark.skipif(not AUTHORS_CODE, reason="set DS_TRANSUNET_AUTHORS_CODE to a CPU-runnable copy of the authors' code "
                    "(folder holding lib/DS_TransUNet.py) to compare outputs with their model")  # fmt: skip
def test_same_outputs_as_the_authors_model():
    sys.path.insert(0, AUTHORS_CODE)
    from lib.DS_TransUNet import UNet

    torch.manual_seed(0)
    theirs = UNet(128, 1).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = DSTransUNet.from_authors(theirs.state_dict()).eval()
    for size in (256, 512):
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            expected = theirs(x)
            assert (ours(x) - expected[0]).abs().max() <= 1e-4
            # the auxiliary outputs: training mode without stochastic depth
            ours.train()
            for m in ours.modules():
                if type(m).__name__ == "DropPath":
                    m.eval()
            for a, b in zip(ours(x)[1:], expected[1:]):
                assert (a - b).abs().max() <= 1e-4
            ours.eval()
