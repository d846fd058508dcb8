"""Attention: masked softmax, attention scoring, multi-head attention, positional encoding, heatmaps.

Introduced in ``chapter_attention-mechanisms`` (``attention-cues``, ``attention-scoring-functions``,
``multihead-attention``, ``self-attention-and-positional-encoding``); the Transformer and the
vision Transformer notebooks reuse them.

Shapes used throughout: queries ``(batch, num_queries, query_size)``, keys
``(batch, num_kv, key_size)``, values ``(batch, num_kv, value_size)``. Valid lengths are either
``None`` (attend to every key), ``(batch,)`` (one length per example, shared by its queries) or
``(batch, num_queries)`` (one length per query, e.g. the causal mask of a decoder). Only the first
``valid_len`` keys of a row get non-zero attention weight.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .checks import check_float_tensor


def mask_value(dtype: torch.dtype) -> float:
    """The score that masked positions get: the most negative finite value of ``dtype``.

    Its exponential after softmax's max subtraction is exactly 0, and it stays finite in every
    floating dtype (d2l's -1e6 is -inf in float16, which turns a fully masked row into NaN).
    """
    return torch.finfo(dtype).min


def _check_valid_lens(valid_lens: torch.Tensor, batch: int, num_queries: int, num_keys: int) -> torch.Tensor:
    valid_lens = torch.as_tensor(valid_lens)
    if valid_lens.is_floating_point() or valid_lens.is_complex() or valid_lens.dtype == torch.bool:
        raise ValueError(f"valid_lens must hold integers, got dtype {valid_lens.dtype}.")
    if valid_lens.shape not in {(batch,), (batch, num_queries)}:
        raise ValueError(f"valid_lens must have shape ({batch},) or ({batch}, {num_queries}) "
                         f"(batch,) or (batch, num_queries), got {tuple(valid_lens.shape)}.")
    if valid_lens.numel() and (int(valid_lens.min()) < 0 or int(valid_lens.max()) > num_keys):
        raise ValueError(f"valid lengths must lie in [0, {num_keys}] (the number of keys), got "
                         f"{int(valid_lens.min())} to {int(valid_lens.max())}.")
    return valid_lens


def valid_lens_to_mask(valid_lens: torch.Tensor | None, num_queries: int, num_keys: int,
                       batch: int | None = None) -> torch.Tensor | None:
    """Boolean mask ``(batch, num_queries, num_keys)``: True where a query may attend to a key.

    This is the ``attn_mask`` convention of ``torch.nn.functional.scaled_dot_product_attention``.
    ``None`` gives ``None`` (no mask).
    """
    if valid_lens is None:
        return None
    valid_lens = torch.as_tensor(valid_lens)
    batch = valid_lens.shape[0] if batch is None else batch
    valid_lens = _check_valid_lens(valid_lens, batch, num_queries, num_keys)
    if valid_lens.ndim == 1:
        valid_lens = valid_lens[:, None].expand(-1, num_queries)
    keys = torch.arange(num_keys, device=valid_lens.device)
    return keys[None, None, :] < valid_lens[:, :, None]


def masked_softmax(X: torch.Tensor, valid_lens: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis of ``X`` ``(batch, num_queries, num_keys)``, keeping only the
    first ``valid_lens`` keys of each row (the others get weight exactly 0).

    ``valid_lens``: ``None``, ``(batch,)`` or ``(batch, num_queries)``, integers in
    ``[0, num_keys]``. A row with valid length 0 has no key to attend to; it gets uniform weights
    (every score is replaced by the same large negative value).
    """
    if not isinstance(X, torch.Tensor) or X.ndim != 3:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X must be scores of shape (batch, num_queries, num_keys), got {shape}.")
    check_float_tensor("X", X, "scores (batch, num_queries, num_keys)")
    if valid_lens is None:
        return nn.functional.softmax(X, dim=-1)
    mask = valid_lens_to_mask(torch.as_tensor(valid_lens, device=X.device), X.shape[1], X.shape[2], X.shape[0])
    return nn.functional.softmax(X.masked_fill(~mask, mask_value(X.dtype)), dim=-1)


def _check_qkv(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, same_qk_size: bool) -> None:
    for name, t in (("queries", queries), ("keys", keys), ("values", values)):
        if not isinstance(t, torch.Tensor) or t.ndim != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have shape (batch, n, features), got {shape}.")
    if not queries.shape[0] == keys.shape[0] == values.shape[0]:
        raise ValueError(f"queries, keys and values must have the same batch size, got "
                         f"{queries.shape[0]}, {keys.shape[0]}, {values.shape[0]}.")
    if keys.shape[1] != values.shape[1]:
        raise ValueError(f"keys and values must come in pairs: {keys.shape[1]} keys but {values.shape[1]} values.")
    if same_qk_size and queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"dot-product attention needs queries and keys of the same size, got "
                         f"{queries.shape[-1]} and {keys.shape[-1]}.")


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau) attention: score ``w_v^T tanh(W_q q + W_k k)``.

    ``forward(queries (b, n_q, query_size), keys (b, n_kv, key_size), values (b, n_kv, v),
    valid_lens)`` -> ``(b, n_q, v)``; the weights ``(b, n_q, n_kv)`` are kept in
    ``self.attention_weights``.
    """

    def __init__(self, query_size: int, key_size: int, num_hiddens: int, dropout: float = 0.0):
        super().__init__()
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries, keys, values, valid_lens=None):
        _check_qkv(queries, keys, values, same_qk_size=False)
        queries, keys = self.W_q(queries), self.W_k(keys)
        # (b, n_q, 1, h) + (b, 1, n_kv, h) broadcasts to (b, n_q, n_kv, h)
        features = torch.tanh(queries.unsqueeze(2) + keys.unsqueeze(1))
        scores = self.w_v(features).squeeze(-1)  # (b, n_q, n_kv)
        self.attention_weights = masked_softmax(scores, valid_lens)
        return torch.bmm(self.dropout(self.attention_weights), values)


class DotProductAttention(nn.Module):
    """Scaled dot-product attention: ``softmax(Q K^T / sqrt(d)) V`` with masking and dropout.

    Queries and keys share the size ``d``. Shapes as in :class:`AdditiveAttention`; the weights
    are kept in ``self.attention_weights``.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries, keys, values, valid_lens=None):
        _check_qkv(queries, keys, values, same_qk_size=True)
        d = queries.shape[-1]
        scores = torch.bmm(queries, keys.transpose(1, 2)) / math.sqrt(d)  # (b, n_q, n_kv)
        self.attention_weights = masked_softmax(scores, valid_lens)
        return torch.bmm(self.dropout(self.attention_weights), values)


