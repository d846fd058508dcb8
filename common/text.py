"""Text for sequence models: preprocessing, tokens, vocabularies and minibatches of sequences.

The chapter on recurrent networks introduces each piece in a notebook (``text-preprocessing``,
``language-models``); later notebooks import them from here.

* :func:`preprocess` and :func:`tokenize` turn raw text into a list of tokens;
* :class:`Vocab` maps tokens to indices (reserved tokens first, rare tokens to ``<unk>``);
* :func:`load_corpus_time_machine` gives The Time Machine as a list of indices plus its vocabulary;
* :func:`seq_data_iter_random` and :func:`seq_data_iter_sequential` cut a corpus into minibatches
  of (input, target) pairs where the target is the input shifted by one token;
* :func:`load_time_machine` wraps all of it into a re-iterable :class:`SeqDataLoader`.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Iterator, Sequence

import torch

from .checks import check_int

TOKEN_KINDS = ("word", "char")


def preprocess(text: str) -> str:
    """Keep letters only: every run of other characters becomes one space; lowercase; strip."""
    if not isinstance(text, str):
        raise TypeError(f"preprocess expects a str, got {type(text).__name__}.")
    return re.sub(r"[^A-Za-z]+", " ", text).lower().strip()


def tokenize(text: str, token: str = "word") -> list[str]:
    """Split ``text`` into word tokens (on whitespace) or character tokens (every character).

    Raises ``ValueError`` for an unknown ``token`` kind or a text without any token.
    """
    if token not in TOKEN_KINDS:
        raise ValueError(f"Unknown token kind {token!r}: use one of {TOKEN_KINDS}.")
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}.")
    tokens = text.split() if token == "word" else list(text)
    if not tokens:
        raise ValueError("The text is empty (or only whitespace): there is nothing to tokenize.")
    return tokens


def _flatten(tokens: Iterable) -> list[str]:
    """A flat list of tokens from a list of tokens or a list of token lists."""
    tokens = list(tokens)
    if tokens and isinstance(tokens[0], (list, tuple)):
        return [tok for line in tokens for tok in line]
    return tokens


def count_corpus(tokens: Iterable) -> collections.Counter:
    """Frequency of every token in a list of tokens (or a list of token lists)."""
    return collections.Counter(_flatten(tokens))


class Vocab:
    """A vocabulary: tokens <-> indices.

    Index 0 is ``<unk>``, then the ``reserved_tokens`` in their order (e.g. ``<pad>``, ``<bos>``,
    ``<eos>``), then every token seen at least ``min_freq`` times, most frequent first (ties in
    order of first appearance). Looking up a token that is not in the vocabulary gives the
    index of ``<unk>``; looking up an index that does not exist raises ``IndexError``.
    """

    def __init__(
        self, tokens: Iterable = (), min_freq: int = 0, reserved_tokens: Sequence[str] | None = None
    ):
        if isinstance(tokens, str):
            raise TypeError(f"Vocab takes a list of tokens (or a list of token lists), got the str {tokens[:40]!r}: "
                            "a str would make a vocabulary of its characters. Tokenize it first, e.g. "
                            "Vocab(tokenize(text)), or Vocab(list(text)) for characters on purpose.")
        reserved = list(reserved_tokens or [])
        if "<unk>" in reserved:
            raise ValueError("'<unk>' is always index 0: do not list it in reserved_tokens.")
        if len(set(reserved)) != len(reserved):
            raise ValueError(f"reserved_tokens has duplicates: {reserved}.")
        min_freq = check_int("min_freq", min_freq, minimum=0)
        counter = count_corpus(tokens)
        # sorted() is stable: equally frequent tokens keep the order of their first appearance.
        self.token_freqs: list[tuple[str, int]] = sorted(
            counter.items(), key=lambda kv: kv[1], reverse=True
        )
        self.idx_to_token: list[str] = ["<unk>"] + reserved
        self.token_to_idx: dict[str, int] = {tok: i for i, tok in enumerate(self.idx_to_token)}
        for tok, freq in self.token_freqs:
            if freq < min_freq:
                break
            if tok not in self.token_to_idx:
                self.token_to_idx[tok] = len(self.idx_to_token)
                self.idx_to_token.append(tok)

    @property
    def unk(self) -> int:
        """Index of the unknown token."""
        return 0

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    def __getitem__(self, tokens):
        """Index of a token, or indices of a list/tuple of tokens (unknown -> ``unk``)."""
        if isinstance(tokens, (list, tuple)):
            return [self.__getitem__(tok) for tok in tokens]
        return self.token_to_idx.get(tokens, self.unk)

    def to_tokens(self, indices):
        """Token of an index, or a list of tokens for a list/tuple/1-d tensor of indices."""
        if isinstance(indices, torch.Tensor):
            if indices.ndim > 1:
                raise ValueError(
                    f"to_tokens takes an index or a 1-d tensor, got shape {tuple(indices.shape)}."
                )
            indices = indices.tolist()
        if isinstance(indices, (list, tuple)):
            return [self.to_tokens(i) for i in indices]
        i = int(indices)
        if not 0 <= i < len(self):
            raise IndexError(f"Index {i} is not in the vocabulary (valid: 0 to {len(self) - 1}).")
        return self.idx_to_token[i]

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self.idx_to_token[:6]))
        return f"Vocab(size={len(self)}, first=[{head}{', ...' if len(self) > 6 else ''}])"


def read_time_machine() -> str:
    """The raw text of H. G. Wells' *The Time Machine* (through :func:`common.data.read_text`)."""
    from . import data

    return data.read_text("time_machine")


