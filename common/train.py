"""Metrics, timing, evaluation, early stopping and the classification training loop the chapters share."""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .checks import check_int, check_number
from .config import device as default_device
from .config import estimate_steps
from .plot import LivePlot, Panel
from .progress import EstimateReached, ProgressBar, print_estimate


class Timer:
    """Records the durations of several runs: ``start()`` ... ``stop()``."""

    def __init__(self):
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        self.tik = time.perf_counter()

    def stop(self) -> float:
        self.times.append(time.perf_counter() - self.tik)
        return self.times[-1]

    def sum(self) -> float:
        return sum(self.times)

    def avg(self) -> float:
        return self.sum() / len(self.times)


class Accumulator:
    """Running sums of ``n`` quantities.

    Values may be tensors: they are summed on their device and only turned into Python
    floats when read, so the training loop does not wait for the GPU after every batch.
    """

    def __init__(self, n: int):
        self.data: list = [0.0] * n

    def add(self, *values) -> None:
        if len(values) != len(self.data):
            raise ValueError(f"Accumulator holds {len(self.data)} sums, got {len(values)} values.")
        self.data = [a + (v.detach() if isinstance(v, torch.Tensor) else v) for a, v in zip(self.data, values)]

    def __getitem__(self, i: int) -> float:
        return float(self.data[i])


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions (a 0-d tensor): ``y_hat`` holds logits (N, q) or labels (N,)."""
    if y_hat.ndim > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    if y_hat.shape != y.shape:
        raise ValueError(f"Predictions {tuple(y_hat.shape)} and labels {tuple(y.shape)} do not match.")
    return (y_hat.type(y.dtype) == y).sum()


@contextlib.contextmanager
def _eval_mode(net):
    """Evaluation mode for modules (dropout off, batch-norm running statistics), restored after."""
    was_training = getattr(net, "training", False)
    if isinstance(net, nn.Module):
        net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if isinstance(net, nn.Module):
            net.train(was_training)


def evaluate_accuracy(net: Callable, data_iter: Iterable, device: torch.device | None = None) -> float:
    """Accuracy of ``net`` over all batches of ``data_iter``."""
    dev = device or device_of(net)
    metric = Accumulator(2)  # correct predictions, examples
    with _eval_mode(net):
        for X, y in data_iter:
            X, y = X.to(dev), y.to(dev)
            metric.add(accuracy(net(X), y), y.numel())
    if metric[1] == 0:
        raise ValueError("evaluate_accuracy got no examples: data_iter yielded no batches. Check the dataset "
                         "size and batch_size (a DataLoader with drop_last=True and fewer examples than "
                         "batch_size is empty).")
    return metric[0] / metric[1]


def evaluate_loss(net: Callable, data_iter: Iterable, loss: Callable | None = None,
                  device: torch.device | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` over all examples of ``data_iter``: ``(loss, accuracy)``.

    ``loss`` returns the mean loss of a batch (default: cross-entropy); batches are weighted by
    their size, so the result is the mean over examples even when the last batch is smaller.
    """
    loss = loss or nn.CrossEntropyLoss()
    dev = device or device_of(net)
    metric = Accumulator(3)  # sum of losses, correct predictions, examples
    with _eval_mode(net):
        for X, y in data_iter:
            X, y = X.to(dev), y.to(dev)
            y_hat = net(X)
            metric.add(loss(y_hat, y) * y.numel(), accuracy(y_hat, y), y.numel())
    if metric[2] == 0:
        raise ValueError("evaluate_loss got no examples: data_iter yielded no batches. Check the dataset size "
                         "and batch_size.")
    return metric[0] / metric[2], metric[1] / metric[2]


def _copy_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's state_dict on the CPU (it does not hold on to GPU memory)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in net.state_dict().items()}


