"""Unit tests of common.bert."""
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common import bert, data, text

SPECIAL = list(range(1, 5))  # <pad> <mask> <cls> <sep> in a vocabulary built by ptb_vocab
MASK = 2


def small_encoder(vocab_size=30, num_hiddens=16, heads=4, blks=2, max_len=12):
    return bert.BERTEncoder(vocab_size, num_hiddens, 32, heads, blks, dropout=0.0, max_len=max_len)


def copy_block_to_torch(blk: bert.EncoderBlock, layer: nn.TransformerEncoderLayer) -> None:
    """Copy the weights of our block into PyTorch's layer (the check then compares outputs)."""
    att = blk.attention
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([att.W_q.weight, att.W_k.weight, att.W_v.weight]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([att.W_q.bias, att.W_k.bias, att.W_v.bias]))
        layer.self_attn.out_proj.weight.copy_(att.W_o.weight)
        layer.self_attn.out_proj.bias.copy_(att.W_o.bias)
        for ours, theirs in ((blk.dense1, layer.linear1), (blk.dense2, layer.linear2),
                             (blk.ln1, layer.norm1), (blk.ln2, layer.norm2)):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)


def torch_layer(d=16, ffn=32, heads=4):
    return nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, activation="gelu", batch_first=True,
                                      norm_first=False)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def test_encoder_block_matches_torch_layer_with_padding_mask():
    torch.manual_seed(0)
    blk = bert.EncoderBlock(16, 32, 4).eval()
    layer = torch_layer().eval()
    copy_block_to_torch(blk, layer)
    X = torch.randn(3, 7, 16)
    valid_lens = torch.tensor([7, 4, 2])
    padding = torch.arange(7)[None, :] >= valid_lens[:, None]  # True = ignore this key
    ours = blk(X, valid_lens)
    theirs = layer(X, src_key_padding_mask=padding)
    valid = ~padding
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blk(X), layer(X), rtol=1e-5, atol=1e-5)  # no mask at all


def test_encoder_block_differs_from_torch_layer_when_a_weight_differs():
    torch.manual_seed(0)
    blk, layer = bert.EncoderBlock(16, 32, 4).eval(), torch_layer().eval()
    copy_block_to_torch(blk, layer)
    with torch.no_grad():
        layer.linear1.weight[0, 0] += 0.5  # (a bias of linear2 would be undone by the LayerNorm)
    X = torch.randn(2, 5, 16)
    assert not torch.allclose(blk(X), layer(X), atol=1e-3)  # the check above can fail


def test_bert_encoder_stack_matches_torch_transformer_encoder():
    torch.manual_seed(0)
    enc = small_encoder().eval()
    stack = nn.TransformerEncoder(torch_layer(), num_layers=2, enable_nested_tensor=False).eval()
    for blk, layer in zip(enc.blks, stack.layers):
        copy_block_to_torch(blk, layer)
    tokens = torch.randint(5, 30, (2, 9))
    segments = torch.tensor([[0] * 5 + [1] * 4, [0] * 3 + [1] * 6])
    valid_lens = torch.tensor([9, 6])
    padding = torch.arange(9)[None, :] >= valid_lens[:, None]
    ours = enc(tokens, segments, valid_lens)
    theirs = stack(enc.embed(tokens, segments), src_key_padding_mask=padding)
    torch.testing.assert_close(ours[~padding], theirs[~padding], rtol=1e-5, atol=1e-5)


def test_bert_model_shapes_and_tied_weights():
    net = bert.BERTModel(30, 16, 32, 4, 2, max_len=12)
    tokens = torch.randint(0, 30, (3, 10))
    segments = torch.zeros_like(tokens)
    encoded, mlm, nsp = net(tokens, segments, torch.tensor([10, 8, 5]), torch.tensor([[1, 2], [3, 4], [0, 9]]))
    assert encoded.shape == (3, 10, 16) and mlm.shape == (3, 2, 30) and nsp.shape == (3, 2)
    assert net(tokens, segments)[1] is None
    assert net.mlm.mlp[-1].weight is net.encoder.token_embedding.weight
    untied = bert.BERTModel(30, 16, 32, 4, 2, max_len=12, tie_weights=False)
    assert untied.mlm.mlp[-1].weight is not untied.encoder.token_embedding.weight


