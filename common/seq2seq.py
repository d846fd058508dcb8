"""Sequence to sequence: the English-French dataset, the encoder-decoder interface, training, BLEU.

Introduced in the notebooks ``machine-translation-and-dataset``, ``encoder-decoder`` and
``seq2seq``; ``beam-search`` and the attention chapter reuse them.

Shapes used throughout: source and target minibatches are token indices ``(batch_size,
num_steps)``, padded with ``<pad>`` after ``<eos>``; valid lengths ``(batch_size,)`` count the
tokens before the padding (``<eos>`` included); decoder outputs are logits
``(batch_size, num_steps, vocab_size)``.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .checks import check_int
from .data import TensorLoader
from .plot import LivePlot
from .rnn import grad_clipping
from .text import Vocab
from .train import Accumulator, Timer, device_of, progress_bar

RESERVED_TOKENS = ["<pad>", "<bos>", "<eos>"]


# ---------------------------------------------------------------------------------------------
# Data: English-French sentence pairs
# ---------------------------------------------------------------------------------------------


def read_data_nmt() -> str:
    """The English-French pairs: the text of ``fra-eng/fra.txt`` (``english<TAB>french`` lines)."""
    from . import data

    return data.read_text("fra-eng")


def preprocess_nmt(text: str) -> str:
    """Lowercase, turn non-breaking spaces into spaces, and put a space before ``, . ! ?``.

    ``"Go.\\tVa !"`` becomes ``"go .\\tva !"``, so that punctuation marks become tokens.
    """
    if not isinstance(text, str):
        raise TypeError(f"preprocess_nmt expects a str, got {type(text).__name__}.")
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    return re.sub(r"(?<=[^ ])([,.!?])", r" \1", text)


def tokenize_nmt(
    text: str, num_examples: int | None = None
) -> tuple[list[list[str]], list[list[str]]]:
    """Word tokens of the source and target side of each line: ``(source, target)``.

    Every non-empty line must be ``source<TAB>target`` (extra tab-separated fields, such as the
    attribution in newer Tatoeba files, are ignored). ``num_examples`` keeps the first pairs.
    """
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be positive or None, got {num_examples}.")
    source, target = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if num_examples is not None and len(source) >= num_examples:
            break
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"Line {number} is not 'source<TAB>target': {line[:60]!r}.")
        source.append(parts[0].split())
        target.append(parts[1].split())
    if not source:
        raise ValueError("The text has no sentence pair: it is empty.")
    return source, target


def truncate_pad(line: Sequence[int], num_steps: int, padding_token: int) -> list[int]:
    """Cut ``line`` to ``num_steps`` tokens, or pad it with ``padding_token`` to ``num_steps``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}.")
    line = list(line)
    return line[:num_steps] + [padding_token] * max(0, num_steps - len(line))


