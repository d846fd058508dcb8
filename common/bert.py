"""BERT: an encoder-only Transformer pretrained by masked language modelling and next-sentence prediction.

Introduced in ``chapter_attention-mechanisms/bert.ipynb``; the fine-tuning notebook reuses the
model and :func:`pretrained_bert`.

* :class:`BERTEncoder`: token, segment and learned position embeddings, then post-norm
  Transformer encoder blocks (:class:`EncoderBlock`, GELU feed-forward network) built on
  :class:`common.attention.MultiHeadAttention`;
* :class:`MaskLM` and :class:`NextSentencePred`: the two pretraining heads; :class:`BERTModel`
  puts them on the encoder and :func:`bert_loss` is the pretraining loss;
* :func:`mask_tokens`: the masked-language-model rule (15 % of the non-special tokens chosen;
  of those 80 % become ``<mask>``, 10 % a random token, 10 % stay);
* :func:`tokens_and_segments`, :func:`truncate_pair`, :func:`nsp_pairs`, :func:`encode_pairs`:
  sentence pairs for next-sentence prediction, ``<cls> a <sep> b <sep>`` with segment ids;
* :func:`read_ptb`, :func:`ptb_vocab`, :func:`pretraining_batch`: the Penn Treebank pipeline
  (the course has no WikiText-2, d2l's corpus; PTB has one sentence per line, so the "next
  sentence" is the next line);
* :func:`pretrained_bert`: a BERT pretrained on PTB, trained on first use and cached by its
  recipe (:func:`common.data.cached_state`); :func:`evaluate_pretraining` (MLM and NSP accuracy
  with baselines) and :func:`nsp_preference` (a paired NSP test) measure it on held-out text.

Shapes: ``tokens`` and ``segments`` ``(batch, num_steps)`` int64, ``valid_lens`` ``(batch,)``;
encoder output ``(batch, num_steps, num_hiddens)``; ``pred_positions`` ``(batch, num_preds)``;
MLM logits ``(batch, num_preds, vocab_size)``; NSP logits ``(batch, 2)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from . import attention, config, data, text
from .checks import check_int, check_number

SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<sep>")
"""Reserved tokens of a BERT vocabulary (after ``<unk>``, index 0): ids 1 to 4."""

VERSION = 1  # part of the recipe: bump it when the training code changes the model


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class EncoderBlock(nn.Module):
    """A post-norm Transformer encoder block with a GELU feed-forward network (as in BERT).

    ``Y = LN(X + MultiHead(X, X, X))``, ``Z = LN(Y + W2 GELU(W1 Y + b1) + b2)``, dropout on each
    sublayer's output before the addition. The same block as ``nn.TransformerEncoderLayer(
    activation="gelu", norm_first=False, batch_first=True)``. ``forward(X (b, n, d), valid_lens)``.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attention = attention.MultiHeadAttention(num_hiddens, num_heads, dropout, bias=True)
        self.dropout1 = nn.Dropout(dropout)
        self.ln1 = nn.LayerNorm(num_hiddens)
        self.dense1 = nn.Linear(num_hiddens, ffn_num_hiddens)
        self.dense2 = nn.Linear(ffn_num_hiddens, num_hiddens)
        self.dropout2 = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(num_hiddens)

    def forward(self, X: torch.Tensor, valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        Y = self.ln1(X + self.dropout1(self.attention(X, X, X, valid_lens)))
        return self.ln2(Y + self.dropout2(self.dense2(F.gelu(self.dense1(Y)))))


class BERTEncoder(nn.Module):
    """Token + segment + learned position embeddings, then ``num_blks`` :class:`EncoderBlock` s.

    ``forward(tokens (b, n), segments (b, n), valid_lens (b,) or None)`` -> ``(b, n, num_hiddens)``,
    ``n <= max_len``. Segment ids are 0 (first sentence, with ``<cls>``) or 1 (second sentence).
    The attention weights of each block are in ``self.blks[i].attention.attention.attention_weights``.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
                 num_blks: int, dropout: float = 0.0, max_len: int = 512):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.max_len = check_int("max_len", max_len, minimum=1)
        check_int("num_blks", num_blks, minimum=1)
        self.token_embedding = nn.Embedding(vocab_size, num_hiddens)
        self.segment_embedding = nn.Embedding(2, num_hiddens)
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len, num_hiddens) * 0.02)
        for table in (self.token_embedding, self.segment_embedding):
            nn.init.normal_(table.weight, std=0.02)  # BERT's initialisation
        self.embedding_norm = nn.LayerNorm(num_hiddens)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blks = nn.ModuleList(EncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout)
                                  for _ in range(num_blks))

    def embed(self, tokens: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """The input representation ``(b, n, d)``: the sum of the three embeddings, layer-normalised
        (then dropout), as in BERT."""
        _check_tokens_segments(tokens, segments, self.vocab_size, self.max_len)
        X = self.token_embedding(tokens) + self.segment_embedding(segments) + self.pos_embedding[:, :tokens.shape[1]]
        return self.embedding_dropout(self.embedding_norm(X))

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor,
                valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        X = self.embed(tokens, segments)
        for blk in self.blks:
            X = blk(X, valid_lens)
        return X


def _check_tokens_segments(tokens: torch.Tensor, segments: torch.Tensor, vocab_size: int, max_len: int) -> None:
    for name, t in (("tokens", tokens), ("segments", segments)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or t.is_floating_point() or t.dtype == torch.bool:
            what = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be an integer tensor (batch, num_steps), got {what}.")
    if tokens.shape != segments.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and segments {tuple(segments.shape)} must have the same shape.")
    if tokens.shape[1] > max_len:
        raise ValueError(f"The sequences have {tokens.shape[1]} steps, more than max_len={max_len} learned "
                         "positions: truncate them (truncate_pair) or build the encoder with a larger max_len.")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size - 1}] (the vocabulary), got "
                         f"{int(tokens.min())} to {int(tokens.max())}.")
    if segments.numel() and (int(segments.min()) < 0 or int(segments.max()) > 1):
        raise ValueError("segment ids must be 0 (first sentence) or 1 (second sentence).")


class MaskLM(nn.Module):
    """The masked-language-model head: ``Linear -> GELU -> LayerNorm -> Linear(vocab)`` at the
    predicted positions.

    ``forward(X (b, n, d), pred_positions (b, P))`` -> logits ``(b, P, vocab_size)``.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, mlm_num_hiddens: int | None = None):
        super().__init__()
        mlm_num_hiddens = mlm_num_hiddens or num_hiddens
        self.mlp = nn.Sequential(nn.Linear(num_hiddens, mlm_num_hiddens), nn.GELU(),
                                 nn.LayerNorm(mlm_num_hiddens), nn.Linear(mlm_num_hiddens, vocab_size))

    def forward(self, X: torch.Tensor, pred_positions: torch.Tensor) -> torch.Tensor:
        if pred_positions.ndim != 2 or pred_positions.shape[0] != X.shape[0]:
            raise ValueError(f"pred_positions must have shape (batch={X.shape[0]}, num_preds), "
                             f"got {tuple(pred_positions.shape)}.")
        if pred_positions.numel() and (int(pred_positions.min()) < 0 or int(pred_positions.max()) >= X.shape[1]):
            raise ValueError(f"pred_positions must lie in [0, {X.shape[1] - 1}], got "
                             f"{int(pred_positions.min())} to {int(pred_positions.max())}.")
        index = pred_positions.unsqueeze(-1).expand(-1, -1, X.shape[-1])  # (b, P, d)
        return self.mlp(torch.gather(X, 1, index))


