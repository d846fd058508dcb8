"""Recurrent language models: the model wrappers, gradient clipping, prediction and training.

Introduced in the notebooks ``rnn-scratch`` and ``rnn-concise``; the GRU, LSTM, deep and
bidirectional notebooks reuse them.

A language model here is any callable ``net(X, state) -> (logits, state)`` with a method
``begin_state(batch_size, device)``:

* ``X``: token indices of shape ``(batch_size, num_steps)``;
* ``logits``: ``(num_steps, batch_size, vocab_size)`` (time first, like ``nn.RNN``);
* ``state``: a tensor, or a tuple of tensors (LSTM), carried from one call to the next.

:class:`RNNModelScratch` (plain tensors) and :class:`RNNModel` (an ``nn.RNN``/``nn.GRU``/``nn.LSTM``
layer) both follow it, so :func:`train_lm` and :func:`predict` work with either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .config import device as default_device
from .plot import LivePlot
from .train import Accumulator, Timer, progress_bar

State = torch.Tensor | tuple[torch.Tensor, ...]


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class RNNModelScratch:
    """A recurrent language model built from plain tensors.

    ``get_params(vocab_size, num_hiddens, device)`` returns the list of parameter tensors,
    ``init_state(batch_size, num_hiddens, device)`` the initial state (a tuple of tensors), and
    ``forward_fn(inputs, state, params)`` maps one-hot ``inputs`` of shape
    ``(num_steps, batch_size, vocab_size)`` to ``(logits, state)`` with logits of shape
    ``(num_steps, batch_size, vocab_size)``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_hiddens: int,
        device: torch.device | str,
        get_params: Callable,
        init_state: Callable,
        forward_fn: Callable,
    ):
        if vocab_size < 1 or num_hiddens < 1:
            raise ValueError(
                f"vocab_size and num_hiddens must be positive, got {vocab_size} and {num_hiddens}."
            )
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.params: list[torch.Tensor] = get_params(vocab_size, num_hiddens, device)
        self.init_state, self.forward_fn = init_state, forward_fn

    def __call__(self, X: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        _check_tokens(X, self.vocab_size)
        inputs = F.one_hot(X.T, self.vocab_size).to(
            self.params[0].dtype
        )  # (num_steps, batch, vocab)
        return self.forward_fn(inputs, state, self.params)

    def begin_state(self, batch_size: int, device: torch.device | str) -> State:
        return self.init_state(batch_size, self.num_hiddens, device)


class RNNModel(nn.Module):
    """A language model around a PyTorch recurrent layer: one-hot inputs -> ``rnn_layer`` -> linear.

    ``rnn_layer`` is an ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` (time-first, any number of layers,
    uni- or bidirectional) whose ``input_size`` is ``vocab_size``.
    """

    def __init__(self, rnn_layer: nn.RNNBase, vocab_size: int):
        super().__init__()
        if getattr(rnn_layer, "batch_first", False):
            raise ValueError("RNNModel expects a time-first recurrent layer (batch_first=False).")
        if rnn_layer.input_size != vocab_size:
            raise ValueError(
                f"rnn_layer.input_size is {rnn_layer.input_size} but the inputs are one-hot "
                f"vectors of size vocab_size={vocab_size}."
            )
        self.rnn, self.vocab_size = rnn_layer, vocab_size
        self.num_directions = 2 if rnn_layer.bidirectional else 1
        self.linear = nn.Linear(rnn_layer.hidden_size * self.num_directions, vocab_size)

    def forward(self, X: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        _check_tokens(X, self.vocab_size)
        inputs = F.one_hot(X.T, self.vocab_size).to(self.linear.weight.dtype)
        Y, state = self.rnn(inputs, state)  # Y: (num_steps, batch, directions * hiddens)
        return self.linear(Y), state

    def begin_state(self, batch_size: int, device: torch.device | str) -> State:
        shape = (self.num_directions * self.rnn.num_layers, batch_size, self.rnn.hidden_size)
        zeros = torch.zeros(shape, device=device)
        return (zeros, torch.zeros_like(zeros)) if isinstance(self.rnn, nn.LSTM) else zeros


def _check_tokens(X: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(X, torch.Tensor) or X.ndim != 2:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(
            f"The inputs must be token indices of shape (batch_size, num_steps), got {shape}."
        )
    if X.is_floating_point():
        raise ValueError("The inputs must be integer token indices, not floats.")


# ---------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------


def parameters_of(net) -> list[torch.Tensor]:
    """The trainable tensors of a module, a scratch model (``.params``) or a list of tensors."""
    if isinstance(net, nn.Module):
        return [p for p in net.parameters() if p.requires_grad]
    if hasattr(net, "params"):
        return list(net.params)
    params = list(net)
    if not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError("Expected an nn.Module, an object with .params, or an iterable of tensors.")
    return params


def grad_clipping(net, theta: float) -> torch.Tensor:
    """Rescale all gradients together so that their joint L2 norm is at most ``theta``.

    ``g <- min(1, theta / ||g||) g``, with ``||g||`` over all parameters at once. Returns the
    norm before clipping (a 0-d tensor). Parameters without a gradient are skipped.
    """
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta}.")
    grads = [p.grad for p in parameters_of(net) if p.grad is not None]
    if not grads:
        raise ValueError("No parameter has a gradient: call backward() before clipping.")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(theta / (norm + 1e-12), max=1.0)  # stays on the device: no sync per step
    for g in grads:
        g.mul_(scale)
    return norm


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------



def _device_of(net) -> torch.device:
    """The device of a model's parameters (modules and from-scratch models alike)."""
    params = parameters_of(net)
    return params[0].device if params else default_device()


@torch.no_grad()
def predict(prefix: str, num_preds: int, net, vocab, device: torch.device | None = None) -> str:
    """Continue ``prefix`` by ``num_preds`` tokens, always taking the most likely next token.

    The prefix first *warms up* the hidden state (its outputs are ignored, the known next token
    is fed instead); then each prediction is fed back as the next input. Character-level: the
    prefix is split into characters and the result joined without separators.
    """
    if not prefix:
        raise ValueError("The prefix must hold at least one token to start from.")
    if num_preds < 0:
        raise ValueError(f"num_preds must be >= 0, got {num_preds}.")
    device = device or _device_of(net)
    was_training = getattr(net, "training", False)
    if isinstance(net, nn.Module):
        net.eval()
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]
    last = lambda: torch.tensor([[outputs[-1]]], device=device)  # (1, 1): batch 1, one step
    for ch in prefix[1:]:  # warm-up
        _, state = net(last(), state)
        outputs.append(vocab[ch])
    for _ in range(num_preds):
        y, state = net(last(), state)
        outputs.append(int(y.argmax(dim=-1).reshape(1)))
    if isinstance(net, nn.Module):
        net.train(was_training)
    return "".join(vocab.to_tokens(outputs))


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class LMHistory:
    """Per-epoch metrics of a language-model training run."""

    perplexity: list[float] = field(default_factory=list)
    tokens_per_sec: list[float] = field(default_factory=list)
    device: str = ""

    def __str__(self) -> str:
        if not self.perplexity:
            return "LMHistory(no epochs)"
        return (
            f"perplexity {self.perplexity[-1]:.2f}, "
            f"{sum(self.tokens_per_sec) / len(self.tokens_per_sec):.0f} tokens/sec on {self.device}"
        )


def detach_state(state: State) -> State:
    """Cut the graph behind the state (truncated backpropagation through time)."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def train_epoch_lm(
    net,
    train_iter: Iterable,
    loss: Callable,
    optimizer,
    device: torch.device,
    use_random_iter: bool = False,
    theta: float = 1.0,
) -> tuple[float, float]:
    """One epoch of language-model training: ``(perplexity, tokens per second)``.

    With sequential minibatches the state is carried over (detached) from one minibatch to the
    next; with random ones it starts from zeros every minibatch.
    """
    state, timer = None, Timer()
    metric = Accumulator(2)  # sum of losses, number of tokens
    for X, Y in train_iter:
        X, Y = X.to(device), Y.to(device)
        if state is None or use_random_iter:
            state = net.begin_state(batch_size=X.shape[0], device=device)
        else:
            state = detach_state(state)
        y_hat, state = net(X, state)  # (num_steps, batch, vocab)
        l = loss(y_hat.reshape(-1, y_hat.shape[-1]), Y.T.reshape(-1))  # targets time-first too
        optimizer.zero_grad()
        l.backward()
        grad_clipping(net, theta)
        optimizer.step()
        metric.add(l.detach() * Y.numel(), Y.numel())
    if metric[1] == 0:
        raise ValueError("The data iterator gave no minibatch: the corpus is too short.")
    return math.exp(metric[0] / metric[1]), metric[1] / timer.stop()


def train_lm(
    net,
    train_iter: Iterable,
    vocab,
    num_epochs: int,
    optimizer,
    device: torch.device | None = None,
    use_random_iter: bool = False,
    theta: float = 1.0,
    prefix: str = "time traveller",
    plot: bool = True,
    progress: bool = True,
) -> LMHistory:
    """Train a language model with cross-entropy, gradient clipping and ``optimizer``.

    ``net`` follows the interface of this module (e.g. :class:`RNNModelScratch` or
    :class:`RNNModel`); ``optimizer`` is anything with ``zero_grad()`` and ``step()``. Returns
    the per-epoch :class:`LMHistory` (perplexity and tokens/s), plots the perplexity, and
    prints a prediction from ``prefix`` at the end.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}.")
    device = device or _device_of(net)
    if isinstance(net, nn.Module):
        net.to(device)
        net.train()
    loss = nn.CrossEntropyLoss()
    history = LMHistory(device=str(device))
    live = LivePlot(xlabel="epoch", ylabel="perplexity", xlim=[1, num_epochs]) if plot else None
    bar = progress_bar(num_epochs, unit="epoch") if progress else None
    for epoch in range(num_epochs):
        ppl, speed = train_epoch_lm(
            net, train_iter, loss, optimizer, device, use_random_iter, theta
        )
        history.perplexity.append(ppl)
        history.tokens_per_sec.append(speed)
        if bar is not None:
            bar.update()
            bar.set_postfix(perplexity=f"{ppl:.2f}")
        if live is not None:
            live.add(epoch + 1, {"train": ppl})
    if bar is not None:
        bar.close()
    if live is not None:
        live.finish()
    print(history)
    if prefix:
        print(repr(predict(prefix, 50, net, vocab, device)))
    return history