class EarlyStopping:
    """Stop training when the validation loss has not improved for ``patience`` epochs.

    After every epoch, :meth:`step` evaluates the mean loss and accuracy of the net on
    ``valid_iter`` (minibatches carved from the *training* data, never the test set). An epoch
    improves when its validation loss is below the best so far by more than ``min_delta``; then a
    copy of the net's ``state_dict`` is kept on the CPU. ``step`` returns True once ``patience``
    epochs in a row have not improved; :meth:`restore` loads the best weights back. Pass it to
    :func:`train_classifier` as ``early_stopping=``, or call ``step``/``restore`` in your own loop.

    After training: ``best_epoch`` (1-based), ``best_loss``, ``best_state``, and the curves
    ``valid_loss`` and ``valid_acc`` (one value per epoch).
    """

    def __init__(self, valid_iter: Iterable, patience: int = 5, min_delta: float = 0.0,
                 loss: Callable | None = None):
        _check_batches(valid_iter, "valid_iter")
        self.valid_iter = valid_iter
        self.patience = check_int("patience", patience, minimum=1)
        self.min_delta = check_number("min_delta", min_delta, minimum=0)
        self.loss = loss or nn.CrossEntropyLoss()
        self.reset()

    def reset(self) -> None:
        """Forget every epoch seen (``train_classifier`` calls it before training)."""
        self.valid_loss: list[float] = []
        self.valid_acc: list[float] = []
        self.best_loss, self.best_epoch = math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epochs_without_improvement = 0

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience

    def update(self, valid_loss: float, net: nn.Module, valid_acc: float = math.nan) -> bool:
        """Record one epoch's validation loss (keeping ``net``'s weights if it is the best); True: stop."""
        _check_module(net)
        valid_loss = float(valid_loss)
        self.valid_loss.append(valid_loss)
        self.valid_acc.append(float(valid_acc))
        epoch = len(self.valid_loss)
        if valid_loss < self.best_loss - self.min_delta:  # a NaN loss never improves
            self.best_loss, self.best_epoch = valid_loss, epoch
            self.best_state = _copy_state(net)
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return self.should_stop

    def step(self, net: nn.Module, device: torch.device | None = None) -> bool:
        """Evaluate ``net`` on the validation data, record it, and say whether to stop."""
        _check_module(net)
        valid_loss, valid_acc = evaluate_loss(net, self.valid_iter, self.loss, device)
        return self.update(valid_loss, net, valid_acc)

    def restore(self, net: nn.Module) -> None:
        """Load the weights of the best epoch into ``net`` (on the device where ``net`` is)."""
        _check_module(net)
        if self.best_state is None:
            raise RuntimeError("EarlyStopping.restore: no epoch has been recorded yet (or every validation loss "
                               "was NaN), so there are no best weights. Call step(net) after each epoch first.")
        net.load_state_dict(self.best_state)


def _check_module(net) -> None:
    if not isinstance(net, nn.Module):
        raise TypeError(f"Early stopping keeps and restores the net's state_dict, so the net must be an nn.Module, "
                        f"got {type(net).__name__}. Wrap a from-scratch model's parameters in an nn.Module "
                        "(nn.Parameter attributes and a forward method), or stop by hand in your own loop.")


class SGD:
    """Minibatch SGD from scratch, with the two methods of a ``torch.optim`` optimiser.

    One step is ``p -= lr * p.grad`` for every parameter (the loss must be a mean over the
    minibatch). The softmax-regression-from-scratch notebook derives it and checks it.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        self.params, self.lr = list(params), check_number("lr", lr, minimum=0)  # torch.optim.SGD refuses lr < 0 too
        if not self.params:
            raise ValueError("SGD got an empty parameter list: pass the tensors to train.")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:  # like torch.optim: a parameter without a gradient stays put
                p -= self.lr * p.grad


def init_cnn(module: nn.Module) -> None:
    """He initialisation of conv and linear layers (for ReLU networks), zero biases.

    Use as ``net.apply(init_cnn)``; the AlexNet notebook derives it and measures why it matters.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def device_of(net) -> torch.device:
    """The device of a module's parameters; for plain functions, the default device."""
    if isinstance(net, nn.Module):
        param = next(net.parameters(), None)
        if param is not None:
            return param.device
    return default_device()


