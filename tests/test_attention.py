"""Unit tests of common.attention."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common import attention


def test_masked_softmax_zero_beyond_valid_len_1d():
    X = torch.randn(2, 3, 5)
    W = attention.masked_softmax(X, torch.tensor([2, 4]))
    assert torch.all(W[0, :, 2:] == 0) and torch.all(W[1, :, 4:] == 0)
    torch.testing.assert_close(W.sum(-1), torch.ones(2, 3))


def test_masked_softmax_2d_valid_lens():
    X = torch.randn(2, 2, 4)
    lens = torch.tensor([[1, 3], [2, 4]])
    W = attention.masked_softmax(X, lens)
    for b in range(2):
        for q in range(2):
            assert torch.all(W[b, q, lens[b, q]:] == 0)
            torch.testing.assert_close(W[b, q, :lens[b, q]], F.softmax(X[b, q, :lens[b, q]], dim=0))


def test_masked_softmax_none_is_softmax():
    X = torch.randn(2, 3, 4)
    torch.testing.assert_close(attention.masked_softmax(X, None), F.softmax(X, dim=-1))


@pytest.mark.parametrize("lens, match", [
    (torch.tensor([1, 6]), r"\[0, 5\]"),
    (torch.tensor([-1, 2]), r"\[0, 5\]"),
    (torch.tensor([1, 2, 3]), "shape"),
    (torch.tensor([[1, 2]]), "shape"),
    (torch.tensor([1.0, 2.0]), "integers"),
])
def test_masked_softmax_bad_valid_lens(lens, match):
    with pytest.raises(ValueError, match=match):
        attention.masked_softmax(torch.randn(2, 3, 5), lens)


def test_masked_softmax_bad_scores_shape():
    with pytest.raises(ValueError, match="batch, num_queries, num_keys"):
        attention.masked_softmax(torch.randn(3, 5), None)


def test_dot_product_attention_matches_sdpa_with_mask():
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    lens = torch.tensor([2, 5])
    ours = attention.DotProductAttention(0.0).eval()(q, k, v, lens)
    mask = attention.valid_lens_to_mask(lens, 3, 5)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_dot_product_attention_rejects_mismatched_sizes():
    att = attention.DotProductAttention()
    with pytest.raises(ValueError, match="same size"):
        att(torch.randn(2, 3, 4), torch.randn(2, 5, 3), torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="pairs"):
        att(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="batch size"):
        att(torch.randn(1, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="batch, n, features"):
        att(torch.randn(3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6))


def test_additive_attention_shapes_and_mask():
    att = attention.AdditiveAttention(query_size=3, key_size=4, num_hiddens=8).eval()
    out = att(torch.randn(2, 1, 3), torch.randn(2, 6, 4), torch.randn(2, 6, 5), torch.tensor([2, 6]))
    assert out.shape == (2, 1, 5)
    assert torch.all(att.attention_weights[0, :, 2:] == 0)


def test_multihead_matches_torch():
    torch.manual_seed(0)
    E, H = 8, 2
    ours = attention.MultiHeadAttention(E, H, bias=True).eval()
    ref = nn.MultiheadAttention(E, H, batch_first=True).eval()
    Wq, Wk, Wv = ref.in_proj_weight.chunk(3)
    bq, bk, bv = ref.in_proj_bias.chunk(3)
    with torch.no_grad():
        for lin, W, b in ((ours.W_q, Wq, bq), (ours.W_k, Wk, bk), (ours.W_v, Wv, bv),
                          (ours.W_o, ref.out_proj.weight, ref.out_proj.bias)):
            lin.weight.copy_(W), lin.bias.copy_(b)
    X, Y = torch.randn(3, 4, E), torch.randn(3, 6, E)
    lens = torch.tensor([6, 3, 1])
    expected, _ = ref(X, Y, Y, key_padding_mask=~attention.valid_lens_to_mask(lens, 1, 6)[:, 0])
    torch.testing.assert_close(ours(X, Y, Y, lens), expected)


def test_multihead_rejects_bad_heads_and_lens():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        attention.MultiHeadAttention(10, 3)
    mha = attention.MultiHeadAttention(8, 2)
    X = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        mha(X, X, X, torch.tensor([1, 4]))


def test_positional_encoding_values_and_errors():
    pe = attention.PositionalEncoding(4, 0.0, max_len=10)
    out = pe(torch.zeros(1, 3, 4))
    torch.testing.assert_close(out[0, 2], torch.tensor([torch.sin(torch.tensor(2.0)), torch.cos(torch.tensor(2.0)),
                                                        torch.sin(torch.tensor(0.02)), torch.cos(torch.tensor(0.02))]))
    with pytest.raises(ValueError, match="even"):
        attention.PositionalEncoding(5)
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 11, 4))
    with pytest.raises(ValueError, match="shape"):
        pe(torch.zeros(1, 3, 6))


def test_show_heatmaps():
    axes = attention.show_heatmaps(torch.rand(2, 3, 4, 5), "keys", "queries", titles=["a", "b", "c"])
    assert axes.shape == (2, 3)
    with pytest.raises(ValueError, match="num_rows, num_cols"):
        attention.show_heatmaps(torch.rand(4, 5), "keys", "queries")
    with pytest.raises(ValueError, match="titles"):
        attention.show_heatmaps(torch.rand(1, 2, 4, 5), "keys", "queries", titles=["a"])


def test_masked_softmax_refuses_integer_scores():
    with pytest.raises(TypeError, match=r"X must hold floating-point scores.*got dtype torch.int64.*X.float\(\)"):
        attention.masked_softmax(torch.ones(2, 3, 4, dtype=torch.long), torch.tensor([1, 2]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_masked_softmax_is_finite_in_half_precision(dtype):
    # -1e6 overflows to -inf in float16: a row with no valid key became NaN instead of uniform.
    assert torch.tensor(-1e6, dtype=torch.float16).isinf()
    X = torch.randn(2, 3, 5) * 4
    W = attention.masked_softmax(X.to(dtype), torch.tensor([0, 3]))
    assert W.dtype == dtype and torch.isfinite(W).all()
    torch.testing.assert_close(W[0], torch.full((3, 5), 0.2, dtype=dtype))  # no key to attend to: uniform
    assert (W[1, :, 3:] == 0).all()
    reference = F.softmax(X[1, :, :3].to(dtype).float(), dim=-1)  # softmax over the valid keys only
    torch.testing.assert_close(W[1, :, :3].float(), reference, atol=2e-2 if dtype != torch.float32 else 1e-6, rtol=0)
