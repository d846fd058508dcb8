"""Experiment helpers of the optimisation chapter.

* 2-D toy problems: :func:`f_2d` (the ill-conditioned quadratic the chapter keeps returning to),
  :func:`train_2d` / :func:`train_2d_optimizer` (trajectories of an update rule or an optimizer)
  and :func:`show_trace_2d` (the trajectory over the contours of the function).
* The airfoil self-noise regression: :func:`read_airfoil` / :func:`load_airfoil` (standardised,
  first 1500 rows as in d2l), :func:`train_airfoil` (linear regression with any optimizer,
  returning loss against time and epochs), :func:`least_squares_loss` (the best loss a linear
  model can reach) and :func:`plot_histories`.
* Checking from-scratch optimizers: :class:`ScratchOptimizer` (the base class of the chapter's
  from-scratch optimizers) and :func:`airfoil_trajectory` (the parameters after every step of a
  small fixed problem, to compare an optimizer with its ``torch.optim`` counterpart).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from . import data as course_data
from .train import Timer

__all__ = [
    "AirfoilHistory", "ScratchOptimizer", "airfoil_trajectory", "check_hyperparameter",
    "evaluate_loss", "f_2d", "least_squares_loss", "load_airfoil", "plot_histories", "read_airfoil",
    "show_trace_2d", "squared_loss", "train_2d", "train_2d_optimizer", "train_airfoil",
]

# ---------------------------------------------------------------------------------------------
# 2-D toy problems
# ---------------------------------------------------------------------------------------------


def f_2d(x1, x2):
    """The ill-conditioned quadratic :math:`f(\\mathbf{x}) = 0.1 x_1^2 + 2 x_2^2` (elementwise)."""
    return 0.1 * x1 ** 2 + 2 * x2 ** 2


def _start_point(x0: Sequence[float]) -> torch.Tensor:
    x = torch.as_tensor(x0, dtype=torch.float64).detach().clone()
    if x.shape != (2,):
        raise ValueError(f"x0 must hold two numbers (x1, x2), got shape {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"x0 must be finite, got {x.tolist()}.")
    return x


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")


def _gradient(f: Callable, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    value = f(x[0], x[1])
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError("f(x1, x2) must return a scalar tensor for scalar tensors x1, x2.")
    (grad,) = torch.autograd.grad(value, x)
    return grad


def train_2d(update: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             x0: Sequence[float] = (-5.0, -2.0), steps: int = 20,
             f: Callable = f_2d) -> torch.Tensor:
    """Run an update rule on a function of two variables; return the trajectory ``(steps + 1, 2)``.

    ``update(x, g)`` receives the current point ``x`` and the gradient ``g`` of ``f`` there (both
    float64 tensors of shape (2,), gradient by autograd) and returns the next point. A method with
    state (momentum, running averages) keeps it in a closure or an object with ``__call__``.
    """
    _check_steps(steps)
    if not callable(update):
        raise TypeError(f"update must be a function (x, g) -> next x, got {type(update).__name__}.")
    x = _start_point(x0)
    trace = [x]
    for _ in range(steps):
        new = torch.as_tensor(update(x, _gradient(f, x)), dtype=torch.float64).detach()
        if new.shape != (2,):
            raise ValueError(f"update must return a point of shape (2,), got {tuple(new.shape)}.")
        x = new.clone()
        trace.append(x)
    result = torch.stack(trace)
    print(f"step {steps}, x1: {result[-1, 0].item():f}, x2: {result[-1, 1].item():f}")
    return result


def train_2d_optimizer(make_optimizer: Callable[[list[torch.Tensor]], object],
                       x0: Sequence[float] = (-5.0, -2.0), steps: int = 20,
                       f: Callable = f_2d) -> torch.Tensor:
    """Like :func:`train_2d`, but moved by an optimizer: ``make_optimizer([x])`` builds it for the
    parameter ``x`` (shape (2,), float64); anything with ``zero_grad()`` and ``step()`` works."""
    _check_steps(steps)
    x = _start_point(x0).requires_grad_(True)
    optimizer = make_optimizer([x])
    if not (hasattr(optimizer, "step") and hasattr(optimizer, "zero_grad")):
        raise TypeError("make_optimizer must return an object with step() and zero_grad().")
    trace = [x.detach().clone()]
    for _ in range(steps):
        optimizer.zero_grad()
        f(x[0], x[1]).backward()
        optimizer.step()
        trace.append(x.detach().clone())
    result = torch.stack(trace)
    print(f"step {steps}, x1: {result[-1, 0].item():f}, x2: {result[-1, 1].item():f}")
    return result


def show_trace_2d(f: Callable, trace, axes=None, title: str | None = None, grid_step: float = 0.1,
                  margin: float = 1.0):
    """Draw the contours of ``f`` and the trajectory ``trace`` (a (T, 2) tensor, array or list of
    pairs) on top, in orange. Returns the matplotlib axes."""
    import matplotlib.pyplot as plt

    points = torch.as_tensor(trace, dtype=torch.float64).detach().cpu()
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError("trace must be a non-empty list of (x1, x2) points, "
                         f"got shape {tuple(points.shape)}.")
    if not torch.isfinite(points).all():
        raise ValueError("trace holds inf or nan: the method diverged; plot fewer steps.")
    if axes is None:
        axes = plt.figure(figsize=(3.5, 2.5)).gca()
    low = points.min(dim=0).values.clamp(max=0) - margin
    high = points.max(dim=0).values.clamp(min=0) + margin
    axis = lambda i: torch.arange(low[i].item(), high[i].item(), grid_step, dtype=torch.float64)
    x1, x2 = torch.meshgrid(axis(0), axis(1), indexing="ij")
    axes.contour(x1.numpy(), x2.numpy(), f(x1, x2).numpy(), colors="#1f77b4")
    axes.plot(points[:, 0].numpy(), points[:, 1].numpy(), "-o", color="#ff7f0e", markersize=3)
    axes.set_xlabel("x1")
    axes.set_ylabel("x2")
    if title:
        axes.set_title(title, fontsize=9)
    return axes


# ---------------------------------------------------------------------------------------------
# The airfoil self-noise data
# ---------------------------------------------------------------------------------------------

def read_airfoil(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All 1503 rows of the NASA airfoil self-noise data, each of the 6 columns standardised to
    mean 0 and (population) standard deviation 1. The last column is the target (sound level)."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}.")
    lines = course_data.read_text("airfoil").splitlines()
    rows = [[float(v) for v in line.split("\t")] for line in lines if line.strip()]
    table = torch.tensor(rows, dtype=torch.float64)  # (1503, 6)
    table = (table - table.mean(dim=0)) / table.std(dim=0, unbiased=False)
    return table.to(dtype)


def load_airfoil(batch_size: int = 10, n: int = 1500, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, shuffle: bool = True
                 ) -> tuple[course_data.TensorLoader, int]:
    """Minibatches ``(X (b, 5), y (b,))`` of the first ``n`` standardised airfoil rows, and the
    number of features (5). Standardisation uses all rows, as in d2l."""
    table = read_airfoil(dtype)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(table):
        raise ValueError(f"n must be an integer between 1 and {len(table)}, got {n!r}.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    table = table[:n].to(device if device is not None else "cpu")
    features, labels = table[:, :-1], table[:, -1]
    loader = course_data.TensorLoader(features, labels, batch_size=batch_size, shuffle=shuffle)
    return loader, features.shape[1]


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Half squared error per example, ``(y_hat - y)^2 / 2``, with ``y`` reshaped like ``y_hat``."""
    if y_hat.numel() != y.numel():
        raise ValueError(f"Predictions {tuple(y_hat.shape)} and targets {tuple(y.shape)} "
                         "differ in size.")
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