class NextSentencePred(nn.Module):
    """The next-sentence-prediction head: ``(b, d)`` -> logits ``(b, 2)`` (class 1 = is next)."""

    def __init__(self, num_hiddens: int):
        super().__init__()
        self.output = nn.Linear(num_hiddens, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.output(X)


class BERTModel(nn.Module):
    """:class:`BERTEncoder` with the two pretraining heads.

    ``forward(tokens, segments, valid_lens=None, pred_positions=None)`` -> ``(encoded (b, n, d),
    mlm_logits (b, P, vocab) or None, nsp_logits (b, 2))``. The NSP head reads the ``<cls>``
    output through ``self.hidden`` (``Linear -> tanh``, BERT's "pooler"), which fine-tuning reuses.
    """

    def __init__(self, vocab_size: int, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
                 num_blks: int, dropout: float = 0.0, max_len: int = 512, tie_weights: bool = True):
        super().__init__()
        self.encoder = BERTEncoder(vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_blks, dropout, max_len)
        self.mlm = MaskLM(vocab_size, num_hiddens)
        if tie_weights:  # the output layer of the MLM head reuses the token embeddings (BERT does)
            self.mlm.mlp[-1].weight = self.encoder.token_embedding.weight
        self.hidden = nn.Sequential(nn.Linear(num_hiddens, num_hiddens), nn.Tanh())
        self.nsp = NextSentencePred(num_hiddens)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor, valid_lens: torch.Tensor | None = None,
                pred_positions: torch.Tensor | None = None):
        encoded = self.encoder(tokens, segments, valid_lens)
        mlm_logits = None if pred_positions is None else self.mlm(encoded, pred_positions)
        nsp_logits = self.nsp(self.hidden(encoded[:, 0]))
        return encoded, mlm_logits, nsp_logits


