"""ImageNet Swin weights (issue 13), tested without any download.

Hugging Face ``transformers`` builds Swin-T and Swin-B with random weights; that state dict is turned
into Microsoft's, timm's and torchvision's key layouts here, block by block, with the published key
correspondences (../shared/reference/swin_checkpoints.md), and each must load into our branches and
give Hugging Face's own stage outputs. Norms, biases and bias tables are randomised too, so a tensor
loaded into the wrong place shows.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers", reason="Hugging Face transformers builds the reference Swin models")

from bundle.networks import DSTransUNet, SwinUNETRTIF, SwinWeightsError, load_swin_weights  # noqa: E402
from bundle.networks.blocks import SwinBranch  # noqa: E402
from bundle.networks.swin_weights import adapt_input_channels, resample_patch_kernel, resize_bias_table  # noqa: E402
from helpers import REPO, run_bundle  # noqa: E402

SWIN_T = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
SWIN_B = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12)
LAYOUTS = ["huggingface", "huggingface_legacy", "microsoft", "timm", "torchvision"]


def hf_swin(seed: int, patch_size: int = 4, **arch) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = transformers.SwinModel(transformers.SwinConfig(image_size=224, patch_size=patch_size, **arch)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # LayerNorm weights near 1, biases around 0: all distinct
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("relative_position_bias_table"):
                p.normal_()
    return model


@torch.no_grad()
def hf_stage_outputs(model: torch.nn.Module, x: torch.Tensor) -> list:
    """Each stage's output before patch merging, (B, tokens, C), as DS-TransUNet takes it."""
    outputs = []
    hooks = [stage.blocks[-1].register_forward_hook(lambda m, i, o: outputs.append(o[0] if isinstance(o, tuple) else o))
             for stage in model.encoder.layers]  # fmt: skip
    model(x)
    for h in hooks:
        h.remove()
    return outputs


@torch.no_grad()
def our_stage_outputs(branch: SwinBranch, x: torch.Tensor) -> list:
    outputs = []
    hooks = [stage.register_forward_hook(lambda m, i, o: outputs.append(o.flatten(1, 2))) for stage in branch.stages]
    branch.eval()(x)
    for h in hooks:
        h.remove()
    return outputs


def max_difference(ours: list, reference: list) -> float:
    assert [o.shape for o in ours] == [r.shape for r in reference]
    return max((o - r).abs().max().item() for o, r in zip(ours, reference))


# ---- the layouts, made from Hugging Face's state dict by the published correspondences ----------------


def to_microsoft(hf: dict, n_stages: int, window: int) -> dict:
    """Microsoft's release: ``{"model": ...}``, buffers and the classifier included."""
    sd = {
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "patch_embed.norm.weight": hf["embeddings.norm.weight"],
        "patch_embed.norm.bias": hf["embeddings.norm.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    for i in range(n_stages):
        blocks = sorted({int(m.group(1)) for k in hf if (m := re.match(rf"encoder\.layers\.{i}\.blocks\.(\d+)\.", k))})
        for j in blocks:
            h, m = f"encoder.layers.{i}.blocks.{j}.", f"layers.{i}.blocks.{j}."
            for kind in ("weight", "bias"):
                sd[f"{m}norm1.{kind}"] = hf[f"{h}layernorm_before.{kind}"]
                sd[f"{m}attn.qkv.{kind}"] = torch.cat([hf[f"{h}attention.{p}_proj.{kind}"] for p in "qkv"])
                sd[f"{m}attn.proj.{kind}"] = hf[f"{h}attention.o_proj.{kind}"]
                sd[f"{m}norm2.{kind}"] = hf[f"{h}layernorm_after.{kind}"]
                sd[f"{m}mlp.fc1.{kind}"] = hf[f"{h}mlp.fc1.{kind}"]
                sd[f"{m}mlp.fc2.{kind}"] = hf[f"{h}mlp.fc2.{kind}"]
            sd[f"{m}attn.relative_position_bias_table"] = hf[
                f"{h}attention.relative_position_bias.relative_position_bias_table"
            ]
            sd[f"{m}attn.relative_position_index"] = torch.randint(0, 100, (window**2, window**2))
            if j % 2:
                sd[f"{m}attn_mask"] = torch.zeros(4, window**2, window**2)
        for k in ("reduction.weight", "norm.weight", "norm.bias"):
            if f"encoder.layers.{i}.downsample.{k}" in hf:
                sd[f"layers.{i}.downsample.{k}"] = hf[f"encoder.layers.{i}.downsample.{k}"]
    sd["head.weight"], sd["head.bias"] = torch.randn(10, hf["layernorm.weight"].shape[0]), torch.randn(10)
    return {"model": sd}


def to_timm(microsoft: dict) -> dict:
    """timm >= 0.9: merging at the start of the next stage, ``head.fc``."""
    out = {}
    for key, value in microsoft["model"].items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}" if m else key
        out[re.sub(r"^head\.", "head.fc.", key)] = value
    return out


def to_torchvision(microsoft: dict) -> dict:
    out = {}
    for key, value in microsoft["model"].items():
        if key == "patch_embed.proj.weight" or key == "patch_embed.proj.bias":
            key = "features.0.0." + key.rsplit(".", 1)[1]
        elif key.startswith("patch_embed.norm."):
            key = "features.0.2." + key.rsplit(".", 1)[1]
        elif m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)", key):
            rest = m.group(3).replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
            if rest == "attn_mask":
                continue  # torchvision builds its mask in forward
            key = f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}.{rest}"
        elif m := re.match(r"layers\.(\d+)\.downsample\.(.*)", key):
            key = f"features.{2 * int(m.group(1)) + 2}.{m.group(2)}"
        out[key] = value
    return out