@dataclass
class History:
    """Per-epoch metrics of a training run, for printing and for asserts."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    examples_per_sec: list[float] = field(default_factory=list)
    device: str = ""
    # Filled only when training with early stopping (empty/None otherwise):
    valid_loss: list[float] = field(default_factory=list)
    valid_acc: list[float] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based; the epoch whose weights the net holds after training

    def __str__(self) -> str:
        if not self.train_loss:
            return "History(no epochs)"
        text = (f"loss {self.train_loss[-1]:.3f}, train acc {self.train_acc[-1]:.3f}, "
                f"test acc {self.test_acc[-1]:.3f}, {sum(self.examples_per_sec) / len(self.examples_per_sec):.0f} "
                f"examples/sec on {self.device}")
        if self.best_epoch is not None:
            best = self.best_epoch - 1
            text += (f"\nearly stopping: {len(self.train_loss)} epochs, weights of epoch {self.best_epoch} restored "
                     f"(valid loss {self.valid_loss[best]:.3f}, valid acc {self.valid_acc[best]:.3f}, "
                     f"test acc {self.test_acc[best]:.3f})")
        return text


def mixed_precision(capability: tuple[int, int] | None, net, optimizer) -> tuple[torch.dtype | None, bool]:
    """How :func:`train_classifier` trains: ``(autocast dtype or None for float32, scale gradients?)``.

    ``capability`` is the CUDA compute capability of the device (``torch.cuda.get_device_capability``),
    ``None`` off CUDA: the CPU and MPS train in float32. On CUDA only ``nn.Module``s use mixed
    precision (from-scratch models keep their hand-written softmax in float32). bf16 is chosen from
    capability 8.0 (Ampere) on; below it (T4: 7.5, V100: 7.0) bf16 is emulated, although
    ``torch.cuda.is_bf16_supported()`` says True, so those GPUs use fp16, whose narrow range needs a
    gradient scaler. The scaler reads ``optimizer.param_groups``: with an optimiser that has none
    (``train.SGD``), fp16 is not used either, so autocast and scaler are never out of step.
    """
    if capability is None or not isinstance(net, nn.Module):
        return None, False
    if tuple(capability) >= (8, 0):
        return torch.bfloat16, False
    if not hasattr(optimizer, "param_groups"):
        return None, False
    return torch.float16, True


def _cuda_capability(dev: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None


def _autocast(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def uses_channels_last(net, device: torch.device) -> bool:
    """Whether ``train_classifier`` trains ``net`` in channels-last memory format on ``device``.

    Yes for conv nets on CUDA and the CPU, where cuDNN and oneDNN are faster with it (+16% for
    LeNet on a 2-core CPU); MPS is left in the default format.
    """
    is_conv_net = isinstance(net, nn.Module) and any(isinstance(m, nn.Conv2d) for m in net.modules())
    return is_conv_net and device.type in ("cuda", "cpu")


class StepEveryBatch:
    """An optimiser that also advances a learning-rate scheduler after every update.

    ``train_classifier`` only calls ``zero_grad()`` and ``step()``; wrapping the optimiser lets it
    follow any ``torch.optim.lr_scheduler`` (count the scheduler's periods in batches).
    """

    def __init__(self, optimizer, scheduler):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.param_groups = optimizer.param_groups  # read by GradScaler (mixed precision on some GPUs)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()


def _check_optimizer(optimizer) -> None:
    if not (callable(getattr(optimizer, "zero_grad", None)) and callable(getattr(optimizer, "step", None))):
        raise TypeError(f"optimizer must have zero_grad() and step(), like torch.optim.SGD or train.SGD, got "
                        f"{optimizer!r}. Make one, e.g. torch.optim.SGD(net.parameters(), lr=0.1).")


def _check_batches(data_iter, name: str) -> None:
    if not hasattr(data_iter, "__iter__"):
        raise TypeError(f"{name} must be an iterable of (X, y) minibatches, got {type(data_iter).__name__}.")
    if hasattr(data_iter, "__len__") and len(data_iter) == 0:
        raise ValueError(f"{name} has no minibatches (its length is 0). Check the dataset size and batch_size "
                         "(a DataLoader with drop_last=True and fewer examples than batch_size is empty).")


def _check_labels(y_hat: torch.Tensor, y: torch.Tensor) -> None:
    """Class labels: integers in [0, number of logits). Called on the first batch only (one device sync)."""
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"Labels must be integer class indices, got dtype {y.dtype}. Convert them with y.long().")
    if y_hat.ndim == 2 and y_hat.shape[1] > 1 and y.numel():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= y_hat.shape[1]:
            raise ValueError(f"Labels must be class indices in [0, {y_hat.shape[1] - 1}] (the net outputs "
                             f"{y_hat.shape[1]} logits), got labels from {low} to {high}. Check the labels, or "
                             "the number of outputs of the net's last layer.")


def _check_finite_loss(batch_losses: list[torch.Tensor], epoch: int) -> None:
    """Stop when a batch loss was NaN or infinite.

    The losses stay on the device during the epoch and are read here once, at its end, so the
    check adds no wait for the GPU after every batch (the epoch's metrics are read then anyway).
    """
    finite = torch.isfinite(torch.stack(batch_losses).float())
    if not finite.all():
        batch = int((~finite).nonzero()[0, 0])
        raise FloatingPointError(
            f"The training loss became {float(batch_losses[batch])} at epoch {epoch + 1}, batch {batch + 1} "
            f"(of {len(batch_losses)}): training stopped, the parameters are no longer usable. Check the inputs "
            "for NaN or inf (torch.isfinite(X).all()), and try a smaller learning rate.")


def train_classifier(net: Callable, train_iter: Iterable, test_iter: Iterable, num_epochs: int,
                     optimizer, loss: Callable | None = None, device: torch.device | None = None,
                     plot: bool = True, progress: bool = True,
                     early_stopping: EarlyStopping | None = None, desc: str = "training") -> History:
    """Train a classifier with minibatches and return its per-epoch :class:`History`.

    ``net`` is an ``nn.Module`` or any function of the inputs returning logits (from-scratch
    models); ``optimizer`` is a ``torch.optim`` optimizer or any object with ``zero_grad()`` and
    ``step()``; ``loss`` returns the mean loss of a batch (default: cross-entropy). On CUDA,
    modules train in mixed precision; conv nets train in channels-last memory format where
    :func:`uses_channels_last` says so.

    With ``early_stopping`` (an :class:`EarlyStopping`, which needs an ``nn.Module``), the net is
    evaluated on its validation data after every epoch, training stops after ``patience`` epochs
    without improvement (or after ``num_epochs``), and the weights of the best epoch are
    restored; the history then holds ``valid_loss``, ``valid_acc`` and ``best_epoch`` too. The
    test data are only measured, never used to decide. ``desc`` names the loop on its progress bar.
    """
    num_epochs = check_int("num_epochs", num_epochs, minimum=1)
    _check_optimizer(optimizer)
    _check_batches(train_iter, "train_iter")
    _check_batches(test_iter, "test_iter")
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a train.EarlyStopping or None, got "
                            f"{type(early_stopping).__name__}. Make one with train.EarlyStopping(valid_iter, "
                            "patience=5).")
        _check_module(net)
        early_stopping.reset()
    loss = loss or nn.CrossEntropyLoss()
    dev = device or device_of(net)
    channels_last = uses_channels_last(net, dev)
    if isinstance(net, nn.Module):
        net.to(dev, memory_format=torch.channels_last) if channels_last else net.to(dev)
    amp_dtype, scale_gradients = mixed_precision(_cuda_capability(dev), net, optimizer)
    scaler = torch.amp.GradScaler(dev.type, enabled=scale_gradients)
    history = History(device=str(dev))
    if early_stopping is None:
        live = LivePlot(xlabel="epoch", xlim=[1, max(num_epochs, 2)], panels=[
            Panel("loss", curves=["train loss"]),  # autoscaled: losses start far above 1
            Panel("accuracy", curves=["train acc", "test acc"], ylim=(0, 1))]) if plot else None
    else:
        live = _LivePlotWithBest(xlabel="epoch", xlim=[1, max(num_epochs, 2)], panels=[
            Panel("loss", curves=["train loss", "valid loss"]),
            Panel("accuracy", curves=["train acc", "valid acc", "test acc"], ylim=(0, 1))]) if plot else None
    bar = ProgressBar(num_epochs * len(train_iter), "batch", desc=desc) if progress else None
    try:
        for epoch in range(num_epochs):
            if isinstance(net, nn.Module):
                net.train()
            metric = Accumulator(3)  # sum of losses, correct predictions, examples
            timer = Timer()
            batch_losses = []  # stay on the device until the epoch ends
            for X, y in train_iter:
                X, y = X.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                if channels_last:
                    X = X.contiguous(memory_format=torch.channels_last)
                with _autocast(dev, amp_dtype):
                    y_hat = net(X)
                    if epoch == 0 and not batch_losses:
                        _check_labels(y_hat, y)
                    l = loss(y_hat, y)
                optimizer.zero_grad()
                scaler.scale(l).backward()
                scaler.step(optimizer) if scaler.is_enabled() else optimizer.step()
                scaler.update()
                metric.add(l.detach() * y.numel(), accuracy(y_hat.detach(), y), y.numel())
                batch_losses.append(l.detach())
                if bar is not None:
                    bar.update()
            if not batch_losses:
                raise ValueError("train_iter yielded no minibatches: there is nothing to train on.")
            _check_finite_loss(batch_losses, epoch)
            train_loss, train_acc = metric[0] / metric[2], metric[1] / metric[2]  # reading syncs the device
            history.examples_per_sec.append(metric[2] / timer.stop())
            history.train_loss.append(train_loss)
            history.train_acc.append(train_acc)
            history.test_acc.append(evaluate_accuracy(net, test_iter, dev))
            stop = early_stopping is not None and early_stopping.step(net, dev)
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.3f}", test_acc=f"{history.test_acc[-1]:.3f}")
            if live is not None:
                points = {"train loss": train_loss, "train acc": train_acc}
                if early_stopping is not None:
                    live.best_epoch = early_stopping.best_epoch or None
                    points |= {"valid loss": early_stopping.valid_loss[-1], "valid acc": early_stopping.valid_acc[-1]}
                live.add(epoch + 1, points | {"test acc": history.test_acc[-1]})
            if stop:
                break
    except EstimateReached:  # estimate mode (common.progress): time an evaluation too, return what trained
        _estimate_evaluations(net, test_iter, early_stopping, dev, num_epochs, len(history.test_acc), desc)
        bar.close()
        return history
    if early_stopping is not None:
        early_stopping.restore(net)
        history.valid_loss, history.valid_acc = list(early_stopping.valid_loss), list(early_stopping.valid_acc)
        history.best_epoch = early_stopping.best_epoch
    if bar is not None:
        bar.close()
    if live is not None:
        live.finish()
    print(history)
    return history


def _estimate_evaluations(net, test_iter, early_stopping, device, num_epochs: int, epochs_done: int,
                          desc: str) -> None:
    """Estimate mode: time one epoch's evaluations (test, and validation with early stopping)."""
    seconds = _evaluation_seconds(net, test_iter, device)
    if early_stopping is not None:
        seconds += _evaluation_seconds(net, early_stopping.valid_iter, device)
    # The interrupted epoch's evaluations did not run (only the timed batches), so they are still to come.
    print_estimate(f"{desc}, evaluations", num_epochs, seconds, epochs_done)


def _evaluation_seconds(net, data_iter, device) -> float:
    """The time of one pass of evaluate_accuracy over ``data_iter``, from a few timed batches."""
    steps = estimate_steps() or 1
    if not hasattr(data_iter, "__len__") or len(data_iter) <= steps + 1:
        timer = Timer()
        evaluate_accuracy(net, data_iter, device)
        return timer.stop()
    batches = iter(data_iter)
    evaluate_accuracy(net, itertools.islice(batches, 1), device)  # warm-up
    timer = Timer()
    evaluate_accuracy(net, itertools.islice(batches, steps), device)  # returns a float: the device is synced
    return timer.stop() / steps * len(data_iter)


class _LivePlotWithBest(LivePlot):
    """The training plot with a dotted vertical line at the best epoch so far (early stopping)."""

    best_epoch: int | None = None

    def _draw(self) -> None:
        super()._draw()
        if self.best_epoch is None:
            return
        for ax in self.all_axes:
            ax.axvline(self.best_epoch, color="k", linestyle=":", linewidth=1,
                       label=f"best epoch ({self.best_epoch})")
            ax.legend(loc="best")


def progress_bar(total: int, unit: str) -> ProgressBar:
    """A one-line progress bar for training loops that leaves a summary behind; call ``update()``."""
    return ProgressBar(total, unit)