def bert_loss(mlm_logits: torch.Tensor, mlm_labels: torch.Tensor, mlm_weights: torch.Tensor,
              nsp_logits: torch.Tensor, is_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mlm_loss + nsp_loss, mlm_loss, nsp_loss)``: cross-entropies, the MLM one averaged over the
    real predictions (``mlm_weights`` 1, padding 0), the NSP one over the batch."""
    if mlm_logits.shape[:2] != mlm_labels.shape or mlm_labels.shape != mlm_weights.shape:
        raise ValueError(f"mlm_logits {tuple(mlm_logits.shape)} must be (b, P, vocab) for labels and weights "
                         f"(b, P), got {tuple(mlm_labels.shape)} and {tuple(mlm_weights.shape)}.")
    per_prediction = F.cross_entropy(mlm_logits.flatten(0, 1), mlm_labels.flatten(), reduction="none")
    weights = mlm_weights.flatten().to(per_prediction.dtype)
    mlm = (per_prediction * weights).sum() / weights.sum().clamp(min=1)
    nsp = F.cross_entropy(nsp_logits, is_next.long())
    return mlm + nsp, mlm, nsp


# ---------------------------------------------------------------------------------------------
# Masked language model: the masking rule
# ---------------------------------------------------------------------------------------------

@dataclass
class MaskedTokens:
    """What :func:`mask_tokens` returns; every tensor is on the device of the tokens.

    ``inputs`` ``(b, n)``: the tokens with the chosen ones replaced; ``pred_positions``,
    ``labels`` (the original tokens there) and ``weights`` (1 for a real prediction, 0 for padding)
    ``(b, P)``; ``kind`` ``(b, P)``: 0 = became ``<mask>``, 1 = a random token, 2 = unchanged,
    -1 = padding.
    """

    inputs: torch.Tensor
    pred_positions: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    kind: torch.Tensor


def mask_tokens(tokens: torch.Tensor, special_ids: Sequence[int], mask_id: int, vocab_size: int,
                mask_prob: float = 0.15, num_preds: int | None = None,
                generator: torch.Generator | None = None) -> MaskedTokens:
    """BERT's masking rule on a batch ``tokens`` ``(b, n)``.

    In a row with ``m`` non-special tokens (ids not in ``special_ids``), ``k`` of them are chosen
    uniformly without replacement, ``k = mask_prob * m`` rounded down or up at random so that its
    mean is exactly ``mask_prob * m`` (BERT rounds to the nearest integer, which gives 4 of 29,
    13.8 %, on most rows here). Each chosen token becomes ``mask_id`` with probability 0.8, a
    random non-special token with probability 0.1, or stays as it is with probability 0.1. The
    chosen positions of a row are padded (weight 0) to ``num_preds`` columns (default: the
    largest ``k`` of the batch, at least 1). ``generator`` (on the tokens' device) makes the draw
    repeatable.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        what = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be an integer tensor (batch, num_steps), got {what}.")
    vocab_size = check_int("vocab_size", vocab_size, minimum=1)
    mask_prob = check_number("mask_prob", mask_prob, minimum=0.0)
    if not 0 < mask_prob <= 1:
        raise ValueError(f"mask_prob must lie in (0, 1], got {mask_prob}.")
    dev = tokens.device
    special = torch.tensor(sorted({int(i) for i in special_ids}), dtype=torch.long, device=dev)
    if int(mask_id) not in special.tolist():
        raise ValueError(f"mask_id {mask_id} must be one of special_ids {special.tolist()} (it is never a "
                         "prediction target itself).")
    ordinary = torch.ones(vocab_size, dtype=torch.bool, device=dev)
    ordinary[special[special < vocab_size]] = False
    ordinary_ids = ordinary.nonzero().squeeze(1)  # the ids a random replacement is drawn from
    if len(ordinary_ids) == 0:
        raise ValueError("Every id of the vocabulary is special: there is no token to predict or draw.")
    # 1. how many: k = floor(mask_prob * m + u), u ~ U(0, 1), whose mean is mask_prob * m
    candidates = ~torch.isin(tokens, special)  # (b, n)
    m = candidates.sum(1)
    u = torch.rand(m.shape, generator=generator, device=dev, dtype=torch.float64)
    counts = torch.floor(m * mask_prob + u).long().clamp(max=m)  # (b,)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    if num_preds is None:
        num_preds = width
    elif check_int("num_preds", num_preds, minimum=1) < width:
        raise ValueError(f"num_preds={num_preds} is too small: a row of this batch has {width} chosen tokens. "
                         f"Pass num_preds >= {width}, or None.")
    # 2. which: the first k of a random order of the row's candidates (random keys, others last)
    keys = torch.rand(tokens.shape, generator=generator, device=dev).masked_fill(~candidates, 2.0)
    order = keys.argsort(dim=1)[:, :num_preds]
    order = F.pad(order, (0, num_preds - order.shape[1]))  # rows shorter than num_preds
    weights = torch.arange(num_preds, device=dev)[None, :] < counts[:, None]  # (b, P): a real prediction
    positions = torch.where(weights, order, 0)
    labels = torch.where(weights, torch.gather(tokens, 1, positions), 0)
    # 3. replace: 80 % <mask>, 10 % a random ordinary token, 10 % unchanged
    u = torch.rand(positions.shape, generator=generator, device=dev)
    kind = torch.where(u < 0.8, 0, torch.where(u < 0.9, 1, 2)).masked_fill(~weights, -1)
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), positions.shape, generator=generator, device=dev)]
    new = torch.where(kind == 0, int(mask_id), torch.where(kind == 1, random_ids, labels))
    inputs = tokens.clone()
    rows = torch.arange(tokens.shape[0], device=dev)[:, None].expand_as(positions)
    inputs[rows[weights], positions[weights]] = new[weights]
    return MaskedTokens(inputs, positions, labels, weights.float(), kind)