def to_huggingface_legacy(hf: dict) -> dict:
    """Older hub files (transformers < 5): ``attention.self.query`` ..., ``intermediate.dense``, prefixed by ``swin.``."""
    out = {}
    for key, value in hf.items():
        key = (key.replace("attention.q_proj.", "attention.self.query.").replace("attention.k_proj.", "attention.self.key.")
               .replace("attention.v_proj.", "attention.self.value.").replace("attention.o_proj.", "attention.output.dense.")
               .replace("attention.relative_position_bias.relative_position_bias_table", "attention.self.relative_position_bias_table")
               .replace("mlp.fc1.", "intermediate.dense.").replace("mlp.fc2.", "output.dense."))  # fmt: skip
        out["swin." + key] = value
    out["classifier.weight"] = torch.randn(10, hf["layernorm.weight"].shape[0])
    return out


def in_layout(model: torch.nn.Module, layout: str, window: int):
    hf = model.state_dict()
    n = len(model.encoder.layers)
    return {
        "huggingface": lambda: hf,
        "huggingface_legacy": lambda: to_huggingface_legacy(hf),
        "microsoft": lambda: to_microsoft(hf, n, window),
        "timm": lambda: to_timm(to_microsoft(hf, n, window)),
        "torchvision": lambda: to_torchvision(to_microsoft(hf, n, window)),
    }[layout]()


@pytest.fixture(scope="module")
def swin_t():
    return hf_swin(0, **SWIN_T)


@pytest.fixture(scope="module")
def swin_b():
    return hf_swin(1, **SWIN_B)


def fine_branch(window: int = 12, in_channels: int = 3) -> SwinBranch:
    return SwinBranch(2, in_channels, 128, (2, 2, 18, 2), (4, 8, 16, 32), 4, window_size=window)


def coarse_branch(in_channels: int = 3, patch_size: int = 8) -> SwinBranch:
    return SwinBranch(2, in_channels, 96, (2, 2, 6, 2), (3, 6, 12, 24), patch_size, window_size=7)


# ---- parity ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swin_b_in_fine_branch(swin_b):
    """Our fine branch (Swin-B widths, window 12) from Hugging Face's Swin-B, and its parity on an input
    where every stage is larger than the window (416 px: the last stage is 13 x 13)."""
    x = torch.randn(1, 3, 416, 416, generator=torch.Generator().manual_seed(0))
    branch = fine_branch()
    load_swin_weights(branch, swin_b.state_dict())
    assert max_difference(our_stage_outputs(branch, x), hf_stage_outputs(swin_b, x)) <= 1e-5
    return {k: v.clone() for k, v in branch.state_dict().items()}


