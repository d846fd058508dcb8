"""``make bench``: the course's training loop and loader against the d2l package's, in one run.

Both sides train the same models (softmax regression, the one-hidden-layer MLP, d2l's LeNet)
with the same hyper-parameters, initialisation and data, on this machine, taking turns in every
repeat; the table shows medians. Each training run is a fresh Python process, set up as its
users run it: d2l's side as a plain script, the course's side with
``common.config.keep_freed_memory()``, which every notebook's setup cell applies. Throughput is wall-clock training examples per second
of the whole training call (data loading, evaluation and plotting included), the same measure
for both. Test accuracy is evaluated the same way for both, on the whole test set.

A third run per repeat, the bare loop, does only what no training loop can skip (forward, loss,
backward, optimiser step on the course's in-memory batches, in the course's memory format): it is
the floor set by PyTorch's kernels on this machine, and ``course / bare`` shows how much the
course's loop adds on top (metrics, evaluation, plotting). Ratios are medians of per-repeat
ratios, so that slow drifts of a shared machine cancel out within each repeat.

Usage: ``python -m common.bench [--epochs N] [--repeats N] [--models softmax,mlp,lenet]``;
``--profile`` instead shows where the bare loop's time goes, per kind of operator.
Nothing here is a test: it reports, it never asserts on time.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: figures are drawn but never shown
import matplotlib.pyplot as plt
import torch
from torch import nn

from . import config, data, train

LR = {"softmax": 0.1, "mlp": 0.1, "lenet": 0.9}  # d2l's learning rates, batch 256
BATCH_SIZE = 256
SIDES = ("d2l", "course", "bare")  # the reference, the course's loop, the kernels' floor


def make_model(name: str) -> nn.Module:
    """The three models, as d2l defines them."""
    if name == "softmax":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    if name == "lenet":
        return nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(2, stride=2), nn.Flatten(),
            nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))
    raise ValueError(f"Unknown model {name!r}: use softmax, mlp or lenet.")


def xavier_init(module: nn.Module) -> None:
    """The initialisation d2l's train_ch6 applies."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


@contextlib.contextmanager
def d2l_working_dir():
    """d2l reads Fashion-MNIST from ``../data``: point that at the course's verified cache."""
    data.load_fashion_mnist(BATCH_SIZE, n_train=1, n_test=1, device="cpu")  # fetch + verify + unpack
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").symlink_to(data.data_dir(), target_is_directory=True)
        (Path(tmp) / "work").mkdir()
        previous = os.getcwd()
        os.chdir(Path(tmp) / "work")
        try:
            yield
        finally:
            os.chdir(previous)


def run_d2l(d2l, name: str, epochs: int, device: torch.device, test_iter) -> tuple[float, float]:
    torch.manual_seed(0)
    net = make_model(name)
    train_iter, d2l_test_iter = d2l.load_data_fashion_mnist(BATCH_SIZE)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # d2l's Animator prints figure reprs in a script
        d2l.train_ch6(net, train_iter, d2l_test_iter, epochs, LR[name], device)
    seconds = time.perf_counter() - start
    plt.close("all")
    return epochs * len(train_iter.dataset) / seconds, train.evaluate_accuracy(net, test_iter, device)


def run_course(name: str, epochs: int, device: torch.device, train_iter, test_iter) -> tuple[float, float]:
    torch.manual_seed(0)
    net = make_model(name)
    net.apply(xavier_init)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        train.train_classifier(net, train_iter, test_iter, epochs, torch.optim.SGD(net.parameters(), lr=LR[name]),
                               device=device, progress=False)
    seconds = time.perf_counter() - start
    plt.close("all")
    return epochs * train_iter.num_examples / seconds, train.evaluate_accuracy(net, test_iter, device)


def bare_trainer(name: str, device: torch.device):
    """The bare loop's model, and its training step on one batch: forward, loss, backward and
    step only, with the course's initialisation and memory format."""
    torch.manual_seed(0)
    net = make_model(name)
    net.apply(xavier_init)
    memory_format = torch.channels_last if train.uses_channels_last(net, device) else torch.contiguous_format
    net.to(device, memory_format=memory_format)
    optimizer, loss = torch.optim.SGD(net.parameters(), lr=LR[name]), nn.CrossEntropyLoss()

    def step(X: torch.Tensor, y: torch.Tensor) -> None:
        l = loss(net(X.contiguous(memory_format=memory_format)), y)
        optimizer.zero_grad()
        l.backward()
        optimizer.step()

    return net, step


def run_bare(name: str, epochs: int, device: torch.device, train_iter, test_iter) -> tuple[float, float]:
    """The floor: the same training with nothing but the training steps."""
    net, step = bare_trainer(name, device)
    start = time.perf_counter()
    for _ in range(epochs):
        for X, y in train_iter:
            step(X, y)
    seconds = time.perf_counter() - start
    return epochs * train_iter.num_examples / seconds, train.evaluate_accuracy(net, test_iter, device)


OP_GROUPS = {"convolution": ("conv",), "pooling": ("pool",), "activation": ("sigmoid", "relu"),
             "linear layers": ("mm", "linear")}