# ---------------------------------------------------------------------------------------------
# Next-sentence prediction: sentence pairs
# ---------------------------------------------------------------------------------------------

def tokens_and_segments(tokens_a: Sequence, tokens_b: Sequence | None = None) -> tuple[list, list[int]]:
    """``<cls> a <sep>`` (segment 0), then ``b <sep>`` (segment 1) when ``tokens_b`` is given."""
    tokens = ["<cls>", *tokens_a, "<sep>"]
    segments = [0] * len(tokens)
    if tokens_b is not None:
        tokens += [*tokens_b, "<sep>"]
        segments += [1] * (len(tokens_b) + 1)
    return tokens, segments


def truncate_pair(tokens_a: Sequence, tokens_b: Sequence, max_tokens: int) -> tuple[list, list]:
    """Shorten the longer of the two sentences, one token at a time, until together they have at
    most ``max_tokens`` tokens. ``a`` loses tokens at its start and ``b`` at its end, so the seam
    between them (what next-sentence prediction looks at) stays; each keeps at least one token."""
    max_tokens = check_int("max_tokens", max_tokens, minimum=2)
    a, b = list(tokens_a), list(tokens_b)
    if not a or not b:
        raise ValueError("Both sentences of a pair need at least one token.")
    excess = len(a) + len(b) - max_tokens
    if excess <= 0:
        return a, b
    # the longer one loses tokens until both are equally long, then they alternate (a first)
    cut_a = min(max(0, len(a) - len(b)), excess)
    cut_b = min(max(0, len(b) - len(a)), excess)
    rest = excess - cut_a - cut_b
    cut_a, cut_b = cut_a + (rest + 1) // 2, cut_b + rest // 2
    return a[cut_a:], b[:len(b) - cut_b]