def build_array_nmt(
    lines: Sequence[Sequence[str]], vocab: Vocab, num_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices ``(n, num_steps)`` and valid lengths ``(n,)``.

    ``<eos>`` is appended to every line, which is then truncated or padded to ``num_steps``.
    """
    if not lines:
        raise ValueError("build_array_nmt got no lines.")
    for tok in RESERVED_TOKENS:
        if tok not in vocab:
            raise ValueError(
                f"The vocabulary lacks the reserved token {tok!r}: build it with "
                f"reserved_tokens={RESERVED_TOKENS}."
            )
    rows = [
        truncate_pad(vocab[list(line)] + [vocab["<eos>"]], num_steps, vocab["<pad>"])
        for line in lines
    ]
    array = torch.tensor(rows, dtype=torch.long)
    valid_len = (array != vocab["<pad>"]).sum(dim=1)
    return array, valid_len


def load_data_nmt(
    batch_size: int, num_steps: int, num_examples: int | None = 600
) -> tuple[TensorLoader, Vocab, Vocab]:
    """English-French minibatches and both vocabularies: ``(data_iter, src_vocab, tgt_vocab)``.

    Each minibatch is ``(X, X_valid_len, Y, Y_valid_len)`` with ``X``, ``Y`` of shape
    ``(batch_size, num_steps)``. Tokens seen fewer than twice map to ``<unk>``. The first
    ``num_examples`` pairs are used (``None``: all of them).
    """
    text = read_data_nmt()
    if num_examples is not None:  # preprocess only the lines we keep (the file has ~190,000)
        text = "\n".join(text.split("\n", num_examples)[:num_examples])
    source, target = tokenize_nmt(preprocess_nmt(text), num_examples)
    src_vocab = Vocab(source, min_freq=2, reserved_tokens=RESERVED_TOKENS)
    tgt_vocab = Vocab(target, min_freq=2, reserved_tokens=RESERVED_TOKENS)
    src, src_valid_len = build_array_nmt(source, src_vocab, num_steps)
    tgt, tgt_valid_len = build_array_nmt(target, tgt_vocab, num_steps)
    data_iter = TensorLoader(
        src, src_valid_len, tgt, tgt_valid_len, batch_size=batch_size, shuffle=True
    )
    return data_iter, src_vocab, tgt_vocab


# ---------------------------------------------------------------------------------------------
# Masks and the loss
# ---------------------------------------------------------------------------------------------


def sequence_mask(X: torch.Tensor, valid_len: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """A copy of ``X`` ``(batch, num_steps, ...)``: ``value`` past each sequence's ``valid_len``."""
    if X.ndim < 2:
        raise ValueError(f"X must be at least (batch, num_steps), got shape {tuple(X.shape)}.")
    valid_len = torch.as_tensor(valid_len, device=X.device)
    if valid_len.shape != X.shape[:1]:
        raise ValueError(
            f"valid_len must have shape ({X.shape[0]},) (one length per sequence), "
            f"got {tuple(valid_len.shape)}."
        )
    if len(valid_len) and (int(valid_len.min()) < 0 or int(valid_len.max()) > X.shape[1]):
        raise ValueError(
            f"valid lengths must lie in [0, {X.shape[1]}] (the padded length), got "
            f"{valid_len.min().item()} to {valid_len.max().item()}."
        )
    mask = (
        torch.arange(X.shape[1], device=X.device)[None, :] < valid_len[:, None]
    )  # (batch, num_steps)
    mask = mask.reshape(mask.shape + (1,) * (X.ndim - 2))
    return torch.where(mask, X, torch.as_tensor(value, dtype=X.dtype, device=X.device))


class MaskedSoftmaxCELoss(nn.Module):
    """Softmax cross-entropy that ignores padding: one loss per sequence, ``(batch,)``.

    ``pred`` is ``(batch, num_steps, vocab)`` logits, ``label`` ``(batch, num_steps)`` indices and
    ``valid_len`` ``(batch,)``. The per-token losses past ``valid_len`` are set to 0 and the rest
    averaged over ``num_steps`` (so a sequence's loss is (sum over its valid tokens) / num_steps).
    """

    def forward(
        self, pred: torch.Tensor, label: torch.Tensor, valid_len: torch.Tensor
    ) -> torch.Tensor:
        if pred.ndim != 3:
            raise ValueError(
                f"pred must be (batch, num_steps, vocab) logits, got shape {tuple(pred.shape)}."
            )
        if label.shape != pred.shape[:2]:
            raise ValueError(
                f"label must be (batch, num_steps) = {tuple(pred.shape[:2])}, "
                f"got {tuple(label.shape)}."
            )
        per_token = nn.functional.cross_entropy(
            pred.transpose(1, 2), label, reduction="none"
        )  # (batch, steps)
        return sequence_mask(per_token, valid_len).mean(dim=1)


# ---------------------------------------------------------------------------------------------
# The encoder-decoder interface
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Maps a source minibatch ``X`` (plus e.g. its valid lengths) to an encoding."""

    def forward(self, X: torch.Tensor, *args):
        raise NotImplementedError("An Encoder subclass must implement forward(X, *args).")


class Decoder(nn.Module):
    """Makes a state of the encoder's outputs (``init_state``); maps inputs and state to outputs."""

    def init_state(self, enc_all_outputs, *args):
        raise NotImplementedError(
            "A Decoder subclass must implement init_state(enc_all_outputs, *args)."
        )

    def forward(self, X: torch.Tensor, state):
        raise NotImplementedError(
            "A Decoder subclass must implement forward(X, state) -> (outputs, state)."
        )


class EncoderDecoder(nn.Module):
    """An encoder and a decoder: ``forward(enc_X, dec_X, *args) -> (dec_outputs, dec_state)``.

    ``*args`` (e.g. the source valid lengths) are passed to the encoder and to ``init_state``.
    """

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, enc_X: torch.Tensor, dec_X: torch.Tensor, *args):
        enc_all_outputs = self.encoder(enc_X, *args)
        dec_state = self.decoder.init_state(enc_all_outputs, *args)
        return self.decoder(dec_X, dec_state)