@torch.no_grad()
def evaluate_loss(net: Callable, data_iter: Iterable, loss: Callable = squared_loss) -> float:
    """Mean per-example loss of ``net`` over every batch of ``data_iter``."""
    total, count = 0.0, 0
    for X, y in data_iter:
        total += loss(net(X), y).sum().item()
        count += y.numel()
    if count == 0:
        raise ValueError("data_iter yielded no examples.")
    return total / count


@torch.no_grad()
def least_squares_loss(data_iter: Iterable) -> float:
    """The smallest mean half squared error a linear model ``Xw + b`` reaches on all the data of
    ``data_iter`` (solved exactly by least squares): the floor the optimizers approach."""
    batches = list(data_iter)
    if not batches:
        raise ValueError("data_iter yielded no examples.")
    # float64 on the CPU: MPS has no float64, and this runs once
    X = torch.cat([b[0] for b in batches]).cpu().double()
    y = torch.cat([b[1] for b in batches]).cpu().double().reshape(-1, 1)
    X1 = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    w = torch.linalg.lstsq(X1, y).solution
    return float(((X1 @ w - y) ** 2).mean() / 2)


@dataclass
class AirfoilHistory:
    """Loss of a training run on the airfoil data, recorded every ``record_every`` examples.

    ``losses[i]`` is the loss over all the data after ``epochs[i]`` epochs and ``times[i]`` seconds
    of training (evaluation time excluded); ``initial_loss`` is the loss before the first step.
    """

    initial_loss: float = math.nan
    epochs: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def final_loss(self) -> float:
        """Mean of the losses recorded during the last epoch (smooths out minibatch noise)."""
        if not self.losses:
            raise ValueError("The history has no recorded losses.")
        start = self.epochs[-1] - 1
        last = [loss for epoch, loss in zip(self.epochs, self.losses) if epoch > start]
        return sum(last) / len(last)

    def __str__(self) -> str:
        if not self.losses:
            return "AirfoilHistory(no records)"
        epochs = self.epochs[-1]
        return f"loss: {self.losses[-1]:.3f}, {self.times[-1] / epochs:.3f} sec/epoch"