def nsp_pairs(sentences: Sequence[Sequence], firsts: Sequence[int] | torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> list[tuple[list, list, bool]]:
    """``(a, b, is_next)`` triples for next-sentence prediction.

    ``a`` is sentence ``i`` for each ``i`` in ``firsts`` (default: every sentence that has a next
    one, ``0 .. len - 2``, in order). With probability 0.5 ``b`` is sentence ``i + 1``
    (``is_next`` True), else a sentence drawn uniformly from all the others except ``i + 1``.
    """
    n = len(sentences)
    if n < 3:
        raise ValueError(f"Next-sentence pairs need at least 3 sentences (a true next one and a different "
                         f"random one), got {n}.")
    firsts = torch.arange(n - 1) if firsts is None else torch.as_tensor(firsts, dtype=torch.long)
    if firsts.ndim != 1 or (firsts.numel() and (int(firsts.min()) < 0 or int(firsts.max()) > n - 2)):
        raise ValueError(f"firsts must be a 1-d list of sentence indices in [0, {n - 2}] (the last sentence has "
                         "no next one).")
    is_next = torch.rand(len(firsts), generator=generator) < 0.5
    other = torch.randint(n - 1, (len(firsts),), generator=generator)
    other = other + (other >= firsts + 1).long()  # uniform over every index except i + 1
    seconds = torch.where(is_next, firsts + 1, other)
    return [(list(sentences[i]), list(sentences[j]), bool(t))
            for i, j, t in zip(firsts.tolist(), seconds.tolist(), is_next.tolist())]


@dataclass
class PairBatch:
    """Encoded pairs: ``tokens``, ``segments`` ``(N, max_len)`` (padded with ``<pad>`` and 0),
    ``valid_lens`` and ``is_next`` ``(N,)``."""

    tokens: torch.Tensor
    segments: torch.Tensor
    valid_lens: torch.Tensor
    is_next: torch.Tensor

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(*(t.to(device) for t in (self.tokens, self.segments, self.valid_lens, self.is_next)))


def encode_pairs(pairs: Sequence[tuple[Sequence[int], Sequence[int], bool]], vocab: text.Vocab,
                 max_len: int) -> PairBatch:
    """Pairs of sentences of token ids -> ``<cls> a <sep> b <sep>``, truncated to ``max_len``
    (:func:`truncate_pair`) and padded; the vocabulary must hold :data:`SPECIAL_TOKENS`."""
    max_len = check_int("max_len", max_len, minimum=5)
    _check_vocab(vocab)
    cls, sep, pad = vocab["<cls>"], vocab["<sep>"], vocab["<pad>"]
    if not pairs:
        raise ValueError("encode_pairs got no pairs.")
    tokens = torch.full((len(pairs), max_len), pad, dtype=torch.long)
    segments = torch.zeros((len(pairs), max_len), dtype=torch.long)
    valid_lens = torch.empty(len(pairs), dtype=torch.long)
    for row, (a, b, _) in enumerate(pairs):
        a, b = truncate_pair(a, b, max_len - 3)
        ids = [cls, *a, sep, *b, sep]
        tokens[row, :len(ids)] = torch.tensor(ids)
        segments[row, len(a) + 2:len(ids)] = 1
        valid_lens[row] = len(ids)
    is_next = torch.tensor([bool(t) for _, _, t in pairs])
    return PairBatch(tokens, segments, valid_lens, is_next)


def _check_vocab(vocab: text.Vocab) -> None:
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"The vocabulary lacks {missing}: build it with reserved_tokens={list(SPECIAL_TOKENS)} "
                         "(ptb_vocab does).")


