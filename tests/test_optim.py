"""The optimisation chapter's helpers: 2-D trajectories, the airfoil data, training and checks."""
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pytest
import torch

from common import data, optim

# ---------------------------------------------------------------------------------------------
# 2-D toy problems
# ---------------------------------------------------------------------------------------------

def test_f_2d_is_the_ill_conditioned_quadratic():
    assert optim.f_2d(1.0, 1.0) == pytest.approx(2.1)
    x1, x2 = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    torch.testing.assert_close(optim.f_2d(x1, x2), torch.tensor([2.0, 0.4]))


def test_train_2d_gradient_descent_matches_the_closed_form(capsys):
    eta, steps = 0.1, 15
    trace = optim.train_2d(lambda x, g: x - eta * g, steps=steps)
    assert trace.shape == (steps + 1, 2) and trace.dtype == torch.float64
    t = torch.arange(steps + 1, dtype=torch.float64)
    # on 0.1 x1^2 + 2 x2^2 each coordinate shrinks by a constant factor per step
    torch.testing.assert_close(trace[:, 0], -5.0 * (1 - 0.2 * eta) ** t)
    torch.testing.assert_close(trace[:, 1], -2.0 * (1 - 4 * eta) ** t)
    assert "step 15" in capsys.readouterr().out


def test_train_2d_uses_the_given_function_and_start():
    bowl = lambda a, b: a ** 2 + b ** 2
    trace = optim.train_2d(lambda x, g: x - 0.25 * g, x0=(1.0, 1.0), steps=1, f=bowl)
    torch.testing.assert_close(trace[1], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_train_2d_optimizer_matches_train_2d():
    by_rule = optim.train_2d(lambda x, g: x - 0.3 * g, steps=10)
    sgd = lambda params: torch.optim.SGD(params, lr=0.3)
    by_optimizer = optim.train_2d_optimizer(sgd, steps=10)
    torch.testing.assert_close(by_rule, by_optimizer)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_train_2d_rejects_bad_step_counts(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        optim.train_2d(lambda x, g: x, steps=steps)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        optim.train_2d_optimizer(lambda params: torch.optim.SGD(params, lr=0.1), steps=steps)


def test_train_2d_rejects_bad_start_points_and_updates():
    with pytest.raises(ValueError, match="two numbers"):
        optim.train_2d(lambda x, g: x, x0=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="finite"):
        optim.train_2d(lambda x, g: x, x0=(math.nan, 0.0))
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        optim.train_2d(lambda x, g: torch.zeros(3))
    with pytest.raises(TypeError, match="update must be a function"):
        optim.train_2d("sgd")
    with pytest.raises(ValueError, match="scalar"):
        optim.train_2d(lambda x, g: x, f=lambda a, b: torch.stack([a, b]))


def test_train_2d_optimizer_rejects_objects_that_are_not_optimizers():
    with pytest.raises(TypeError, match="step\\(\\) and zero_grad\\(\\)"):
        optim.train_2d_optimizer(lambda params: object())


def test_show_trace_2d_draws_contours_and_the_path():
    trace = optim.train_2d(lambda x, g: x - 0.4 * g, steps=5)
    axes = optim.show_trace_2d(optim.f_2d, trace, title="gd")
    line = axes.get_lines()[-1]
    assert len(line.get_xdata()) == 6 and axes.get_title() == "gd"
    assert axes.collections  # the contour lines


@pytest.mark.parametrize("bad", [torch.zeros(3, 3), torch.zeros(0, 2), torch.zeros(4)])
def test_show_trace_2d_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="non-empty list of \\(x1, x2\\) points"):
        optim.show_trace_2d(optim.f_2d, bad)


def test_show_trace_2d_explains_diverged_traces():
    with pytest.raises(ValueError, match="diverged"):
        optim.show_trace_2d(optim.f_2d, [[0.0, 0.0], [math.inf, 1.0]])


# ---------------------------------------------------------------------------------------------
# The airfoil data (a synthetic table through a patched reader, and the real file if available)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def fake_airfoil(monkeypatch):
    """Replace the airfoil file by 30 rows of a known table; returns the raw rows (30, 6)."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1000, 5, 0.1, 20, 0.01, 7.0], dtype=torch.float64)
    rows = torch.randn(30, 6, generator=g, dtype=torch.float64) * scales + 3
    text = "\n".join("\t".join(repr(v) for v in row.tolist()) for row in rows) + "\n"
    monkeypatch.setattr(optim.course_data, "read_text",
                        lambda name: text if name == "airfoil" else None)
    return rows


def test_read_airfoil_standardises_every_column(fake_airfoil):
    table = optim.read_airfoil(torch.float64)
    assert table.shape == (30, 6) and table.dtype == torch.float64
    torch.testing.assert_close(table.mean(dim=0), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(table.std(dim=0, unbiased=False), torch.ones(6, dtype=torch.float64))
    expected = (fake_airfoil - fake_airfoil.mean(0)) / fake_airfoil.std(0, unbiased=False)
    torch.testing.assert_close(table, expected)
    assert optim.read_airfoil().dtype == torch.float32


def test_read_airfoil_rejects_integer_dtypes(fake_airfoil):
    with pytest.raises(ValueError, match="floating-point"):
        optim.read_airfoil(torch.int64)


def test_load_airfoil_keeps_the_first_n_rows(fake_airfoil):
    loader, features = optim.load_airfoil(batch_size=4, n=10, shuffle=False)
    assert features == 5 and len(loader) == 3
    X, y = next(iter(loader))
    assert X.shape == (4, 5) and y.shape == (4,)
    table = optim.read_airfoil()
    torch.testing.assert_close(torch.cat([b[0] for b in loader]), table[:10, :5])
    torch.testing.assert_close(torch.cat([b[1] for b in loader]), table[:10, 5])


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "n must be an integer between 1 and 30"),
    (dict(n=31), "n must be an integer between 1 and 30"),
    (dict(n=2.5), "n must be an integer"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(batch_size=1.5), "batch_size must be a positive integer"),
])
def test_load_airfoil_rejects_bad_sizes(fake_airfoil, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.load_airfoil(**{"batch_size": 4, "n": 10, **kwargs})


def airfoil_available():
    res = data.resource("airfoil")
    mirror = os.environ.get("COURSE_DATA_MIRROR")
    in_mirror = bool(mirror) and (Path(mirror) / res.path).exists()
    return (data.data_dir() / res.path).exists() or in_mirror


needs_airfoil = pytest.mark.skipif(not airfoil_available(),
                                   reason="needs the airfoil file: set COURSE_DATA_MIRROR")


@needs_airfoil
def test_real_airfoil_data_is_1503_rows_and_batches_of_the_first_1500():
    table = optim.read_airfoil()
    assert table.shape == (1503, 6)
    loader, features = optim.load_airfoil(batch_size=10)
    assert features == 5 and len(loader) == 150 and loader.num_examples == 1500
    best = optim.least_squares_loss(loader)
    assert 0.2 < best < 0.3  # a linear model explains about half of the variance of the noise level


# ---------------------------------------------------------------------------------------------
# Losses and training
# ---------------------------------------------------------------------------------------------

def linear_problem(n=200, noise=0.0, batch_size=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + noise * torch.randn(n, generator=g)
    return data.TensorLoader(X, y, batch_size=batch_size, shuffle=True)


def test_squared_loss_is_half_the_squared_error():
    loss = optim.squared_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(loss, torch.tensor([[0.5], [2.0]]))
    with pytest.raises(ValueError, match="differ in size"):
        optim.squared_loss(torch.zeros(3, 1), torch.zeros(2))


def test_evaluate_loss_averages_over_examples():
    loader = data.TensorLoader(torch.tensor([[0.0], [1.0], [2.0]]), torch.zeros(3), batch_size=2)
    assert optim.evaluate_loss(lambda X: X, loader) == pytest.approx((0 + 0.5 + 2) / 3)
    with pytest.raises(ValueError, match="no examples"):
        optim.evaluate_loss(lambda X: X, [])


def test_least_squares_loss_is_zero_on_noiseless_data_and_positive_with_noise():
    assert optim.least_squares_loss(linear_problem()) < 1e-10
    assert optim.least_squares_loss(linear_problem(noise=0.5)) == pytest.approx(0.125, rel=0.3)
    with pytest.raises(ValueError, match="no examples"):
        optim.least_squares_loss([])


def test_train_airfoil_learns_and_records_a_consistent_history(capsys):
    torch.manual_seed(0)
    loader = linear_problem(noise=0.1)
    sgd = lambda params: torch.optim.SGD(params, lr=0.3)
    history = optim.train_airfoil(sgd, loader, num_epochs=3, record_every=50)
    # one record every 50 of the 600 examples
    assert len(history.epochs) == len(history.times) == len(history.losses) == 12
    assert history.epochs[-1] == pytest.approx(3.0)
    assert all(a < b for a, b in zip(history.epochs, history.epochs[1:]))
    assert all(a <= b for a, b in zip(history.times, history.times[1:]))
    assert history.initial_loss > 1
    assert history.final_loss() < 1.2 * optim.least_squares_loss(loader)
    assert "sec/epoch" in capsys.readouterr().out


def test_train_airfoil_records_the_end_of_training_even_off_the_grid():
    torch.manual_seed(0)
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)
    history = optim.train_airfoil(sgd, linear_problem(n=70), num_epochs=1, record_every=200)
    assert history.epochs == [1.0] and len(history.losses) == 1


def test_train_airfoil_accepts_scratch_optimizers_and_matches_torch():
    class PlainSGD(optim.ScratchOptimizer):
        def update(self, p, g, state):
            p.sub_(0.05 * g)

    runs = []
    for make in (lambda params: PlainSGD(params), lambda params: torch.optim.SGD(params, lr=0.05)):
        torch.manual_seed(1)
        runs.append(optim.train_airfoil(make, linear_problem(), num_epochs=2).losses)
    torch.testing.assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]))


def test_train_airfoil_rejects_bad_arguments():
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="num_epochs"):
        optim.train_airfoil(sgd, linear_problem(), num_epochs=0)
    with pytest.raises(ValueError, match="record_every"):
        optim.train_airfoil(sgd, linear_problem(), record_every=0)
    with pytest.raises(TypeError, match="step\\(\\) and zero_grad\\(\\)"):
        optim.train_airfoil(lambda params: "sgd", linear_problem())
    images = data.TensorLoader(torch.zeros(4, 1, 2, 2), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="\\(batch, features\\)"):
        optim.train_airfoil(sgd, images)


def test_history_final_loss_averages_the_last_epoch():
    h = optim.AirfoilHistory(1.0, epochs=[0.5, 1.0, 1.5, 2.0], times=[1, 2, 3, 4],
                             losses=[0.9, 0.7, 0.4, 0.2])
    assert h.final_loss() == pytest.approx(0.3)
    assert "loss: 0.200" in str(h)
    with pytest.raises(ValueError, match="no recorded losses"):
        optim.AirfoilHistory().final_loss()
    assert str(optim.AirfoilHistory()) == "AirfoilHistory(no records)"


def test_plot_histories_draws_each_run_and_validates():
    h = optim.AirfoilHistory(1.0, epochs=[1.0, 2.0], times=[0.01, 0.02], losses=[0.5, 0.3])
    axes = optim.plot_histories({"a": h, "b": h}, x="time")
    assert len(axes.get_lines()) == 2 and axes.get_xscale() == "log"
    with pytest.raises(ValueError, match="'epoch' or 'time'"):
        optim.plot_histories({"a": h}, x="steps")
    with pytest.raises(ValueError, match="at least one history"):
        optim.plot_histories({})
    with pytest.raises(ValueError, match="recorded losses"):
        optim.plot_histories({"empty": optim.AirfoilHistory()})


# ---------------------------------------------------------------------------------------------
# From-scratch optimizers and their check
# ---------------------------------------------------------------------------------------------

class Momentum(optim.ScratchOptimizer):
    def __init__(self, params, lr, momentum):
        super().__init__(params)
        self.lr, self.momentum = lr, momentum

    def update(self, p, g, state):
        v = state.setdefault("v", torch.zeros_like(p))
        v.mul_(self.momentum).add_(g)
        p.sub_(self.lr * v)


def test_scratch_optimizer_counts_steps_skips_missing_gradients_and_clears_them():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = Momentum([a, b], lr=0.5, momentum=0.9)
    (a ** 2).sum().backward()  # b gets no gradient
    opt.step()
    assert opt.t == 1
    torch.testing.assert_close(a.detach(), torch.zeros(2))
    torch.testing.assert_close(b.detach(), torch.ones(2))
    assert opt.state[1] == {}
    opt.zero_grad()
    assert a.grad is None


def test_scratch_optimizer_rejects_bad_parameters():
    with pytest.raises(ValueError, match="empty parameter list"):
        Momentum([], 0.1, 0.9)
    with pytest.raises(ValueError, match="Parameter 0 is not a tensor that requires a gradient"):
        Momentum([torch.zeros(2)], 0.1, 0.9)


def test_scratch_optimizer_subclasses_must_implement_update():
    p = torch.ones(1, requires_grad=True)
    opt = optim.ScratchOptimizer([p])
    p.sum().backward()
    with pytest.raises(NotImplementedError, match="update"):
        opt.step()


def test_check_hyperparameter():
    assert optim.check_hyperparameter("lr", 0.1) == 0.1
    assert optim.check_hyperparameter("beta", 0.0, 0.0, 1.0) == 0.0
    for value in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="lr must be in \\[0.0, inf\\)"):
            optim.check_hyperparameter("lr", value)
    with pytest.raises(ValueError, match="beta must be in \\[0.0, 1.0\\)"):
        optim.check_hyperparameter("beta", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="eps must be in \\(0.0, inf\\)"):
        optim.check_hyperparameter("eps", 0.0, include_low=False)


@needs_airfoil
def test_airfoil_trajectory_is_deterministic_and_separates_different_rules():
    sgd = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)
    first, again = optim.airfoil_trajectory(sgd, steps=30), optim.airfoil_trajectory(sgd, steps=30)
    assert first.shape == (31, 5 * 8 + 8 + 8 + 1) and first.dtype == torch.float64
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    ours = optim.airfoil_trajectory(lambda params: Momentum(params, 0.05, 0.9), steps=30)
    torch.testing.assert_close(ours, first, rtol=1e-10, atol=1e-12)
    other = optim.airfoil_trajectory(lambda params: Momentum(params, 0.05, 0.5), steps=30)
    assert (other[-1] - first[-1]).abs().max() > 1e-3  # a different rule is caught
    linear = optim.airfoil_trajectory(sgd, steps=5, hidden=None)
    assert linear.shape == (6, 6)
    assert not torch.equal(optim.airfoil_trajectory(sgd, steps=5, seed=1), first[:6])


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(batch_size=0), "batch_size must be an integer between 1 and 1500"),
    (dict(batch_size=2000), "batch_size must be an integer between 1 and 1500"),
    (dict(hidden=0), "hidden must be a positive integer or None"),
])
def test_airfoil_trajectory_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.airfoil_trajectory(lambda params: torch.optim.SGD(params, lr=0.1), **kwargs)