def _check_batch_of_tokens(X: torch.Tensor, name: str) -> None:
    if not isinstance(X, torch.Tensor) or X.ndim != 2 or X.is_floating_point():
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(
            f"{name} must be integer token indices of shape (batch_size, num_steps), got {shape}."
        )


class Seq2SeqEncoder(Encoder):
    """Embedding + multi-layer GRU. ``X (batch, steps)`` -> ``(outputs (steps, batch, hiddens),
    state (layers, batch, hiddens))``."""

    def __init__(
        self,
        vocab_size: int,
        embed_size: int,
        num_hiddens: int,
        num_layers: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size, num_hiddens, num_layers, dropout=dropout)

    def forward(self, X: torch.Tensor, *args):
        _check_batch_of_tokens(X, "The encoder input")
        embs = self.embedding(X.T)  # (steps, batch, embed): time first for the GRU
        outputs, state = self.rnn(embs)
        return outputs, state


class Seq2SeqDecoder(Decoder):
    """Embedding + multi-layer GRU + linear output, conditioned on the encoder's final output.

    The state is ``(enc_outputs, hidden)``: the GRU starts from the encoder's final hidden state,
    and at every step its input is the token embedding concatenated with the context, the
    encoder's top-layer output at its last step.
    ``X (batch, steps)`` -> logits ``(batch, steps, vocab)``.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_size: int,
        num_hiddens: int,
        num_layers: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size + num_hiddens, num_hiddens, num_layers, dropout=dropout)
        self.dense = nn.Linear(num_hiddens, vocab_size)

    def init_state(self, enc_all_outputs, *args):
        return enc_all_outputs

    def forward(self, X: torch.Tensor, state):
        _check_batch_of_tokens(X, "The decoder input")
        enc_outputs, hidden = state
        embs = self.embedding(X.T)  # (steps, batch, embed)
        context = enc_outputs[-1].expand(embs.shape[0], -1, -1)  # (steps, batch, hiddens)
        outputs, hidden = self.rnn(torch.cat((embs, context), dim=-1), hidden)
        return self.dense(outputs).swapaxes(0, 1), (enc_outputs, hidden)


def init_seq2seq(module: nn.Module) -> None:
    """Xavier-uniform initialisation of linear and GRU weights (use with ``net.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
    if isinstance(module, nn.GRU):
        for name, param in module.named_parameters():
            if "weight" in name:
                nn.init.xavier_uniform_(param)


# ---------------------------------------------------------------------------------------------
# Training and prediction
# ---------------------------------------------------------------------------------------------


@dataclass
class Seq2SeqHistory:
    """Per-epoch metrics of a sequence-to-sequence training run (loss per target token)."""

    loss: list[float] = field(default_factory=list)
    tokens_per_sec: list[float] = field(default_factory=list)
    device: str = ""

    def __str__(self) -> str:
        if not self.loss:
            return "Seq2SeqHistory(no epochs)"
        return (
            f"loss {self.loss[-1]:.3f}, {sum(self.tokens_per_sec) / len(self.tokens_per_sec):.0f} "
            f"tokens/sec on {self.device}"
        )



def teacher_forcing_inputs(Y: torch.Tensor, bos: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: ``<bos>``, then the target without its last token."""
    _check_batch_of_tokens(Y, "The target")
    start = torch.full((Y.shape[0], 1), bos, dtype=Y.dtype, device=Y.device)
    return torch.cat([start, Y[:, :-1]], dim=1)


def train_seq2seq(
    net: EncoderDecoder,
    data_iter: Iterable,
    num_epochs: int,
    tgt_vocab: Vocab,
    lr: float = 0.005,
    device: torch.device | None = None,
    optimizer=None,
    theta: float = 1.0,
    plot: bool = True,
    progress: bool = True,
) -> Seq2SeqHistory:
    """Train an encoder-decoder with teacher forcing and the masked cross-entropy.

    ``optimizer`` defaults to Adam with learning rate ``lr``. The weights are *not* initialised
    here (see :func:`init_seq2seq`). The reported loss is the mean cross-entropy per valid
    target token.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}.")
    device = device or device_of(net)
    net.to(device)
    optimizer = optimizer or torch.optim.Adam(net.parameters(), lr=lr)
    loss = MaskedSoftmaxCELoss()
    history = Seq2SeqHistory(device=str(device))
    live = LivePlot(xlabel="epoch", ylabel="loss", xlim=[1, num_epochs]) if plot else None
    bar = progress_bar(num_epochs, unit="epoch") if progress else None
    for epoch in range(num_epochs):
        net.train()
        timer, metric = Timer(), Accumulator(2)  # sum of token losses, number of valid tokens
        for X, X_valid_len, Y, Y_valid_len in data_iter:
            X, X_valid_len, Y, Y_valid_len = (
                t.to(device) for t in (X, X_valid_len, Y, Y_valid_len)
            )
            dec_input = teacher_forcing_inputs(Y, tgt_vocab["<bos>"])
            Y_hat, _ = net(X, dec_input, X_valid_len)
            l = loss(Y_hat, Y, Y_valid_len)  # (batch,)
            optimizer.zero_grad()
            l.sum().backward()
            grad_clipping(net, theta)
            optimizer.step()
            metric.add(l.detach().sum() * Y.shape[1], Y_valid_len.sum())
        history.loss.append(metric[0] / metric[1])
        history.tokens_per_sec.append(metric[1] / timer.stop())
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
        if live is not None:
            live.add(epoch + 1, {"train loss": history.loss[-1]})
    if bar is not None:
        bar.close()
    if live is not None:
        live.finish()
    print(history)
    return history


@torch.no_grad()
def predict_seq2seq(
    net: EncoderDecoder,
    src_sentence: str,
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    num_steps: int,
    device: torch.device | None = None,
    save_attention_weights: bool = False,
) -> tuple[str, list]:
    """Greedy translation of one sentence: ``(translation, attention weights per step)``.

    The sentence is preprocessed like the training data; decoding stops at ``<eos>`` or after
    ``num_steps`` tokens. Attention weights are collected from ``net.decoder.attention_weights``
    when ``save_attention_weights`` is set (decoders with attention).
    """
    device = device or device_of(net)
    was_training = net.training
    net.eval()
    src_tokens = src_vocab[preprocess_nmt(src_sentence).split()] + [src_vocab["<eos>"]]
    enc_valid_len = torch.tensor([min(len(src_tokens), num_steps)], device=device)
    enc_X = torch.tensor([truncate_pad(src_tokens, num_steps, src_vocab["<pad>"])], device=device)
    dec_state = net.decoder.init_state(net.encoder(enc_X, enc_valid_len), enc_valid_len)
    dec_X = torch.tensor([[tgt_vocab["<bos>"]]], device=device)  # (1, 1)
    output_seq, attention_weight_seq = [], []
    for _ in range(num_steps):
        Y, dec_state = net.decoder(dec_X, dec_state)
        dec_X = Y.argmax(dim=2)  # the prediction is the next input
        pred = int(dec_X.reshape(()))
        if save_attention_weights:
            attention_weight_seq.append(net.decoder.attention_weights)
        if pred == tgt_vocab["<eos>"]:
            break
        output_seq.append(pred)
    net.train(was_training)
    return " ".join(tgt_vocab.to_tokens(output_seq)), attention_weight_seq


def bleu(pred_seq: str | Sequence[str], label_seq: str | Sequence[str], k: int) -> float:
    """BLEU of a prediction against one reference, with n-grams up to ``k``.

    ``exp(min(0, 1 - len_label / len_pred)) * prod_{n=1..k} p_n ** (1 / 2**n)`` where ``p_n`` is
    the clipped n-gram precision. Strings are split on spaces. An n-gram order the prediction is
    too short to have counts as precision 0, so the score is 0; an empty prediction scores 0.
    """
    pred = pred_seq.split() if isinstance(pred_seq, str) else list(pred_seq)
    label = label_seq.split() if isinstance(label_seq, str) else list(label_seq)
    k = check_int("k (the largest n-gram order)", k, minimum=1)
    if not label:
        raise ValueError("The reference (label) sequence is empty: BLEU is not defined.")
    if len(pred) < k:
        return 0.0
    score = math.exp(min(0.0, 1 - len(label) / len(pred)))
    for n in range(1, k + 1):
        label_ngrams = collections.Counter(
            tuple(label[i : i + n]) for i in range(len(label) - n + 1)
        )
        matches = 0
        for i in range(len(pred) - n + 1):
            gram = tuple(pred[i : i + n])
            if label_ngrams[gram] > 0:
                matches += 1
                label_ngrams[gram] -= 1
        score *= (matches / (len(pred) - n + 1)) ** (0.5**n)
    return score