class MultiHeadAttention(nn.Module):
    """Multi-head attention built on :class:`DotProductAttention`.

    Queries, keys and values are projected to ``num_hiddens`` features (``W_q``, ``W_k``,
    ``W_v``), split into ``num_heads`` heads of ``num_hiddens / num_heads`` features, attended
    in parallel, concatenated and projected by ``W_o``. ``forward(queries (b, n_q, query_size),
    keys (b, n_kv, key_size), values (b, n_kv, value_size), valid_lens)`` -> ``(b, n_q, num_hiddens)``.
    The per-head weights ``(b * num_heads, n_q, n_kv)`` are in ``self.attention.attention_weights``.
    Sizes default to ``num_hiddens`` (self-attention).
    """

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float = 0.0, bias: bool = False,
                 query_size: int | None = None, key_size: int | None = None, value_size: int | None = None):
        super().__init__()
        if num_heads < 1 or num_hiddens % num_heads:
            raise ValueError(f"num_hiddens ({num_hiddens}) must be a multiple of num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.attention = DotProductAttention(dropout)
        self.W_q = nn.Linear(query_size or num_hiddens, num_hiddens, bias=bias)
        self.W_k = nn.Linear(key_size or num_hiddens, num_hiddens, bias=bias)
        self.W_v = nn.Linear(value_size or num_hiddens, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)

    def transpose_qkv(self, X: torch.Tensor) -> torch.Tensor:
        """``(b, n, num_hiddens)`` -> ``(b * num_heads, n, num_hiddens / num_heads)``."""
        X = X.reshape(X.shape[0], X.shape[1], self.num_heads, -1).permute(0, 2, 1, 3)
        return X.reshape(-1, X.shape[2], X.shape[3])

    def transpose_output(self, X: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`transpose_qkv`."""
        X = X.reshape(-1, self.num_heads, X.shape[1], X.shape[2]).permute(0, 2, 1, 3)
        return X.reshape(X.shape[0], X.shape[1], -1)

    def forward(self, queries, keys, values, valid_lens=None):
        _check_qkv(queries, keys, values, same_qk_size=False)
        if valid_lens is not None:
            valid_lens = _check_valid_lens(torch.as_tensor(valid_lens, device=queries.device),
                                           queries.shape[0], queries.shape[1], keys.shape[1])
            # every head of example i uses example i's lengths
            valid_lens = torch.repeat_interleave(valid_lens, repeats=self.num_heads, dim=0)
        queries = self.transpose_qkv(self.W_q(queries))
        keys = self.transpose_qkv(self.W_k(keys))
        values = self.transpose_qkv(self.W_v(values))
        output = self.attention(queries, keys, values, valid_lens)  # (b * heads, n_q, h / heads)
        return self.W_o(self.transpose_output(output))


class PositionalEncoding(nn.Module):
    """Adds sinusoidal position encodings to ``X`` ``(batch, num_steps, num_hiddens)``, then dropout.

    ``P[i, 2j] = sin(i / 10000^(2j/d))`` and ``P[i, 2j+1] = cos(i / 10000^(2j/d))``; the table
    ``P`` ``(1, max_len, num_hiddens)`` is a buffer (moves with the module, not trained).
    """

    def __init__(self, num_hiddens: int, dropout: float = 0.0, max_len: int = 1000):
        super().__init__()
        if num_hiddens < 2 or num_hiddens % 2:
            raise ValueError(f"num_hiddens must be a positive even number, got {num_hiddens}.")
        self.dropout = nn.Dropout(dropout)
        pos = torch.arange(max_len, dtype=torch.float32).reshape(-1, 1)
        freq = torch.pow(10000, torch.arange(0, num_hiddens, 2, dtype=torch.float32) / num_hiddens)
        P = torch.zeros((1, max_len, num_hiddens))
        P[:, :, 0::2] = torch.sin(pos / freq)
        P[:, :, 1::2] = torch.cos(pos / freq)
        self.register_buffer("P", P, persistent=False)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``offset``: position of ``X``'s first step (for step-by-step decoding with a cache)."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}.")
        if X.ndim != 3 or X.shape[-1] != self.P.shape[-1]:
            raise ValueError(f"X must have shape (batch, num_steps, {self.P.shape[-1]}), got {tuple(X.shape)}.")
        if offset + X.shape[1] > self.P.shape[1]:
            raise ValueError(f"The sequence reaches position {offset + X.shape[1]}, beyond max_len={self.P.shape[1]}.")
        return self.dropout(X + self.P[:, offset:offset + X.shape[1], :].to(X.dtype))


def show_heatmaps(matrices, xlabel: str, ylabel: str, titles: Sequence[str] | None = None,
                  figsize: tuple[float, float] = (2.5, 2.5), cmap: str = "Reds"):
    """A grid of heatmaps with one shared colour bar; returns the axes ``(rows, cols)``.

    ``matrices`` has shape ``(num_rows, num_cols, num_queries, num_keys)`` (tensor or array),
    e.g. attention weights for several heads (columns) of several layers (rows).
    """
    import matplotlib.pyplot as plt

    if isinstance(matrices, torch.Tensor):
        matrices = matrices.detach().cpu()
    matrices = torch.as_tensor(matrices)
    if matrices.ndim != 4:
        raise ValueError(f"matrices must have shape (num_rows, num_cols, num_queries, num_keys), "
                         f"got {tuple(matrices.shape)}.")
    num_rows, num_cols = matrices.shape[:2]
    vmin, vmax = float(matrices.min()), float(matrices.max())  # one colour scale for all panels
    if titles is not None and len(titles) != num_cols:
        raise ValueError(f"Got {len(titles)} titles for {num_cols} columns.")
    fig, axes = plt.subplots(num_rows, num_cols, figsize=(figsize[0] * num_cols, figsize[1] * num_rows),
                             sharex=True, sharey=True, squeeze=False)
    for i in range(num_rows):
        for j in range(num_cols):
            ax = axes[i, j]
            pcm = ax.imshow(matrices[i, j].numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
            if i == num_rows - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            if titles is not None and i == 0:
                ax.set_title(titles[j])
    fig.colorbar(pcm, ax=axes, shrink=0.6)
    return axes