def test_mask_lm_gathers_the_predicted_positions():
    torch.manual_seed(0)
    head = bert.MaskLM(7, 4)
    X = torch.randn(2, 5, 4)
    positions = torch.tensor([[4, 0], [2, 2]])
    expected = torch.stack([head.mlp(X[0, [4, 0]]), head.mlp(X[1, [2, 2]])])
    torch.testing.assert_close(head(X, positions), expected)


@pytest.mark.parametrize("tokens, segments, message", [
    (torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long), "integer tensor"),
    (torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), "integer tensor"),
    (torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), "same shape"),
    (torch.zeros(2, 13, dtype=torch.long), torch.zeros(2, 13, dtype=torch.long), "max_len=12"),
    (torch.full((2, 5), 30), torch.zeros(2, 5, dtype=torch.long), "vocabulary"),
    (torch.zeros(2, 5, dtype=torch.long), torch.full((2, 5), 2), "segment ids"),
])
def test_encoder_rejects_bad_tokens_and_segments(tokens, segments, message):
    with pytest.raises(ValueError, match=message):
        small_encoder()(tokens, segments)


def test_mask_lm_rejects_bad_positions():
    head, X = bert.MaskLM(7, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="shape"):
        head(X, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        head(X, torch.tensor([[1], [5]]))


def test_bert_loss_matches_cross_entropy():
    torch.manual_seed(0)
    mlm_logits, nsp_logits = torch.randn(2, 3, 11), torch.randn(2, 2)
    labels = torch.tensor([[1, 5, 0], [7, 0, 0]])
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    is_next = torch.tensor([True, False])
    total, mlm, nsp = bert.bert_loss(mlm_logits, labels, weights, nsp_logits, is_next)
    real = weights.bool()
    torch.testing.assert_close(mlm, F.cross_entropy(mlm_logits[real], labels[real]))
    torch.testing.assert_close(nsp, F.cross_entropy(nsp_logits, torch.tensor([1, 0])))
    torch.testing.assert_close(total, mlm + nsp)
    with pytest.raises(ValueError, match="mlm_logits"):
        bert.bert_loss(mlm_logits, labels[:, :2], weights, nsp_logits, is_next)


# ---------------------------------------------------------------------------------------------
# The masking rule
# ---------------------------------------------------------------------------------------------

def random_batch(b=400, n=40, vocab_size=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, vocab_size, (b, n), generator=g)
    tokens[:, 0] = 3  # <cls>
    lens = torch.randint(8, n + 1, (b,), generator=g)
    tokens[torch.arange(n)[None, :] >= lens[:, None]] = 1  # <pad>
    tokens[torch.arange(b), lens - 1] = 4  # <sep>
    return tokens


def test_mask_tokens_invariants():
    tokens = random_batch()
    m = bert.mask_tokens(tokens, SPECIAL, MASK, 50, generator=torch.Generator().manual_seed(1))
    real = m.weights.bool()
    rows = torch.arange(len(tokens))[:, None].expand_as(m.pred_positions)
    candidates = ~torch.isin(tokens, torch.tensor(SPECIAL))
    assert candidates[rows[real], m.pred_positions[real]].all()  # never a special token
    assert (m.labels[real] == tokens[rows[real], m.pred_positions[real]]).all()
    for r in range(len(tokens)):  # distinct positions, k = 0.15 m rounded down or up
        chosen = m.pred_positions[r][real[r]].tolist()
        assert len(set(chosen)) == len(chosen) in {math.floor(0.15 * candidates[r].sum()),
                                                   math.ceil(0.15 * candidates[r].sum())}
    changed = torch.zeros_like(tokens, dtype=torch.bool)
    changed[rows[real], m.pred_positions[real]] = True
    assert (m.inputs[~changed] == tokens[~changed]).all()  # the other tokens stay
    new = m.inputs[rows[real], m.pred_positions[real]]
    kind = m.kind[real]
    assert (new[kind == 0] == MASK).all()
    assert (new[kind == 2] == m.labels[real][kind == 2]).all()
    assert not torch.isin(new[kind == 1], torch.tensor(SPECIAL)).any()
    assert (m.kind[~real] == -1).all() and (m.weights[~real] == 0).all()


def binomial_ok(count: int, n: int, p: float, z: float = 4.0) -> bool:
    """Is ``count`` of ``n`` within ``z`` standard errors of ``n p``? (fails about once in 16 000)"""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p))


