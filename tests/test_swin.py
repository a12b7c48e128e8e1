import pytest
import torch
from monai.networks.blocks import MLPBlock
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask

from bundle.networks.blocks.mlp import prenorm_mlp
from bundle.networks.blocks.swin import ConvPatchEmbed, SwinBlock, SwinBranch


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_matches_monai_where_windows_agree(shift):
    # on a map larger than the window MONAI neither shrinks the window nor drops the shift
    ours = SwinBlock(32, 4, [7, 7], [shift, shift])
    monai = SwinTransformerBlock(32, 4, [7, 7], [shift, shift], qkv_bias=True)
    monai.load_state_dict(ours.state_dict())
    x = torch.randn(2, 14, 21, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    mask = compute_mask([14, 21], [7, 7], [3, 3], x.device) if shift else None
    out, expected = ours(x, mask), monai(x2, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(ours.named_parameters(), monai.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("chunk_rows", [4096, 7])
def test_prenorm_mlp_gradients_equal_plain_autograd(chunk_rows, monkeypatch):
    monkeypatch.setattr("bundle.networks.blocks.mlp._CHUNK_ROWS", chunk_rows)
    norm, mlp = torch.nn.LayerNorm(16), MLPBlock(16, 64, 0.0, act="GELU")
    x = torch.randn(3, 10, 16, requires_grad=True)
    prenorm_mlp(x, norm, mlp).sin().sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in list(norm.parameters()) + list(mlp.parameters())]
    x.grad = None
    for p in list(norm.parameters()) + list(mlp.parameters()):
        p.grad = None
    mlp(norm(x)).sin().sum().backward()
    plain = [x.grad] + [p.grad for p in list(norm.parameters()) + list(mlp.parameters())]
    for a, b in zip(grads, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_branch_keeps_window_and_shift_on_small_maps():
    branch = SwinBranch(2, 3, 16, (2, 2), (1, 2), patch_size=4)
    outs = branch(torch.randn(1, 3, 24, 40))  # stage maps 6 x 10 and 3 x 5: smaller than the window
    assert [tuple(o.shape) for o in outs] == [(1, 16, 6, 10), (1, 32, 3, 5)]
    assert branch.stages[1].blocks[1].shift_size == [3, 3]


@pytest.mark.parametrize("spatial_dims, size", [(2, (72, 60)), (3, (24, 20, 16))])
def test_conv_patch_embedding_gives_the_linear_token_grid(spatial_dims, size):
    """Early convolutions give the linear embedding's token grid (ceil(size / patch)) at any size."""
    x = torch.randn(2, 3, *size)
    for patch in (2, 4, 8):
        embed = ConvPatchEmbed(patch, 3, 24, spatial_dims)
        linear = SwinBranch(spatial_dims, 3, 24, (2,), (1,), patch, window_size=4).patch_embed
        tokens = embed(x)
        assert tokens.shape == linear(x).shape
        tokens.square().mean().backward()
        assert embed.convs[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="power of 2.*got 6"):
        ConvPatchEmbed(6, 3, 24)
    with pytest.raises(ValueError, match="patch_embed must be 'linear' or 'conv', got patch_embed='early'"):
        SwinBranch(2, 3, 16, (2,), (1,), 4, patch_embed="early")


def test_ds_transunet_gives_its_norm_groups_to_the_early_convolutions():
    from bundle.networks import DSTransUNet

    net = DSTransUNet(preset="tiny", patch_embed="conv", norm_groups=4)
    for branch in (net.fine_branch, net.coarse_branch):
        assert [c.adn.N.num_groups for c in branch.patch_embed.convs] == [4] * len(branch.patch_embed.convs)
    assert net.stem_half[1].adn.N.num_groups == 4  # as its conv blocks