def special_ids(vocab: text.Vocab) -> list[int]:
    """Ids of :data:`SPECIAL_TOKENS` in ``vocab`` (``<unk>`` is an ordinary word of PTB's text)."""
    _check_vocab(vocab)
    return [vocab[t] for t in SPECIAL_TOKENS]


# ---------------------------------------------------------------------------------------------
# The Penn Treebank pipeline
# ---------------------------------------------------------------------------------------------

PTB_SPLITS = ("train", "valid", "test")


def read_ptb(split: str = "train") -> list[list[str]]:
    """The sentences (lines, in corpus order) of one PTB split as lists of tokens."""
    if split not in PTB_SPLITS:
        raise ValueError(f"Unknown PTB split {split!r}: use one of {PTB_SPLITS}.")
    lines = (data.extract("ptb") / f"ptb.{split}.txt").read_text(encoding="utf-8").splitlines()
    return [line.split() for line in lines if line.split()]


def ptb_vocab(sentences: Sequence[Sequence[str]], min_freq: int = 5) -> text.Vocab:
    """A vocabulary of ``sentences`` with :data:`SPECIAL_TOKENS` reserved (d2l's ``min_freq`` 5)."""
    return text.Vocab(sentences, min_freq=min_freq, reserved_tokens=list(SPECIAL_TOKENS))


def pretraining_batch(corpus: Sequence[Sequence[int]], vocab: text.Vocab, batch_size: int, max_len: int,
                      firsts: torch.Tensor | None = None, generator: torch.Generator | None = None
                      ) -> tuple[PairBatch, MaskedTokens]:
    """One pretraining minibatch from sentences of token ids: NSP pairs starting at ``firsts``
    (default ``batch_size`` sentences drawn uniformly), encoded, then masked (:func:`mask_tokens`)."""
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if firsts is None:
        firsts = torch.randint(len(corpus) - 1, (batch_size,), generator=generator)
    pairs = encode_pairs(nsp_pairs(corpus, firsts, generator), vocab, max_len)
    masked = mask_tokens(pairs.tokens, special_ids(vocab), vocab["<mask>"], len(vocab), generator=generator)
    return pairs, masked


# ---------------------------------------------------------------------------------------------
# Pretraining, cached
# ---------------------------------------------------------------------------------------------

def bert_recipe() -> dict:
    """The settings of :func:`pretrained_bert`: d2l's small BERT (2 blocks, 2 heads, 128 hidden
    units) in full mode, a smaller one trained for fewer steps in smoke mode."""
    return {
        "version": VERSION,
        "num_hiddens": config.pick(full=128, smoke=64),
        "ffn_num_hiddens": config.pick(full=256, smoke=128),
        "num_heads": 2,
        "num_blks": 2,
        "dropout": 0.1,
        "max_len": config.pick(full=64, smoke=32),
        "batch_size": config.pick(full=128, smoke=64),
        "num_steps": config.pick(full=1000, smoke=250),
        "lr": 3e-3,
        "warmup": 0.1,
        "min_freq": 5,
        "tie_weights": False,  # BERT ties them; in runs this short, untied learns much faster (measured)
    }


@dataclass
class PretrainedBERT:
    """:func:`pretrained_bert`'s result: the model (eval mode, on the CPU), its vocabulary, the
    recipe and the training ``history`` (``"mlm"``, ``"nsp"``: the loss of every step)."""

    net: BERTModel
    vocab: text.Vocab
    recipe: dict
    history: dict = field(default_factory=dict)


def new_bert(vocab_size: int, recipe: dict) -> BERTModel:
    """An untrained :class:`BERTModel` with the sizes of ``recipe``."""
    return BERTModel(vocab_size, recipe["num_hiddens"], recipe["ffn_num_hiddens"], recipe["num_heads"],
                     recipe["num_blks"], recipe["dropout"], recipe["max_len"], recipe.get("tie_weights", False))