def test_mask_tokens_statistics():
    tokens = random_batch(b=2000)
    m = bert.mask_tokens(tokens, SPECIAL, MASK, 50, generator=torch.Generator().manual_seed(2))
    candidates = (~torch.isin(tokens, torch.tensor(SPECIAL))).sum().item()
    chosen = int(m.weights.sum())
    assert binomial_ok(chosen, candidates, 0.15)  # looser than needed: only the rounding is random
    kind = m.kind[m.weights.bool()]
    for k, p in ((0, 0.8), (1, 0.1), (2, 0.1)):
        assert binomial_ok(int((kind == k).sum()), chosen, p), (k, int((kind == k).sum()), chosen)
    # the random replacements are uniform over the 45 ordinary ids
    rows = torch.arange(len(tokens))[:, None].expand_as(m.pred_positions)
    new = m.inputs[rows, m.pred_positions][m.kind == 1]
    counts = torch.bincount(new, minlength=50)[5:].double()
    expected = len(new) / 45
    assert ((counts - expected) ** 2 / expected).sum() < 45 + 6 * math.sqrt(2 * 45)  # chi-square, 44 dof


def test_mask_tokens_statistics_can_fail():
    """The same test on a rule with 70 % <mask> instead of 80 % fails it."""
    kind = torch.where(torch.rand(20000, generator=torch.Generator().manual_seed(0)) < 0.7, 0, 1)
    assert not binomial_ok(int((kind == 0).sum()), len(kind), 0.8)


def test_mask_tokens_is_repeatable_and_pads_to_num_preds():
    tokens = random_batch(b=5)
    a = bert.mask_tokens(tokens, SPECIAL, MASK, 50, num_preds=20, generator=torch.Generator().manual_seed(3))
    b = bert.mask_tokens(tokens, SPECIAL, MASK, 50, num_preds=20, generator=torch.Generator().manual_seed(3))
    assert a.pred_positions.shape == (5, 20)
    for x, y in zip((a.inputs, a.pred_positions, a.labels, a.weights, a.kind),
                    (b.inputs, b.pred_positions, b.labels, b.weights, b.kind)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": torch.zeros(2, 5)}, "integer tensor"),
    ({"mask_id": 7}, "must be one of special_ids"),
    ({"mask_prob": 0.0}, "mask_prob"),
    ({"mask_prob": 1.5}, "mask_prob"),
    ({"num_preds": 2}, "num_preds=2 is too small"),
    ({"special_ids": list(range(50)), "mask_id": 2}, "Every id"),
])
def test_mask_tokens_rejects_bad_input(kwargs, message):
    args = {"tokens": random_batch(b=4), "special_ids": SPECIAL, "mask_id": MASK, "vocab_size": 50, **kwargs}
    with pytest.raises(ValueError, match=message):
        bert.mask_tokens(**args)


# ---------------------------------------------------------------------------------------------
# Sentence pairs
# ---------------------------------------------------------------------------------------------

