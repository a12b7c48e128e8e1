import re
from pathlib import Path

import pytest
import torch
from monai.networks.nets import BasicUNet, SwinUNETR

from bundle.networks import BasicUNetTIF, SwinUNETRTIF

DOC = Path(__file__).resolve().parents[1] / "docs" / "tif_in_your_network.md"


def test_docs_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_basic_unet_tif_loads_plain_weights(spatial_dims):
    kwargs = dict(spatial_dims=spatial_dims, in_channels=3, out_channels=2, features=(8, 8, 16, 32, 64, 8))
    plain, tif = BasicUNet(**kwargs), BasicUNetTIF(**kwargs)
    report = tif.load_state_dict(plain.state_dict(), strict=False)
    assert not report.unexpected_keys
    assert report.missing_keys and all(k.startswith("fusions.") for k in report.missing_keys)
    torch.testing.assert_close(tif.conv_0.conv_0.conv.weight, plain.conv_0.conv_0.conv.weight)
    x = torch.rand(1, 3, *([64] * spatial_dims))
    out = tif(x)
    assert out.shape == (1, 2) + (64,) * spatial_dims
    out.mean().backward()
    assert all(p.grad is not None for p in tif.fusions.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_swin_unetr_tif_loads_plain_weights(spatial_dims):
    kwargs = dict(in_channels=1, out_channels=3, feature_size=12, spatial_dims=spatial_dims)
    plain = SwinUNETR(**kwargs)
    tif = SwinUNETRTIF(**kwargs, tif_levels=(2, 3, 4))
    report = tif.load_state_dict(plain.state_dict(), strict=False)
    assert not report.unexpected_keys
    assert report.missing_keys and all(
        k.startswith(("swinViT.coarse.", "swinViT.fusions.")) for k in report.missing_keys
    )
    torch.testing.assert_close(
        tif.swinViT.fine.layers1[0].blocks[0].attn.qkv.weight, plain.swinViT.layers1[0].blocks[0].attn.qkv.weight
    )
    tif.init_coarse_from_fine()
    torch.testing.assert_close(
        tif.swinViT.coarse.layers1[0].blocks[0].attn.qkv.weight, plain.swinViT.layers1[0].blocks[0].attn.qkv.weight
    )
    x = torch.rand(1, 1, *([64] * spatial_dims))
    assert tif(x).shape == (1, 3) + (64,) * spatial_dims


def test_swin_unetr_tif_load_from_takes_monai_pretrained_swin_weights():
    """``SwinUNETR.load_from``'s self-supervised checkpoint layout ("module." + encoder keys, MLPs as fc1/fc2)
    fills both encoders, as it fills a plain SwinUNETR's."""
    kwargs = dict(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2)
    pretrained = SwinUNETR(**kwargs).swinViT
    weights = {
        "state_dict": {"module." + k.replace("mlp.linear", "mlp.fc"): v for k, v in pretrained.state_dict().items()}
    }
    SwinUNETR(**kwargs).load_from(weights)  # the layout MONAI's own loader reads
    tif = SwinUNETRTIF(**kwargs)
    tif.load_from(weights)
    for encoder in (tif.swinViT.fine, tif.swinViT.coarse):
        torch.testing.assert_close(
            encoder.layers3[0].blocks[1].attn.qkv.weight, pretrained.layers3[0].blocks[1].attn.qkv.weight
        )
        torch.testing.assert_close(
            encoder.layers2[0].downsample.reduction.weight, pretrained.layers2[0].downsample.reduction.weight
        )
    torch.testing.assert_close(tif.swinViT.fine.patch_embed.proj.weight, pretrained.patch_embed.proj.weight)


def test_bad_levels_are_named():
    with pytest.raises(ValueError, match="tif_levels"):
        BasicUNetTIF(tif_levels=(5,))
    with pytest.raises(ValueError, match="tif_levels"):
        SwinUNETRTIF(1, 2, spatial_dims=2, tif_levels=(7,))


def test_comparison_script_runs_on_kvasir(kvasir_dir, tmp_path):
    """scripts/compare_networks.py trains and evaluates through the bundle's commands (a tiny split and budget)."""
    import json
    import subprocess
    import sys

    full = json.loads((kvasir_dir / "datalist_800_100_100.json").read_text())
    absolute = lambda items: [{k: str(kvasir_dir / v) for k, v in i.items()} for i in items]  # noqa: E731
    small = {"training": absolute(full["training"][:8]), "validation": absolute(full["validation"][:2]),
             "test": absolute(full["test"][:2])}  # fmt: skip
    (tmp_path / "small.json").write_text(json.dumps(small))
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_networks.py"
    cmd = [sys.executable, str(script), "--datalist", str(tmp_path / "small.json"), "--rows", "unet_tif", "--seeds", "0",
           "--budget-minutes", "0.2", "--work", str(tmp_path / "work"), "--output", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "out" / "results_table.md").read_text()
    assert "| UNet+TIF | 0 |" in table
    assert all(
        (tmp_path / "out" / f).is_file() for f in ("results_dice.png", "results_curves.png", "results_predictions.png")
    )
    row = json.loads((tmp_path / "work" / "unet_tif_seed0" / "result.json").read_text())
    assert 0.0 <= row["test_dice"] <= 1.0 and row["image_size"] and len(row["test_overlays"]) == 2
    trained = row["history"][-1]["epoch"]  # the last epoch is always validated
    assert f", {trained} of {row['max_epochs']} |" in table and "minutes in all" in table
    rebuilt = subprocess.run(cmd + ["--report-only"], capture_output=True, text=True, timeout=600)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "rebuilt from the finished rows" in (tmp_path / "out" / "results_table.md").read_text()


def test_comparison_script_names_a_missing_datalist(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_networks.py"
    missing = tmp_path / "datalist_800_100_100.json"
    proc = subprocess.run([sys.executable, str(script), "--datalist", str(missing), "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and f"no datalist at {missing}" in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("network", ["unet_tif", "swin_unetr_tif"])
def test_tif_networks_train_through_the_bundle_with_only_the_network_swapped(network, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    configs = f"['{repo}/configs/train.yaml','{repo}/configs/networks/{network}.yaml']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", configs,
           "--bundle_root", str(tmp_path), "--max_epochs", "1", "--demo_count", "8"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "models" / "model.pt").is_file()