@pytest.fixture(scope="module")
def empty_fine_branch():
    return fine_branch()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fine_branch_gives_swin_b_outputs_from_every_layout(swin_b, swin_b_in_fine_branch, empty_fine_branch, layout):
    """Every layout puts every tensor where Hugging Face's does (those weights give Swin-B's own outputs)."""
    branch = empty_fine_branch
    with torch.no_grad():
        for p in branch.parameters():
            p.zero_()
    report = load_swin_weights(branch, in_layout(swin_b, layout, 12))
    assert report.layout == layout.replace("_legacy", "") and not report.adapted
    assert report.initial == [f"norms.{i}.{k}" for i in range(4) for k in ("weight", "bias")]
    for key, value in branch.state_dict().items():
        if not key.startswith("norms."):
            assert torch.equal(value, swin_b_in_fine_branch[key]), key


@pytest.mark.parametrize("layout", LAYOUTS)
def test_coarse_branch_gives_swin_t_outputs_on_the_half_scale_image(swin_t, layout):
    """Patch 8 from Swin-T's patch 4: the coarse branch on x is Swin-T on x average-pooled by 2."""
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))  # pooled 256: last stage 8 > 7
    branch = coarse_branch()
    report = load_swin_weights(branch, in_layout(swin_t, layout, 7), target_name="coarse branch")
    assert report.adapted == {"patch_embed.proj.weight": "patch embedding: kernel resampled from patch 4 to 8"}
    assert {"head.weight", "norm.weight"} <= set(report.dropped) or layout.startswith("huggingface")
    reference = hf_stage_outputs(swin_t, F.avg_pool2d(x, 2))
    assert max_difference(our_stage_outputs(branch, x), reference) <= 1e-5


def test_base_preset_loads_the_papers_checkpoints_as_the_authors_do(swin_b, swin_t, tmp_path):
    """preset base (window 7 in both branches): Swin-B's window-12 bias tables resized bicubically, as the
    authors' load_pretrained does; checked against a window-7 Swin-B given the directly resized tables."""
    fine_file, coarse_file = (
        tmp_path / "swin_base_patch4_window12_384_22k.pth",
        tmp_path / "swin_tiny_patch4_window7_224.pth",
    )
    torch.save(to_microsoft(swin_b.state_dict(), 4, 12), fine_file)
    torch.save(to_microsoft(swin_t.state_dict(), 4, 7), coarse_file)
    model = DSTransUNet(preset="base", fine_weights=fine_file, coarse_weights=coarse_file).eval()

    window7 = hf_swin(2, **{**SWIN_B, "window_size": 7})
    state = {k: v for k, v in swin_b.state_dict().items() if not k.endswith("relative_position_bias_table")}
    for k, v in swin_b.state_dict().items():
        if k.endswith("relative_position_bias_table"):
            grid = v.T.reshape(1, v.shape[1], 23, 23)
            state[k] = F.interpolate(grid, size=(13, 13), mode="bicubic", align_corners=False).reshape(v.shape[1], -1).T
    window7.load_state_dict(state)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))  # last stage 8 > 7
    assert max_difference(our_stage_outputs(model.fine_branch, x), hf_stage_outputs(window7, x)) <= 1e-5
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(2))  # the coarse branch's last stage: 8
    assert (
        max_difference(our_stage_outputs(model.coarse_branch, x), hf_stage_outputs(swin_t, F.avg_pool2d(x, 2))) <= 1e-5
    )

    # the authors leave the coarse patch embedding (a shape mismatch for them) at its initial values
    authors = coarse_branch()
    before = authors.patch_embed.proj.weight.clone()
    report = load_swin_weights(authors, coarse_file, resample_patch_embed=False)
    assert torch.equal(authors.patch_embed.proj.weight, before)
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= set(report.initial)
    assert "patch_embed.proj.weight" in report.dropped


def test_grayscale_input_sums_the_rgb_kernel(swin_t):
    x = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(3))
    branch = coarse_branch(in_channels=1, patch_size=4)
    report = load_swin_weights(branch, swin_t.state_dict())
    assert report.adapted["patch_embed.proj.weight"] == "patch embedding: 1 input channel(s)"
    assert max_difference(our_stage_outputs(branch, x), hf_stage_outputs(swin_t, x.repeat(1, 3, 1, 1))) <= 1e-5
    kernel = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(adapt_input_channels(kernel, 2), kernel[:, [0, 1]] * 1.5)
    torch.testing.assert_close(adapt_input_channels(kernel, 4), kernel[:, [0, 1, 2, 0]] * 0.75)