def _check_optimizer(optimizer) -> None:
    if not (hasattr(optimizer, "step") and hasattr(optimizer, "zero_grad")):
        raise TypeError("make_optimizer must return an object with step() and zero_grad(), "
                        f"got {type(optimizer).__name__}.")


def train_airfoil(make_optimizer: Callable[[list[torch.Tensor]], object], data_iter,
                  num_epochs: int = 2, record_every: int = 200,
                  init_std: float = 0.01) -> AirfoilHistory:
    """Train linear regression ``y_hat = Xw + b`` on ``data_iter`` with the half squared loss.

    ``make_optimizer([w, b])`` builds the optimizer (a ``torch.optim`` one or a from-scratch one,
    anything with ``zero_grad()`` and ``step()``). ``w`` (d, 1) starts from N(0, init_std^2) drawn
    from the global RNG, ``b`` (1,) from 0. Every ``record_every`` examples the loss over all of
    ``data_iter`` is recorded with the elapsed training time and epoch.
    """
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}.")
    if not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}.")
    X0, _ = next(iter(data_iter))
    if X0.ndim != 2:
        raise ValueError(f"Batches of features must be (batch, features), got {tuple(X0.shape)}.")
    w = torch.normal(0.0, init_std, size=(X0.shape[1], 1)).to(X0).requires_grad_(True)
    b = torch.zeros(1, dtype=X0.dtype, device=X0.device, requires_grad=True)
    net = lambda X: X @ w + b
    optimizer = make_optimizer([w, b])
    _check_optimizer(optimizer)
    history = AirfoilHistory(initial_loss=evaluate_loss(net, data_iter))
    examples_per_epoch = sum(len(y) for _, y in data_iter)
    seen, recorded = 0, 0
    timer = Timer()
    for _ in range(num_epochs):
        for X, y in data_iter:
            optimizer.zero_grad()
            squared_loss(net(X), y).mean().backward()
            optimizer.step()
            seen += len(y)
            last = seen == num_epochs * examples_per_epoch
            if seen // record_every > recorded // record_every or last:  # a multiple, or done
                timer.stop()
                history.epochs.append(seen / examples_per_epoch)
                history.times.append(timer.sum())
                history.losses.append(evaluate_loss(net, data_iter))
                recorded = seen
                timer.start()
    print(history)
    return history


