"""Unit tests of common.seq2seq: data preparation, masking, the loss, models, training, BLEU."""

import math

import pytest
import torch
from torch.nn import functional as F

from common import seq2seq, text

TOY = "Go.\tVa !\nHi.\tSalut\u202f!\nI won!\tJ'ai gagné !\nGo.\tBouge !\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_preprocess_nmt_spaces_punctuation_and_nbsp():
    assert seq2seq.preprocess_nmt("Go.\tVa !") == "go .\tva !"
    assert seq2seq.preprocess_nmt("Salut\u202f!,Oui?") == "salut ! ,oui ?"
    assert seq2seq.preprocess_nmt("a\xa0b") == "a b"
    assert seq2seq.preprocess_nmt(".!") == ". !"  # no space added at the very start
    with pytest.raises(TypeError):
        seq2seq.preprocess_nmt(None)


def test_tokenize_nmt_pairs_and_num_examples():
    source, target = seq2seq.tokenize_nmt(seq2seq.preprocess_nmt(TOY))
    assert source[0] == ["go", "."] and target[2] == ["j'ai", "gagné", "!"]
    assert len(source) == len(target) == 4
    source, target = seq2seq.tokenize_nmt(seq2seq.preprocess_nmt(TOY), num_examples=2)
    assert len(source) == 2


def test_tokenize_nmt_ignores_extra_fields_and_blank_lines():
    source, target = seq2seq.tokenize_nmt("a b\tc d\tCC-BY attribution\n\n")
    assert source == [["a", "b"]] and target == [["c", "d"]]


@pytest.mark.parametrize(
    "bad,match", [("", "empty"), ("\n\n", "empty"), ("no tab here", "TAB"), ("a\t\n", "TAB")]
)
def test_tokenize_nmt_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        seq2seq.tokenize_nmt(bad)


def test_tokenize_nmt_bad_num_examples():
    with pytest.raises(ValueError, match="num_examples"):
        seq2seq.tokenize_nmt(TOY, num_examples=0)


def test_truncate_pad():
    assert seq2seq.truncate_pad([1, 2], 4, 0) == [1, 2, 0, 0]
    assert seq2seq.truncate_pad([1, 2, 3, 4, 5], 3, 0) == [1, 2, 3]  # longer than the padded size
    assert seq2seq.truncate_pad([], 2, 9) == [9, 9]
    with pytest.raises(ValueError, match="num_steps"):
        seq2seq.truncate_pad([1], 0, 0)


def test_build_array_nmt_valid_lengths_and_eos():
    lines = [["a"], ["a", "b", "c", "d"]]
    vocab = text.Vocab(lines, reserved_tokens=seq2seq.RESERVED_TOKENS)
    array, valid_len = seq2seq.build_array_nmt(lines, vocab, 3)
    assert array.shape == (2, 3) and valid_len.tolist() == [2, 3]
    assert array[0].tolist() == [vocab["a"], vocab["<eos>"], vocab["<pad>"]]
    assert array[1].tolist() == vocab[["a", "b", "c"]]  # truncated: no room for <eos>
    with pytest.raises(ValueError, match="reserved token"):
        seq2seq.build_array_nmt(lines, text.Vocab(lines), 3)
    with pytest.raises(ValueError, match="no lines"):
        seq2seq.build_array_nmt([], vocab, 3)


def test_load_data_nmt(monkeypatch):
    monkeypatch.setattr(seq2seq, "read_data_nmt", lambda: TOY * 3)
    data_iter, src_vocab, tgt_vocab = seq2seq.load_data_nmt(
        batch_size=4, num_steps=5, num_examples=8
    )
    assert "go" in src_vocab and "!" in tgt_vocab and "gagné" in tgt_vocab
    batches = list(data_iter)
    assert sum(len(b[0]) for b in batches) == 8
    X, X_valid_len, Y, Y_valid_len = batches[0]
    assert X.shape == Y.shape == (4, 5) and X_valid_len.shape == (4,)
    assert ((X != src_vocab["<pad>"]).sum(dim=1) == X_valid_len).all()


def test_sequence_mask():
    X = torch.ones(2, 3, 4)
    out = seq2seq.sequence_mask(X, torch.tensor([1, 3]), value=-1)
    assert (out[0, 1:] == -1).all() and (out[0, 0] == 1).all() and (out[1] == 1).all()
    assert (X == 1).all()  # the input is not modified


@pytest.mark.parametrize(
    "valid_len,match",
    [
        (torch.tensor([1, 4]), r"\[0, 3\]"),
        (torch.tensor([-1, 1]), r"\[0, 3\]"),
        (torch.tensor([1, 2, 3]), "shape"),
    ],
)
def test_sequence_mask_bad_lengths(valid_len, match):
    with pytest.raises(ValueError, match=match):
        seq2seq.sequence_mask(torch.ones(2, 3), valid_len)


def test_sequence_mask_bad_shape():
    with pytest.raises(ValueError, match="at least"):
        seq2seq.sequence_mask(torch.ones(3), torch.tensor([1, 1, 1]))