def test_patch_kernel_and_bias_table_adaptations_against_direct_computations():
    kernel, x = torch.randn(6, 3, 4, 4), torch.randn(2, 3, 64, 64)
    coarse = F.conv2d(x, resample_patch_kernel(kernel, 8), stride=8)
    torch.testing.assert_close(coarse, F.conv2d(F.avg_pool2d(x, 2), kernel, stride=4))
    fine = F.conv2d(x, resample_patch_kernel(kernel, 2), stride=2)  # SwinUNETR's patch 2
    torch.testing.assert_close(fine, F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), kernel, stride=4))
    table = torch.randn(23 * 23, 4)
    direct = F.interpolate(table.T.reshape(1, 4, 23, 23), size=(13, 13), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resize_bias_table(table, 7), direct.reshape(4, 169).T)


def test_swin_unetr_tif_encoders_load_swin_t(swin_t):
    model = SwinUNETRTIF(spatial_dims=2, in_channels=3, out_channels=1, feature_size=96, depths=(2, 2, 6, 2),
                         num_heads=(3, 6, 12, 24))  # fmt: skip
    fine = load_swin_weights(model.swinViT.fine, swin_t.state_dict(), target_name="SwinUNETRTIF fine encoder")
    coarse = load_swin_weights(model.swinViT.coarse, to_microsoft(swin_t.state_dict(), 4, 7))
    assert fine.adapted == {"patch_embed.proj.weight": "patch embedding: kernel resampled from patch 4 to 2"}
    assert not coarse.adapted  # the coarse encoder's patch is SwinUNETR's 2 x coarse_scale 2: Swin's 4
    for report in (fine, coarse):
        assert report.dropped["patch_embed.norm.weight"].startswith("not in")  # SwinUNETR has no patch norm
        assert "layers4.0.downsample.reduction.weight" in report.initial  # Swin's last stage does not merge
    hf = swin_t.state_dict()
    torch.testing.assert_close(model.swinViT.coarse.layers3[0].blocks[5].mlp.linear2.weight,
                               hf["encoder.layers.2.blocks.5.mlp.fc2.weight"])  # fmt: skip
    q = hf["encoder.layers.1.blocks.1.attention.q_proj.weight"]
    torch.testing.assert_close(model.swinViT.fine.layers2[0].blocks[1].attn.qkv.weight[: q.shape[0]], q)


# ---- refusals: one line naming the file, the layout and the first mismatch -----------------------------