def test_tokens_and_segments():
    assert bert.tokens_and_segments(["a", "b"], ["c"]) == (
        ["<cls>", "a", "b", "<sep>", "c", "<sep>"], [0, 0, 0, 0, 1, 1])
    assert bert.tokens_and_segments(["a"]) == (["<cls>", "a", "<sep>"], [0, 0, 0])


@pytest.mark.parametrize("a, b, max_tokens, expected", [
    ("abc", "de", 5, ("abc", "de")),               # fits
    ("abcdef", "gh", 5, ("def", "gh")),            # the longer one loses tokens at its start
    ("ab", "cdefgh", 5, ("ab", "cde")),            # b loses tokens at its end
    ("abcd", "efgh", 5, ("cd", "efg")),            # equally long: they alternate, a first
    ("a", "bcdefg", 2, ("a", "b")),                # each keeps one token
])
def test_truncate_pair(a, b, max_tokens, expected):
    got = bert.truncate_pair(list(a), list(b), max_tokens)
    assert ("".join(got[0]), "".join(got[1])) == expected
    assert len(got[0]) + len(got[1]) <= max_tokens


def test_truncate_pair_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one token"):
        bert.truncate_pair([], ["a"], 4)
    with pytest.raises(ValueError, match="max_tokens"):
        bert.truncate_pair(["a"], ["b"], 1)


def tiny_vocab():
    return bert.ptb_vocab([["the", "cat", "sat"], ["on", "the", "mat"]], min_freq=1)


def test_encode_pairs_layout():
    vocab = tiny_vocab()
    the, cat, sat, on, mat = vocab[["the", "cat", "sat", "on", "mat"]]
    cls, sep, pad = vocab[["<cls>", "<sep>", "<pad>"]]
    batch = bert.encode_pairs([([the, cat], [sat], True), ([the, cat, sat, on, mat], [on, the, mat], False)],
                              vocab, max_len=8)
    assert batch.tokens.tolist() == [[cls, the, cat, sep, sat, sep, pad, pad],
                                     [cls, on, mat, sep, on, the, mat, sep]]  # 5 + 3 words cut to 2 + 3
    assert batch.segments.tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
    assert batch.valid_lens.tolist() == [6, 8] and batch.is_next.tolist() == [True, False]


def test_encode_pairs_and_special_ids_reject_bad_input():
    vocab = tiny_vocab()
    with pytest.raises(ValueError, match="no pairs"):
        bert.encode_pairs([], vocab, 8)
    with pytest.raises(ValueError, match="max_len"):
        bert.encode_pairs([([5], [6], True)], vocab, 4)
    plain = text.Vocab([["a", "b"]])
    with pytest.raises(ValueError, match="reserved_tokens"):
        bert.special_ids(plain)
    assert bert.special_ids(vocab) == SPECIAL


def test_nsp_pairs_half_are_next():
    sentences = [[i] for i in range(1000)]
    pairs = bert.nsp_pairs(sentences, generator=torch.Generator().manual_seed(0))
    assert len(pairs) == 999
    assert all((b[0] == a[0] + 1) == is_next for a, b, is_next in pairs)
    assert binomial_ok(sum(t for _, _, t in pairs), 999, 0.5)
    some = bert.nsp_pairs(sentences, firsts=[5, 998])
    assert [a for a, _, _ in some] == [[5], [998]]


def test_nsp_pairs_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        bert.nsp_pairs([[1], [2]])
    with pytest.raises(ValueError, match="firsts"):
        bert.nsp_pairs([[1], [2], [3]], firsts=[2])


# ---------------------------------------------------------------------------------------------
# PTB and the cached pretraining
# ---------------------------------------------------------------------------------------------

REAL_MIRROR = os.environ.get("COURSE_DATA_MIRROR")


def ptb_available():
    res = data.resource("ptb")
    in_mirror = bool(REAL_MIRROR) and (Path(REAL_MIRROR) / res.path).exists()
    return (data.data_dir() / res.path).exists() or in_mirror


needs_ptb = pytest.mark.skipif(not ptb_available(), reason="needs PTB: set COURSE_DATA_MIRROR")


