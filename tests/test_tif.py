import pytest
import torch
import torch.nn.functional as F

from bundle.networks import TIF
from bundle.networks.blocks.tif import convert_seed_tif_key


def _naive(benchmark_module, dim_s, dim_l, pair=False):
    return benchmark_module.NaiveTIF(dim_s, dim_l, pair=pair)


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_default_tif_equals_seed_and_loads_its_state_dict(benchmark_module):
    naive = _naive(benchmark_module, 96, 96)
    _randomise(naive)
    tif = TIF(96, 96)
    tif.load_state_dict(naive.state_dict(), strict=True)  # seed keys, loaded as they are
    e = torch.randn(2, 96, 12, 10, requires_grad=True)
    r = torch.randn(2, 96, 12, 10, requires_grad=True)
    e2, r2 = (t.detach().clone().requires_grad_(True) for t in (e, r))
    expected, out = naive(e, r), tif(e2, r2)
    assert out.shape == e.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    expected.square().sum().backward()
    out.square().sum().backward()
    torch.testing.assert_close(e2.grad, e.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r2.grad, r.grad, atol=1e-4, rtol=1e-4)
    # parameter gradients too (the pre-norm MLP recomputes its activations in backward)
    named = dict(naive.named_parameters())
    for name, p in tif.named_parameters():
        seed_name = next(k for k in named if convert_seed_tif_key(k) == name)
        # float32 sums over all tokens in another order (SDPA vs the materialised matrix): 1e-3 relative
        torch.testing.assert_close(p.grad, named[seed_name].grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("spatial", [2, 3])
def test_pair_output_on_different_widths_and_sizes(benchmark_module, spatial):
    naive = _naive(benchmark_module, 32, 48, pair=True)
    _randomise(naive)
    tif = TIF(32, 48, output="pair")
    tif.load_state_dict(naive.state_dict())
    e = torch.randn((2, 48) + (6,) * spatial)
    r = torch.randn((2, 32) + (3,) * spatial)
    (e_exp, r_exp), (e_out, r_out) = naive(e, r), tif(e, r)
    assert e_out.shape == e.shape and r_out.shape == r.shape
    torch.testing.assert_close(e_out, e_exp, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_out, r_exp, atol=1e-5, rtol=0)


def test_sum_output_resamples_and_projects_r_onto_e():
    tif = TIF(32, 48)  # widths differ: r is projected to 48 channels and resampled onto e's grid
    assert isinstance(tif.r_to_e, torch.nn.Linear)
    e, r = torch.randn(1, 48, 8, 8), torch.randn(1, 32, 4, 4)
    out = tif(e, r)
    assert out.shape == e.shape
    e_tok, r_tok = tif.fuse_tokens(e.flatten(2).transpose(1, 2), r.flatten(2).transpose(1, 2))
    r_map = tif.r_to_e(r_tok).transpose(1, 2).reshape(1, 48, 4, 4)
    expected = e_tok.transpose(1, 2).reshape(e.shape) + F.interpolate(r_map, size=(8, 8), mode="nearest")
    torch.testing.assert_close(out, expected)


def test_authors_cross_att_weights_load(authors_key_shapes):
    prefix = "cross_att_2."
    state = {k[len(prefix) :]: torch.randn(s) for k, s in authors_key_shapes if k.startswith(prefix)}
    tif = TIF(192, 256, output="pair")
    tif.load_state_dict(state, strict=True)
    torch.testing.assert_close(
        tif.e_transformer.layers[0].attn.qkv.weight, state["transformer_l.layers.0.0.fn.to_qkv.weight"]
    )


def test_single_square_head_has_no_output_projection(benchmark_module):
    # the seed drops to_out when heads == 1 and head_dim == dim (here the e branch: 1 head of 64 on 64 channels)
    naive = _naive(benchmark_module, 96, 64)
    assert isinstance(TIF(96, 64, output="pair").e_transformer.layers[0].attn.out_proj, torch.nn.Identity)
    TIF(96, 64, output="pair").load_state_dict(naive.state_dict(), strict=True)


def test_arguments_are_honoured():
    tif = TIF(
        64,
        64,
        coarse_heads=4,
        coarse_head_dim=16,
        coarse_mlp_dim=32,
        fine_heads=2,
        fine_head_dim=8,
        fine_mlp_dim=40,
        depth=2,
        dropout=0.1,
    )
    assert len(tif.r_transformer.layers) == 2
    assert tif.r_transformer.layers[0].attn.qkv.out_features == 3 * 4 * 16
    assert tif.e_transformer.layers[1].mlp.linear1.out_features == 40
    tif.train()
    assert tif(torch.randn(1, 64, 5, 5), torch.randn(1, 64, 5, 5)).shape == (1, 64, 5, 5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="fine_channels=48"):
        TIF(32, 48)(torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4))
    with pytest.raises(ValueError, match="output"):
        TIF(32, 48, output="concat")


def test_the_seeds_keyword_names_still_work_with_a_warning():
    """The seed's dim_s/dim_l/heads_s ... names build the same TIF for a deprecation period (state dicts unchanged)."""
    torch.manual_seed(0)
    new = TIF(coarse_channels=32, fine_channels=48, coarse_heads=2, fine_mlp_dim=64, output="pair")
    with pytest.warns(FutureWarning, match=r"TIF\(dim_s=\.\.\.\) is deprecated.*use coarse_channels"):
        old = TIF(dim_s=32, dim_l=48, heads_s=2, mlp_dim_l=64, output="pair")
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}
    with pytest.raises(TypeError, match="unexpected keyword argument 'dim_x'"):
        TIF(32, 48, dim_x=3)


def test_benchmark_counts_the_cpu_attention_flops(benchmark_module):
    """FlopCounterMode counts nothing for the CPU flash-attention kernel; benchmark.py registers its formulas."""
    from torch.utils.flop_counter import FlopCounterMode

    benchmark_module._count_cpu_attention_flops()
    q = torch.rand(2, 3, 64, 32, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        out = F.scaled_dot_product_attention(q, q, q)
    assert forward.get_total_flops() == 2 * 2 * (2 * 3 * 64 * 64 * 32)  # q @ k^T and attn @ v
    with FlopCounterMode(display=False) as backward:
        out.sum().backward()
    assert backward.get_total_flops() == 2.5 * forward.get_total_flops()