def profile_bare(name: str, device: torch.device, batches: int = 100) -> dict[str, float]:
    """Share of self CPU time per kind of operator over ``batches`` bare training steps (after 20
    to warm up), from ``torch.profiler``: where the floor's time goes."""
    from torch.profiler import ProfilerActivity, profile

    train_iter, _ = data.load_fashion_mnist(BATCH_SIZE, device=device)
    _, step = bare_trainer(name, device)

    def steps(n: int) -> None:
        for _, (X, y) in zip(range(n), train_iter):
            step(X, y)

    steps(20)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps(batches)
    times = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    total = sum(times.values())
    shares = dict.fromkeys([*OP_GROUPS, "other"], 0.0)
    for key, t in times.items():
        group = next((g for g, parts in OP_GROUPS.items() if any(part in key.lower() for part in parts)), "other")
        shares[group] += t / total
    return shares


def loader_pass(d2l, train_iter) -> tuple[float, float]:
    """Seconds for one pass over the training set: d2l's DataLoader, then the course's."""
    d2l_iter, _ = d2l.load_data_fashion_mnist(BATCH_SIZE)
    start = time.perf_counter()
    for X, y in d2l_iter:
        pass
    d2l_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for X, y in train_iter:
        pass
    return d2l_seconds, time.perf_counter() - start


def import_d2l():
    """The reference package, installed with ``--no-deps`` (it pins old numpy/pandas)."""
    try:
        import d2l.torch as d2l
    except ImportError as err:
        raise SystemExit(f"make bench needs the d2l package as its reference ({err}). "
                         "Install it with `make install`, or `pip install --no-deps d2l==1.0.3`.") from err
    return d2l


def run_one(side: str, name: str, epochs: int) -> tuple[float, float]:
    """One training run in a fresh process: ``(examples per second, test accuracy)``."""
    command = [sys.executable, "-m", "common.bench", "--run", side, "--models", name, "--epochs", str(epochs)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=config.repo_root())
    if result.returncode != 0:
        raise RuntimeError(f"the {side} run of {name} failed:\n{result.stderr[-2000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return measured["examples_per_sec"], measured["test_acc"]


def run_here(side: str, name: str, epochs: int) -> None:
    """The body of one run (``--run``): train, then print the measurement as a JSON line."""
    device = config.device()
    if side != "d2l":
        config.keep_freed_memory()  # as common.setup() does in every notebook
    train_iter, test_iter = data.load_fashion_mnist(BATCH_SIZE, device=device)
    # A one-off import is not training: the first optimiser built in a process imports
    # torch._dynamo (1.6 s here), which would land in the timed call of d2l and of the course
    # (both build theirs inside it) but not in the bare loop's. Pay it here, for every side.
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with d2l_working_dir():
        if side == "d2l":
            speed, acc = run_d2l(import_d2l(), name, epochs, device, test_iter)
        elif side == "course":
            speed, acc = run_course(name, epochs, device, train_iter, test_iter)
        else:
            speed, acc = run_bare(name, epochs, device, train_iter, test_iter)
    print(json.dumps({"examples_per_sec": speed, "test_acc": acc}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (d2l: 10)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (d2l, course, bare) per model; medians are reported")
    parser.add_argument("--models", default="softmax,mlp,lenet")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where the bare loop's time goes, per kind of operator")
    parser.add_argument("--run", choices=SIDES, help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args(argv)
    if args.run:
        return run_here(args.run, args.models, args.epochs)
    if args.profile:
        config.keep_freed_memory()
        for name in args.models.split(","):
            shares = profile_bare(name, config.device())
            print(f"{name}: " + ", ".join(f"{group} {share:.0%}" for group, share in shares.items()))
        return None
    d2l = import_d2l()
    device = config.device()
    config.seed_everything(0)
    train_iter, test_iter = data.load_fashion_mnist(BATCH_SIZE, device=device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; {args.epochs} epochs, batch {BATCH_SIZE}, {args.repeats} repeats of d2l, course, bare")
    with d2l_working_dir():
        d2l_pass, course_pass = loader_pass(d2l, train_iter)
    print(f"one pass over the 60,000 training images: d2l DataLoader {d2l_pass:.2f} s, "
          f"course TensorLoader {course_pass:.3f} s ({d2l_pass / course_pass:.0f}x)")
    rows = []
    for name in args.models.split(","):
        runs = [{side: run_one(side, name, args.epochs) for side in SIDES} for _ in range(args.repeats)]
        rows.append((name, summarize(runs)))
        print(f"  {name}: " + ", ".join(f"{side} {rows[-1][1][side][0]:.0f} ex/s" for side in SIDES), flush=True)
    print(f"\n{'model':<8} {'epochs':>6} {'d2l ex/s':>9} {'course ex/s':>12} {'ratio':>6} {'bare ex/s':>10} "
          f"{'course/bare':>12} {'d2l test acc':>13} {'course test acc':>16}")
    for name, m in rows:
        print(f"{name:<8} {args.epochs:>6} {m['d2l'][0]:>9.0f} {m['course'][0]:>12.0f} {m['ratio']:>6.2f} "
              f"{m['bare'][0]:>10.0f} {m['of_bare']:>12.2f} {m['d2l'][1]:>13.3f} {m['course'][1]:>16.3f}")


def summarize(runs: list[dict]) -> dict:
    """Medians over repeats of each side's (examples/s, test accuracy), and of per-repeat ratios."""
    summary = {side: (statistics.median(run[side][0] for run in runs), statistics.median(run[side][1] for run in runs))
               for side in SIDES}
    summary["ratio"] = statistics.median(run["course"][0] / run["d2l"][0] for run in runs)
    summary["of_bare"] = statistics.median(run["course"][0] / run["bare"][0] for run in runs)
    return summary


if __name__ == "__main__":
    main()