@needs_ptb
def test_mask_rule_statistics_on_real_ptb_batches():
    sentences = bert.read_ptb("valid")
    vocab = bert.ptb_vocab(sentences)
    corpus = [vocab[s] for s in sentences]
    g = torch.Generator().manual_seed(0)
    pairs, m = bert.pretraining_batch(corpus, vocab, 2000, 32, generator=g)
    assert pairs.tokens.shape == (2000, 32) and m.pred_positions.shape[0] == 2000
    candidates = (~torch.isin(pairs.tokens, torch.tensor(bert.special_ids(vocab)))).sum().item()
    assert binomial_ok(int(m.weights.sum()), candidates, 0.15)
    kind = m.kind[m.weights.bool()]
    for k, p in ((0, 0.8), (1, 0.1), (2, 0.1)):
        assert binomial_ok(int((kind == k).sum()), len(kind), p)
    assert binomial_ok(int(pairs.is_next.sum()), 2000, 0.5)


def tiny_recipe():
    return {**bert.bert_recipe(), "num_hiddens": 8, "ffn_num_hiddens": 16, "num_heads": 2, "num_blks": 1,
            "max_len": 12, "batch_size": 4, "num_steps": 3, "min_freq": 1}


def test_pretrained_bert_is_trained_once_and_cached(isolated_data, monkeypatch):
    words = "the cat sat on the mat while a dog ate the food".split()
    fake = [words[i:i + 4] for i in range(9)]
    monkeypatch.setattr(bert, "read_ptb", lambda split="train": fake)
    first = bert.pretrained_bert(tiny_recipe())
    assert len(first.history["mlm"]) == 3 == len(first.history["nsp"])
    assert len(list((isolated_data / "derived").glob("bert-ptb-*.pt"))) == 1
    assert not first.net.training

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been read, not trained")
    monkeypatch.setattr(bert, "train_bert", no_training)
    again = bert.pretrained_bert(tiny_recipe())
    for (name, x), y in zip(first.net.state_dict().items(), again.net.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)
    assert again.vocab.idx_to_token == first.vocab.idx_to_token
    vocab = again.vocab
    corpus = [vocab[s] for s in fake]
    result = bert.evaluate_pretraining(again.net, corpus, vocab, 12, bert.count_tokens(corpus, len(vocab)))
    assert result["num_pairs"] == 8 and 0 <= result["mlm_accuracy"] <= 1 and 0 <= result["nsp_accuracy"] <= 1
    assert 0 <= result["most_frequent"] <= 1 and result["num_masked"] > 0


def test_train_bert_rejects_an_incomplete_recipe():
    with pytest.raises(ValueError, match="recipe lacks"):
        bert.train_bert({"num_hiddens": 8})


def test_nsp_preference_on_a_tiny_model():
    vocab = tiny_vocab()
    corpus = [vocab[s] for s in (["the", "cat"], ["sat", "on"], ["the", "mat"], ["cat", "sat"])]
    net = bert.BERTModel(len(vocab), 8, 16, 2, 1, max_len=10, tie_weights=False)
    result = bert.nsp_preference(net, corpus, vocab, max_len=10)
    assert result["num_sentences"] == 3 and 0 <= result["preferred"] <= 1
    with torch.no_grad():  # a model whose "is next" score is the same for every pair prefers none
        net.nsp.output.weight.zero_()
    assert bert.nsp_preference(net, corpus, vocab, max_len=10)["preferred"] == 0
    with pytest.raises(ValueError, match="at least 3"):
        bert.nsp_preference(net, corpus[:2], vocab, 10)


def test_warmup_then_linear_decay_rises_then_falls_to_zero():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = bert.warmup_then_linear_decay(optimizer, num_steps=10, warmup=0.2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # 2 warm-up steps (0.2 x 10) up to the full rate, then down by 1/8 per step, 0 after the last
    assert rates == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert optimizer.param_groups[0]["lr"] == 0.0
