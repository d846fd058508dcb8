"""Unit tests of common.text: preprocessing, tokens, vocabularies, sequence minibatches."""

import pytest
import torch

from common import text


def test_preprocess_keeps_letters_lowercased():
    assert text.preprocess("The Time-Machine, 1898!\n  By H.G.") == "the time machine by h g"


def test_tokenize_word_and_char():
    assert text.tokenize("a bc  d") == ["a", "bc", "d"]
    assert text.tokenize("ab c", "char") == ["a", "b", " ", "c"]


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_tokenize_rejects_empty_text(bad):
    with pytest.raises(ValueError, match="empty"):
        text.tokenize(bad)


def test_tokenize_rejects_unknown_kind_and_non_str():
    with pytest.raises(ValueError, match="token kind"):
        text.tokenize("abc", "byte")
    with pytest.raises(TypeError, match="str"):
        text.tokenize(["a", "b"])


def test_vocab_order_reserved_and_min_freq():
    tokens = ["b", "a", "b", "c", "a", "b", "d"]
    vocab = text.Vocab(tokens, min_freq=2, reserved_tokens=["<pad>", "<eos>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "<eos>", "b", "a"]
    assert vocab["b"] == 3 and vocab[["a", "zzz"]] == [4, 0]
    assert vocab.token_freqs[0] == ("b", 3)
    assert len(vocab) == 5 and "c" not in vocab


def test_vocab_ties_keep_first_appearance_and_nested_lists():
    vocab = text.Vocab([["x", "y"], ["y", "x", "z"]])
    assert vocab.idx_to_token == ["<unk>", "x", "y", "z"]


def test_vocab_round_trip():
    tokens = list("hello world")
    vocab = text.Vocab(tokens)
    assert vocab.to_tokens(vocab[tokens]) == tokens
    assert vocab.to_tokens(torch.tensor(vocab[tokens])) == tokens


def test_vocab_unknown_tokens_map_to_unk():
    vocab = text.Vocab(["a"])
    assert vocab["never seen"] == vocab.unk == 0
    assert vocab.to_tokens(vocab[["a", "b"]]) == ["a", "<unk>"]


def test_vocab_bad_input():
    with pytest.raises(ValueError, match="<unk>"):
        text.Vocab(["a"], reserved_tokens=["<unk>"])
    with pytest.raises(ValueError, match="duplicates"):
        text.Vocab(["a"], reserved_tokens=["<pad>", "<pad>"])
    with pytest.raises(ValueError, match="min_freq"):
        text.Vocab(["a"], min_freq=-1)
    vocab = text.Vocab(["a"])
    with pytest.raises(IndexError, match="not in the vocabulary"):
        vocab.to_tokens(5)
    with pytest.raises(ValueError, match="1-d"):
        vocab.to_tokens(torch.zeros(2, 2, dtype=torch.long))


def test_empty_vocab_has_only_reserved_tokens():
    vocab = text.Vocab(reserved_tokens=["<pad>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>"]


def _batches(fn, corpus, batch_size, num_steps, seed=0):
    return list(fn(corpus, batch_size, num_steps, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("seed", range(5))
def test_random_iter_targets_shifted_and_disjoint(seed):
    corpus = torch.arange(100)
    batches = _batches(text.seq_data_iter_random, corpus, 3, 5, seed)
    assert batches
    starts = []
    for X, Y in batches:
        assert X.shape == Y.shape == (3, 5)
        assert torch.equal(Y, X + 1)
        assert (X.diff(dim=1) == 1).all()
        starts += X[:, 0].tolist()
    assert len({s % 5 for s in starts}) == 1
    assert all(b - a >= 5 for a, b in zip(sorted(starts), sorted(starts)[1:]))


@pytest.mark.parametrize("seed", range(5))
def test_sequential_iter_continues_across_minibatches(seed):
    corpus = torch.arange(100)
    batches = _batches(text.seq_data_iter_sequential, corpus, 2, 6, seed)
    rows = torch.cat([X for X, _ in batches], dim=1)
    assert (rows.diff(dim=1) == 1).all()
    assert torch.equal(torch.cat([Y for _, Y in batches], dim=1), rows + 1)


def test_iterators_work_on_token_lists():
    X, Y = next(text.seq_data_iter_sequential(list(range(50)), 2, 4))
    assert X.dtype == torch.long and X.shape == (2, 4)


@pytest.mark.parametrize("fn", [text.seq_data_iter_random, text.seq_data_iter_sequential])
def test_iterators_reject_short_or_bad_corpus(fn):
    with pytest.raises(ValueError, match="needs at least"):
        next(fn(list(range(10)), 4, 5))
    with pytest.raises(ValueError, match="empty"):
        next(fn([], 1, 1))
    with pytest.raises(ValueError, match="positive"):
        next(fn(list(range(100)), 0, 5))
    with pytest.raises(ValueError, match="1-d"):
        next(fn(torch.zeros(5, 5, dtype=torch.long), 1, 2))
    with pytest.raises(ValueError, match="integer"):
        next(fn(torch.rand(100), 2, 3))


def test_seq_data_loader_len_and_reiteration():
    vocab = text.Vocab(list("ab"))
    loader = text.SeqDataLoader(torch.arange(1000) % 3, vocab, batch_size=4, num_steps=10)
    first, second = list(loader), list(loader)
    assert len(first) <= len(loader) and len(second) <= len(loader) and len(loader) == 24
    assert loader.num_tokens == 24 * 40


def test_load_time_machine(monkeypatch):
    monkeypatch.setattr(
        text, "read_time_machine", lambda: "The Time Machine, by H. G. Wells! " * 50
    )
    loader, vocab = text.load_time_machine(batch_size=2, num_steps=5, max_tokens=200)
    X, Y = next(iter(loader))
    assert X.shape == (2, 5) and len(vocab) == len(set("the time machine by h g wells")) + 1
    corpus, _ = text.load_corpus_time_machine(max_tokens=200)
    assert len(corpus) == 200
    with pytest.raises(ValueError, match="max_tokens"):
        text.load_corpus_time_machine(max_tokens=0)


def test_load_corpus_rejects_text_without_letters(monkeypatch):
    monkeypatch.setattr(text, "read_time_machine", lambda: "1234 !!! ...")
    with pytest.raises(ValueError, match="empty"):
        text.load_corpus_time_machine()


def test_vocab_refuses_a_str_where_tokens_belong():
    with pytest.raises(TypeError, match=r"got the str 'hello world'.*Vocab\(tokenize\(text\)\)"):
        text.Vocab("hello world")
    assert len(text.Vocab(list("ab"))) == 3  # characters on purpose still work


@pytest.mark.parametrize("bad, error", [("2", TypeError), (2.5, TypeError), (-1, ValueError)])
def test_vocab_min_freq_must_be_a_whole_number(bad, error):
    with pytest.raises(error, match="min_freq"):
        text.Vocab(["a"], min_freq=bad)


@pytest.mark.parametrize("batch_size, num_steps", [(2.5, 5), ("4", 5), (4, 5.0)])
def test_sequence_loaders_refuse_non_integer_sizes(batch_size, num_steps):
    with pytest.raises(TypeError, match="must be a whole number"):
        text.SeqDataLoader(list(range(100)), text.Vocab(["a"]), batch_size, num_steps)