def warmup_then_linear_decay(optimizer: torch.optim.Optimizer, num_steps: int,
                             warmup: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """BERT's learning-rate schedule, stepped once per update: a linear rise over the first
    ``warmup`` fraction of ``num_steps`` to the optimiser's rate, then a linear fall to 0."""
    num_steps = check_int("num_steps", num_steps, minimum=1)
    warmup_steps = max(1, round(check_number("warmup", warmup, minimum=0.0) * num_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup_steps, max(0.0, (num_steps - s) / max(1, num_steps - warmup_steps))))


def train_bert(recipe: dict, device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Pretrain a BERT on the PTB training sentences with ``recipe``; returns ``{"model": state dict,
    "idx_to_token": the vocabulary, "history": {"mlm": [...], "nsp": [...]}}`` (what
    :func:`pretrained_bert` caches). Adam(W), linear warm-up then linear decay, gradient norm
    clipped at 1. Uses the global torch random state (seed it for a repeatable run)."""
    missing = sorted(set(bert_recipe()) - set(recipe))
    if missing:
        raise ValueError(f"recipe lacks {missing}; start from bert_recipe().")
    dev = config.resolve_device(device)
    sentences = read_ptb("train")
    vocab = ptb_vocab(sentences, recipe["min_freq"])
    corpus = [vocab[s] for s in sentences]
    net = new_bert(len(vocab), recipe).to(dev)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=0.01)
    total = recipe["num_steps"]
    scheduler = warmup_then_linear_decay(optimizer, total, recipe["warmup"])
    bar = None
    if progress:
        from .progress import ProgressBar
        bar = ProgressBar(total, "step", desc="pretraining BERT")
    losses = []
    net.train()
    for _ in range(total):
        pairs, masked = pretraining_batch(corpus, vocab, recipe["batch_size"], recipe["max_len"])
        pairs, masked_inputs = pairs.to(dev), masked.inputs.to(dev)
        _, mlm_logits, nsp_logits = net(masked_inputs, pairs.segments, pairs.valid_lens, masked.pred_positions.to(dev))
        loss, mlm, nsp = bert_loss(mlm_logits, masked.labels.to(dev), masked.weights.to(dev), nsp_logits, pairs.is_next)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(torch.stack([mlm.detach(), nsp.detach()]))
        if bar is not None:
            bar.update()
            if len(losses) % 50 == 0:
                bar.set_postfix(mlm=f"{losses[-1][0].item():.2f}", nsp=f"{losses[-1][1].item():.3f}")
    if bar is not None:
        bar.close()
    curve = torch.stack(losses).cpu()
    history = {"mlm": curve[:, 0].tolist(), "nsp": curve[:, 1].tolist()}
    return {"model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "idx_to_token": list(vocab.idx_to_token), "history": history}


def pretrained_bert(recipe: dict | None = None) -> PretrainedBERT:
    """A BERT pretrained on PTB with :func:`bert_recipe` (or ``recipe``): trained on first use
    (about 20 s on one CPU core in smoke mode; in full mode about 10 minutes of CPU time, much less
    on a GPU), then read from the data cache (``<data cache>/derived/bert-ptb-*.pt``)."""
    recipe = bert_recipe() if recipe is None else recipe
    state = data.cached_state("bert-ptb", recipe, lambda r: train_bert(r))
    vocab = ptb_vocab(read_ptb("train"), recipe["min_freq"])
    if list(vocab.idx_to_token) != list(state["idx_to_token"]):
        raise RuntimeError("The cached BERT was trained with another vocabulary than the one PTB gives now: "
                           "delete <data cache>/derived/bert-ptb-*.pt and run again.")
    net = new_bert(len(vocab), recipe)
    net.load_state_dict(state["model"])
    return PretrainedBERT(net.eval(), vocab, dict(recipe), state["history"])


@torch.no_grad()
def evaluate_pretraining(net: BERTModel, corpus: Sequence[Sequence[int]], vocab: text.Vocab, max_len: int,
                         unigram: torch.Tensor, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """MLM and NSP accuracy of ``net`` on held-out sentences of token ids, with baselines on the same
    masked positions: ``mlm_accuracy``, ``most_frequent`` (always predicting the most frequent
    token of ``unigram``, a ``(vocab,)`` tensor of training counts), ``unigram_sampling`` (the
    expected accuracy of drawing predictions from ``unigram``), ``nsp_accuracy``, ``num_masked``,
    ``num_pairs``. The pairs and masks come from a generator seeded ``seed``: the same for every model."""
    generator = torch.Generator().manual_seed(seed)
    firsts = torch.arange(len(corpus) - 1)
    dev = next(net.parameters()).device
    was_training = net.training
    net.eval()
    p = unigram.double() / unigram.sum()
    correct = most = expected = nsp_correct = masked_total = 0.0
    for start in range(0, len(firsts), batch_size):
        pairs, masked = pretraining_batch(corpus, vocab, batch_size, max_len, firsts[start:start + batch_size], generator)
        _, mlm_logits, nsp_logits = net(masked.inputs.to(dev), pairs.segments.to(dev), pairs.valid_lens.to(dev),
                                        masked.pred_positions.to(dev))
        w = masked.weights.bool()
        labels = masked.labels[w]
        correct += (mlm_logits.argmax(-1).cpu()[w] == labels).sum().item()
        most += (labels == int(p.argmax())).sum().item()
        expected += p[labels].sum().item()
        masked_total += w.sum().item()
        nsp_correct += (nsp_logits.argmax(-1).cpu() == pairs.is_next.long()).sum().item()
    net.train(was_training)
    return {"mlm_accuracy": correct / masked_total, "most_frequent": most / masked_total,
            "unigram_sampling": expected / masked_total, "nsp_accuracy": nsp_correct / len(firsts),
            "num_masked": int(masked_total), "num_pairs": len(firsts)}


@torch.no_grad()
def nsp_preference(net: BERTModel, corpus: Sequence[Sequence[int]], vocab: text.Vocab, max_len: int,
                   batch_size: int = 512, seed: int = 0) -> dict[str, float]:
    """The paired NSP test: for every sentence ``a`` of ``corpus`` that has a next one, does ``net``
    give the pair (``a``, its next sentence) a higher "is next" score ``o_1 - o_0`` than (``a``, a
    sentence drawn uniformly from the others)? Returns ``preferred`` (the fraction of sentences
    where it does: 0.5 by chance, each sentence an independent trial) and ``num_sentences``. The
    random sentences come from a generator seeded
    ``seed``."""
    n = len(corpus)
    if n < 3:
        raise ValueError(f"nsp_preference needs at least 3 sentences, got {n}.")
    generator = torch.Generator().manual_seed(seed)
    firsts = torch.arange(n - 1)
    others = torch.randint(n - 2, (n - 1,), generator=generator)
    others = others + (others >= firsts).long()   # skip a itself ...
    others = others + (others >= firsts + 1).long()   # ... and its next sentence
    dev = next(net.parameters()).device
    was_training = net.training
    net.eval()
    scores = {}
    for name, seconds in (("next", firsts + 1), ("random", others)):
        chunks = []
        for start in range(0, n - 1, batch_size):
            rows = zip(firsts[start:start + batch_size].tolist(), seconds[start:start + batch_size].tolist())
            batch = encode_pairs([(corpus[i], corpus[j], name == "next") for i, j in rows], vocab, max_len).to(dev)
            _, _, logits = net(batch.tokens, batch.segments, batch.valid_lens)
            chunks.append((logits[:, 1] - logits[:, 0]).cpu())
        scores[name] = torch.cat(chunks)
    net.train(was_training)
    return {"preferred": (scores["next"] > scores["random"]).double().mean().item(), "num_sentences": n - 1}


def count_tokens(corpus: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """Counts ``(vocab_size,)`` of every token id in ``corpus`` (the unigram frequencies)."""
    flat = torch.tensor([i for s in corpus for i in s], dtype=torch.long)
    return torch.bincount(flat, minlength=vocab_size)


__all__ = ["SPECIAL_TOKENS", "BERTEncoder", "BERTModel", "EncoderBlock", "MaskLM", "MaskedTokens",
           "NextSentencePred", "PairBatch", "PretrainedBERT", "bert_loss", "bert_recipe", "count_tokens",
           "encode_pairs", "evaluate_pretraining", "mask_tokens", "new_bert", "nsp_pairs", "nsp_preference",
           "pretrained_bert", "pretraining_batch", "ptb_vocab", "read_ptb", "special_ids", "tokens_and_segments",
           "train_bert", "truncate_pair", "warmup_then_linear_decay"]