def test_refusals_name_the_file_layout_and_first_mismatch(swin_t, tmp_path):
    swin_t_file = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(to_microsoft(swin_t.state_dict(), 4, 7), swin_t_file)
    with pytest.raises(SwinWeightsError, match=r"not found: .*missing\.pth"):
        load_swin_weights(coarse_branch(), tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    with pytest.raises(SwinWeightsError, match=r"resnet\.pth fits no Swin layout .*first keys are conv\.weight"):
        load_swin_weights(coarse_branch(), tmp_path / "resnet.pth")
    v2 = {**swin_t.state_dict(), "encoder.layers.0.blocks.0.attention.logit_scale": torch.zeros(3, 1, 1)}
    with pytest.raises(SwinWeightsError, match=r"Swin V2 .*logit_scale.*cosine attention"):
        load_swin_weights(coarse_branch(), v2)
    tiny = SwinBranch(2, 3, 32, (2, 2, 2, 2), (1, 2, 4, 8), 4)
    with pytest.raises(
        SwinWeightsError,
        match=r"swin_tiny_patch4_window7_224\.pth \(Microsoft .* layout\) .*2-2-6-2 in the file, 2-2-2-2",
    ):
        load_swin_weights(tiny, swin_t_file)
    narrow = SwinBranch(2, 3, 64, (2, 2, 6, 2), (2, 4, 8, 16), 4)
    with pytest.raises(
        SwinWeightsError,
        match=r"swin_tiny_patch4_window7_224\.pth .*patch_embed\.proj\.weight has "
        r"shape \(96, 3, 4, 4\) in the file, patch_embed\.proj\.weight \(64, 3, 4, 4\)",
    ):
        load_swin_weights(narrow, swin_t_file)
    with pytest.raises(TypeError, match="SwinBranch"):
        load_swin_weights(torch.nn.Linear(2, 2), swin_t_file)


# ---- through the bundle: the done-when command ------------------------------------------------------------


def test_training_with_imagenet_weights_through_the_bundle(swin_b, swin_t, tmp_path, monkeypatch):
    """`--preset base --fine_weights A.pth --coarse_weights B.pth` on CPU: the load reports and the ImageNet
    normalisation are logged, recorded in the plan, and read back by evaluation and inference."""
    from PIL import Image
    import numpy as np

    fine_file, coarse_file = tmp_path / "A.pth", tmp_path / "B.pth"
    torch.save(to_microsoft(swin_b.state_dict(), 4, 12), fine_file)
    torch.save(to_microsoft(swin_t.state_dict(), 4, 7), coarse_file)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.RandomState(0)
    for i in range(8):
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + i : 40 + i, 12:44] = 255
        image = np.clip(
            np.stack([mask * 0.6 + 40, 200 - mask * 0.3, np.full_like(mask, 90)], -1) + rng.randint(0, 40, (64, 64, 3)),
            0,
            255,
        )
        Image.fromarray(image.astype(np.uint8)).save(data / "images" / f"p{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"p{i}.png")
    root = tmp_path / "run"
    result = run_bundle(["training", "--config_file", "configs/train.yaml", "--bundle_root", root, "--preset", "base",
                         "--fine_weights", fine_file, "--coarse_weights", coarse_file, "--dataset_dir", data,
                         "--max_epochs", "1", "--epoch_length", "2", "--batch_size", "2"], timeout=900)  # fmt: skip
    log = result.stdout + result.stderr
    assert f"DSTransUNet fine branch <- {fine_file} (Microsoft Swin-Transformer release layout)" in log
    assert "24 x bias table resized to window 7" in log  # Swin-B's 24 blocks, window 12 to the authors' 7
    assert f"DSTransUNet coarse branch <- {coarse_file}" in log and "kernel resampled from patch 4 to 8" in log
    assert "ImageNet mean/std intensities" in log
    plan = json.loads((root / "runs" / "train" / "plan.json").read_text())
    assert plan["intensity"] == "imagenet" and plan["given"] == {"max_epochs": 1, "batch_size": 2}
    assert plan["settings"]["pretrained"] is True  # ImageNet's linear patch embedding, not early convolutions
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["fine_branch.patch_embed.proj.weight"].shape[-2:] == (4, 4)
    assert not any(".patch_embed.convs." in k for k in state)

    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)  # inference.yaml's macros name train.yaml from the bundle root, where MONAI runs
    for configs in (["train.yaml", "evaluate.yaml"], ["inference.yaml"]):
        parser = ConfigParser(ConfigParser.load_config_files([REPO / "configs" / c for c in configs]))
        parser.update({"bundle_root": str(root), "preset": "base"})
        assert parser.get_parsed_content("plan").intensity == "imagenet", configs
        # the network as trained, from the plan, without the weight files: model.pt loads into it
        network = parser.get_parsed_content("network")
        assert type(network.fine_branch.patch_embed).__name__ == "PatchEmbed", configs

    bad = run_command_failing(["training", "--config_file", "configs/train.yaml", "--bundle_root", tmp_path / "bad",
                               "--fine_weights", tmp_path / "nowhere.pth", "--max_epochs", "1"])  # fmt: skip
    assert bad.stderr.strip().splitlines()[-1] == f"ERROR: Swin weights file not found: {tmp_path / 'nowhere.pth'}"
    assert not (tmp_path / "bad" / "models").exists()


def run_command_failing(args):
    import subprocess
    import sys

    from helpers import cli_env

    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *map(str, args)], cwd=REPO, env=cli_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0
    return result


def test_conv_patch_embedding_keeps_its_own_weights_and_loads_the_rest(swin_t):
    """patch_embed="conv": the checkpoint's linear patch embedding has no place, so it is reported as
    dropped and the early convolutions keep their initial values; every Swin block still loads."""
    torch.manual_seed(0)
    model = DSTransUNet(preset="tiny", embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), patch_embed="conv")
    before = {k: v.clone() for k, v in model.fine_branch.patch_embed.state_dict().items()}
    report = load_swin_weights(model.fine_branch, swin_t.state_dict(), target_name="fine branch")
    assert report.dropped["patch_embed.proj.weight"] == (
        "the branch embeds patches with convolutions (patch_embed='conv')"
    )
    assert not report.adapted and "patch_embed.proj.weight" in report.initial
    for key, value in model.fine_branch.patch_embed.state_dict().items():
        assert torch.equal(value, before[key]), key
    fc2 = swin_t.state_dict()["encoder.layers.2.blocks.5.mlp.fc2.weight"]
    torch.testing.assert_close(model.fine_branch.stages[2].blocks[5].mlp.linear2.weight, fc2)