def test_masked_loss_ignores_padding_and_matches_ignore_index():
    torch.manual_seed(0)
    pred, label = torch.randn(3, 4, 5), torch.randint(2, 5, (3, 4))
    valid_len = torch.tensor([4, 2, 1])
    label[torch.arange(4)[None] >= valid_len[:, None]] = 1  # pad = 1
    loss = seq2seq.MaskedSoftmaxCELoss()
    l = loss(pred, label, valid_len)
    assert l.shape == (3,)
    changed = pred.clone()
    changed[1, 2:] += 50
    torch.testing.assert_close(loss(changed, label, valid_len), l)
    torch.testing.assert_close(
        (l * 4).sum() / valid_len.sum(),
        F.cross_entropy(pred.transpose(1, 2), label, ignore_index=1),
    )


def test_masked_loss_bad_shapes():
    loss = seq2seq.MaskedSoftmaxCELoss()
    with pytest.raises(ValueError, match="logits"):
        loss(torch.randn(3, 5), torch.zeros(3, dtype=torch.long), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="label"):
        loss(torch.randn(3, 4, 5), torch.zeros(3, 5, dtype=torch.long), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="valid"):
        loss(torch.randn(3, 4, 5), torch.zeros(3, 4, dtype=torch.long), torch.tensor([1, 9, 1]))


def test_base_classes_raise():
    with pytest.raises(NotImplementedError):
        seq2seq.Encoder()(torch.zeros(1, 1))
    with pytest.raises(NotImplementedError):
        seq2seq.Decoder().init_state(None)
    with pytest.raises(NotImplementedError):
        seq2seq.Decoder()(torch.zeros(1, 1), None)


def _net(src=7, tgt=9, dropout=0.0):
    net = seq2seq.EncoderDecoder(
        seq2seq.Seq2SeqEncoder(src, 4, 6, 2, dropout), seq2seq.Seq2SeqDecoder(tgt, 4, 6, 2, dropout)
    )
    net.apply(seq2seq.init_seq2seq)
    return net


def test_seq2seq_shapes_and_stepwise_decoding():
    torch.manual_seed(0)
    net = _net()
    X, Y = torch.randint(7, (3, 5)), torch.randint(9, (3, 4))
    out, (enc_outputs, hidden) = net(X, Y)
    assert out.shape == (3, 4, 9) and enc_outputs.shape == (5, 3, 6) and hidden.shape == (2, 3, 6)
    state = net.decoder.init_state(net.encoder(X))
    steps = []
    for t in range(4):
        y, state = net.decoder(Y[:, t : t + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, dim=1), out)


def test_seq2seq_rejects_bad_inputs():
    net = _net()
    with pytest.raises(ValueError, match="encoder input"):
        net.encoder(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="decoder input"):
        net(torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3))


def test_teacher_forcing_inputs():
    Y = torch.tensor([[5, 6, 3], [7, 3, 1]])
    assert seq2seq.teacher_forcing_inputs(Y, 2).tolist() == [[2, 5, 6], [2, 7, 3]]


def test_train_seq2seq_learns_to_copy_and_predicts():
    torch.manual_seed(0)
    words = ["a", "b", "c", "d"]
    lines = [[words[(i + j) % 4] for j in range(1 + i % 3)] for i in range(64)]
    vocab = text.Vocab(lines, reserved_tokens=seq2seq.RESERVED_TOKENS)
    X, X_len = seq2seq.build_array_nmt(lines, vocab, 5)
    from common.data import TensorLoader

    data_iter = TensorLoader(X, X_len, X, X_len, batch_size=16, shuffle=True)
    net = _net(len(vocab), len(vocab))
    history = seq2seq.train_seq2seq(
        net, data_iter, 40, vocab, lr=0.02, device=torch.device("cpu"), plot=False, progress=False
    )
    assert len(history.loss) == 40 and history.loss[-1] < 0.3 * history.loss[0]
    translation, attention = seq2seq.predict_seq2seq(net, "b c", vocab, vocab, 5)
    assert translation == "b c" and attention == []
    with pytest.raises(ValueError, match="num_epochs"):
        seq2seq.train_seq2seq(net, data_iter, 0, vocab)


def test_bleu_hand_computed():
    assert seq2seq.bleu("a b c d", "a b c d", 4) == 1.0
    expected = math.exp(-0.5) * (2 / 3) ** 0.25
    assert math.isclose(seq2seq.bleu("the cat the mat", "the cat sat on the mat", 2), expected)
    assert math.isclose(seq2seq.bleu("the the the the", "the cat", 1), 0.5)  # clipped counts
    assert math.isclose(seq2seq.bleu(["x", "y"], ["x", "y"], 2), 1.0)  # token lists work too
    assert seq2seq.bleu("va", "va !", 2) == 0.0  # too short for bigrams
    assert seq2seq.bleu("", "va !", 1) == 0.0
    assert seq2seq.bleu("x y z", "va !", 1) == 0.0  # no match


def test_bleu_bad_input():
    with pytest.raises(ValueError, match="k"):
        seq2seq.bleu("a", "a", 0)
    with pytest.raises(ValueError, match="empty"):
        seq2seq.bleu("a", "", 1)


@pytest.mark.parametrize("k, error", [(2.5, TypeError), ("2", TypeError), (0, ValueError)])
def test_bleu_k_must_be_a_positive_whole_number(k, error):
    with pytest.raises(error, match=r"k \(the largest n-gram order\)"):
        seq2seq.bleu("a b c", "a b c", k)