def plot_histories(histories: dict[str, AirfoilHistory], x: str = "epoch", axes=None, ylim=None):
    """Loss curves of several :class:`AirfoilHistory` runs against ``x="epoch"`` or ``x="time"``
    (seconds, log scale). Returns the matplotlib axes."""
    from . import plot

    if x not in ("epoch", "time"):
        raise ValueError(f"x must be 'epoch' or 'time', got {x!r}.")
    if not histories or any(not h.losses for h in histories.values()):
        raise ValueError("plot_histories needs at least one history, each with recorded losses.")
    xs = [h.epochs if x == "epoch" else h.times for h in histories.values()]
    ys = [h.losses for h in histories.values()]
    axes = plot.plot(xs, ys, xlabel="epoch" if x == "epoch" else "time (sec)", ylabel="loss",
                     legend=list(histories), xscale="linear" if x == "epoch" else "log",
                     ylim=ylim, fmts=("-", "m--", "g-.", "r:", "c-", "k--"), axes=axes)
    if x == "time":  # plain-number labels, at 1, 2, 5 x 10^k when the times span few decades
        from matplotlib import ticker

        times = [t for h in histories.values() for t in h.times if t > 0]
        decades = math.log10(max(times) / min(times)) if times else 0.0
        subs = (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
        axes.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    return axes


# ---------------------------------------------------------------------------------------------
# Checking from-scratch optimizers
# ---------------------------------------------------------------------------------------------

class ScratchOptimizer:
    """Base class of the chapter's from-scratch optimizers (the interface of ``torch.optim``).

    A subclass implements ``update(p, g, state)``: change the parameter ``p`` in place, given its
    gradient ``g`` and a dict ``state`` that belongs to this parameter (empty at the first step, so
    the subclass creates its buffers there). ``self.t`` is the number of the current step (1 at the
    first). Parameters whose gradient is None are skipped, like in ``torch.optim``.
    """

    def __init__(self, params: Iterable[torch.Tensor]):
        self.params = list(params)
        if not self.params:
            raise ValueError("The optimizer got an empty parameter list.")
        for i, p in enumerate(self.params):
            if not isinstance(p, torch.Tensor) or not p.requires_grad:
                raise ValueError(f"Parameter {i} is not a tensor that requires a gradient.")
        self.state: list[dict] = [{} for _ in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                self.update(p, p.grad, state)

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict) -> None:
        raise NotImplementedError("A ScratchOptimizer subclass must implement update(p, g, state).")


def check_hyperparameter(name: str, value: float, low: float = 0.0, high: float = math.inf,
                         include_low: bool = True) -> float:
    """Return ``value``; raise a clear ValueError unless ``low <= value < high``
    (``low < value`` when ``include_low`` is False)."""
    ok = (value >= low if include_low else value > low) and value < high
    if not ok or math.isnan(value):
        left = "[" if include_low else "("
        raise ValueError(f"{name} must be in {left}{low}, {high}), got {value!r}.")
    return value


def airfoil_trajectory(make_optimizer: Callable[[list[torch.Tensor]], object], steps: int = 100,
                       batch_size: int = 10, hidden: int | None = 8, seed: int = 0) -> torch.Tensor:
    """The parameters after every step of a small, fully deterministic float64 training run:
    returns ``(steps + 1, number of parameters)``, row 0 being the initialisation.

    The model is an MLP ``5 -> hidden (tanh) -> 1`` (linear regression if ``hidden`` is None)
    with the half squared loss on airfoil minibatches. Initialisation and batch order come from
    ``seed`` alone, so two optimizers that implement the same rule give the same trajectory.
    """
    _check_steps(steps)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 1500:
        raise ValueError(f"batch_size must be an integer between 1 and 1500, got {batch_size!r}.")
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"hidden must be a positive integer or None, got {hidden!r}.")
    gen = torch.Generator().manual_seed(seed)
    table = read_airfoil(torch.float64)[:1500]
    X, y = table[:, :-1], table[:, -1:]                                    # (1500, 5), (1500, 1)
    sizes = [X.shape[1], 1] if hidden is None else [X.shape[1], hidden, 1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        weight = torch.randn(fan_in, fan_out, generator=gen, dtype=torch.float64)
        weight /= math.sqrt(fan_in)
        bias = 0.1 * torch.randn(fan_out, generator=gen, dtype=torch.float64)
        params += [weight.requires_grad_(True), bias.requires_grad_(True)]

    def net(inputs):
        for i in range(0, len(params), 2):
            inputs = inputs @ params[i] + params[i + 1]
            if i + 2 < len(params):
                inputs = torch.tanh(inputs)
        return inputs

    optimizer = make_optimizer(params)
    _check_optimizer(optimizer)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in params])
    trace, order, position = [flat()], torch.randperm(len(X), generator=gen), 0
    for _ in range(steps):
        if position + batch_size > len(X):  # a new epoch: a new order
            order, position = torch.randperm(len(X), generator=gen), 0
        index = order[position:position + batch_size]
        position += batch_size
        optimizer.zero_grad()
        squared_loss(net(X[index]), y[index]).mean().backward()
        optimizer.step()
        trace.append(flat())
    return torch.stack(trace)