def load_corpus_time_machine(max_tokens: int = -1, token: str = "char") -> tuple[list[int], Vocab]:
    """The Time Machine as token indices and its vocabulary (letters and spaces only).

    ``max_tokens > 0`` keeps the first ``max_tokens`` tokens (smaller runs); ``-1`` keeps all.
    The vocabulary is built from the whole book, so it does not change with ``max_tokens``.
    """
    if max_tokens == 0 or max_tokens < -1:
        raise ValueError(f"max_tokens must be positive or -1 (all tokens), got {max_tokens}.")
    tokens = tokenize(preprocess(read_time_machine()), token)
    vocab = Vocab(tokens)
    corpus = vocab[tokens[:max_tokens] if max_tokens > 0 else tokens]
    return corpus, vocab


def _as_corpus_tensor(corpus) -> torch.Tensor:
    corpus = torch.as_tensor(corpus)
    if corpus.numel() == 0:
        raise ValueError("The corpus is empty: there are no tokens to cut into minibatches.")
    if corpus.ndim != 1:
        raise ValueError(
            f"The corpus must be a 1-d sequence of token indices, got shape {tuple(corpus.shape)}."
        )
    if corpus.is_floating_point():
        raise ValueError("The corpus must hold integer token indices, not floats.")
    return corpus.long()


def _check_sizes(n: int, batch_size: int, num_steps: int) -> None:
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_steps", num_steps, minimum=1)
    needed = batch_size * num_steps + num_steps
    if n < needed:
        raise ValueError(
            f"The corpus has {n} tokens; one minibatch of {batch_size} sequences of "
            f"{num_steps} steps (plus the shifted target) needs at least {needed}."
        )


def seq_data_iter_random(
    corpus, batch_size: int, num_steps: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of random, non-overlapping subsequences: ``(X, Y)``, ``(batch_size, num_steps)``.

    A random offset in ``[0, num_steps)`` starts the partition, so that every epoch cuts the
    corpus differently; the subsequences are then visited in random order. ``Y`` is ``X``
    shifted by one token. Neighbouring minibatches are *not* neighbours in the text.
    """
    corpus = _as_corpus_tensor(corpus)
    _check_sizes(len(corpus), batch_size, num_steps)
    offset = int(torch.randint(num_steps, (1,), generator=generator))
    num_subseqs = (len(corpus) - offset - 1) // num_steps
    starts = offset + num_steps * torch.randperm(num_subseqs, generator=generator)
    steps = torch.arange(num_steps)
    for i in range(0, num_subseqs // batch_size * batch_size, batch_size):
        index = (
            starts[i : i + batch_size, None] + steps
        )  # (batch_size, num_steps) positions in the corpus
        yield corpus[index], corpus[index + 1]


def seq_data_iter_sequential(
    corpus, batch_size: int, num_steps: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches where row ``i`` of one minibatch continues row ``i`` of the previous one.

    The corpus (after a random offset in ``[0, num_steps)``) is split into ``batch_size``
    contiguous streams, read ``num_steps`` tokens at a time. ``X`` and ``Y`` are
    ``(batch_size, num_steps)``; ``Y`` is ``X`` shifted by one token. The hidden state of an RNN
    can therefore be carried from one minibatch to the next.
    """
    corpus = _as_corpus_tensor(corpus)
    _check_sizes(len(corpus), batch_size, num_steps)
    offset = int(torch.randint(num_steps, (1,), generator=generator))
    num_tokens = (len(corpus) - offset - 1) // batch_size * batch_size
    Xs = corpus[offset : offset + num_tokens].reshape(batch_size, -1)
    Ys = corpus[offset + 1 : offset + 1 + num_tokens].reshape(batch_size, -1)
    for t in range(0, Xs.shape[1] // num_steps * num_steps, num_steps):
        yield Xs[:, t : t + num_steps], Ys[:, t : t + num_steps]


class SeqDataLoader:
    """A re-iterable loader of language-model minibatches (each ``iter()`` is a new epoch).

    Holds the corpus (a 1-d tensor of indices) and the vocabulary; ``len()`` is the number of
    minibatches per epoch (it can be one smaller for some random offsets, never larger).
    """

    def __init__(
        self, corpus, vocab: Vocab, batch_size: int, num_steps: int, use_random_iter: bool = False
    ):
        self.corpus = _as_corpus_tensor(corpus)
        _check_sizes(len(self.corpus), batch_size, num_steps)
        self.vocab, self.batch_size, self.num_steps = vocab, batch_size, num_steps
        self.use_random_iter = use_random_iter
        self.data_iter_fn = seq_data_iter_random if use_random_iter else seq_data_iter_sequential

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.data_iter_fn(self.corpus, self.batch_size, self.num_steps)

    def __len__(self) -> int:
        return (len(self.corpus) - 1) // self.batch_size // self.num_steps

    @property
    def num_tokens(self) -> int:
        """Target tokens per epoch (upper bound; the random offset may drop one minibatch)."""
        return len(self) * self.batch_size * self.num_steps


def load_time_machine(
    batch_size: int, num_steps: int, use_random_iter: bool = False, max_tokens: int = -1
) -> tuple[SeqDataLoader, Vocab]:
    """Character minibatches of The Time Machine and the vocabulary: ``(data_iter, vocab)``."""
    corpus, vocab = load_corpus_time_machine(max_tokens)
    return SeqDataLoader(corpus, vocab, batch_size, num_steps, use_random_iter), vocab
