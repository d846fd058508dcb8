import pytest
import torch
from torch import nn

from common import data, train


def test_accuracy_counts_correct_predictions():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert train.accuracy(logits, torch.tensor([1, 0, 0])).item() == 2
    assert train.accuracy(torch.tensor([1, 1]), torch.tensor([1, 0])).item() == 1
    with pytest.raises(ValueError, match="do not match"):
        train.accuracy(logits, torch.tensor([1, 0]))


def test_accumulator_sums_floats_and_tensors():
    acc = train.Accumulator(2)
    acc.add(1.0, torch.tensor(2.0))
    acc.add(torch.tensor(3.0), 4)
    assert (acc[0], acc[1]) == (4.0, 6.0)
    with pytest.raises(ValueError, match="holds 2"):
        acc.add(1.0)


def blobs(n=400, seed=0):
    """Two Gaussian blobs: a problem a linear classifier solves, to test the loop's mechanics."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    X = torch.randn(n, 2, generator=g) + 3 * (2 * y[:, None] - 1)
    return X, y


def test_train_classifier_learns_and_records_history(capsys):
    torch.manual_seed(0)
    X, y = blobs()
    loader = data.TensorLoader(X, y, batch_size=32, shuffle=True)
    net = nn.Linear(2, 2)
    history = train.train_classifier(net, loader, loader, 3, torch.optim.SGD(net.parameters(), lr=0.1),
                                     device=torch.device("cpu"), plot=False, progress=False)
    assert len(history.train_loss) == len(history.test_acc) == len(history.examples_per_sec) == 3
    assert history.test_acc[-1] > 0.95
    assert history.train_loss[-1] < history.train_loss[0]
    assert "test acc" in capsys.readouterr().out


def test_train_classifier_in_estimate_mode_times_its_loop_and_an_evaluation_and_returns(monkeypatch, capsys):
    from common import progress

    monkeypatch.setenv("COURSE_ESTIMATE_STEPS", "3")
    monkeypatch.setattr(progress, "ESTIMATE_MIN_SECONDS", 0.0)
    X, y = blobs()
    loader = data.TensorLoader(X, y, batch_size=8)  # 50 batches per epoch
    net = nn.Linear(2, 2)
    history = train.train_classifier(net, loader, loader, 4, torch.optim.SGD(net.parameters(), lr=0.1),
                                     device=torch.device("cpu"), plot=False, desc="demo")
    assert history.test_acc == []  # stopped after 1 + 3 batches, before the first epoch ended
    lines = [m.groupdict() for m in progress.ESTIMATE_LINE.finditer(capsys.readouterr().out)]
    assert [(line["desc"], line["total"]) for line in lines] == [("demo", "200"), ("demo, evaluations", "4")]
    evaluations = lines[1]  # no epoch's evaluations ran, so all 4 are still to come
    assert float(evaluations["left"]) == pytest.approx(4 * float(evaluations["seconds"]), rel=2e-3)


def test_train_classifier_accepts_from_scratch_models():
    torch.manual_seed(0)
    X, y = blobs()
    W = torch.zeros(2, 2, requires_grad=True)

    class PlainSGD:
        def zero_grad(self):
            W.grad = None

        def step(self):
            with torch.no_grad():
                W.sub_(0.1 * W.grad)

    loader = data.TensorLoader(X, y, batch_size=32)
    history = train.train_classifier(lambda X: X @ W, loader, loader, 2, PlainSGD(),
                                     device=torch.device("cpu"), plot=False, progress=False)
    assert history.test_acc[-1] > 0.95


def test_evaluate_accuracy_restores_training_mode():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    net.train()
    X, y = blobs(64)
    train.evaluate_accuracy(net, [(X, y)], torch.device("cpu"))
    assert net.training


def test_train_classifier_rejects_zero_epochs():
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="num_epochs"):
        train.train_classifier(net, [], [], 0, torch.optim.SGD(net.parameters(), lr=0.1))


def test_channels_last_only_for_conv_nets_on_cuda_and_cpu():
    conv_net, mlp = nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Sequential(nn.Linear(2, 2))
    assert train.uses_channels_last(conv_net, torch.device("cpu"))
    assert train.uses_channels_last(conv_net, torch.device("cuda"))
    assert not train.uses_channels_last(conv_net, torch.device("mps"))
    assert not train.uses_channels_last(mlp, torch.device("cpu"))
    assert not train.uses_channels_last(lambda X: X, torch.device("cpu"))  # a from-scratch model


def test_init_cnn_draws_he_weights_and_zero_biases():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Linear(1000, 500), nn.Linear(4, 2, bias=False))
    net.apply(train.init_cnn)
    conv, linear = net[0], net[2]
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    assert linear.weight.std().item() == pytest.approx((2 / 1000) ** 0.5, rel=0.05)
    assert conv.bias.abs().sum() == 0 and linear.bias.abs().sum() == 0


def test_scratch_sgd_takes_the_same_steps_as_torch_optim_sgd():
    torch.manual_seed(0)
    X, y = blobs()
    ours, theirs = nn.Linear(2, 2), nn.Linear(2, 2)
    theirs.load_state_dict(ours.state_dict())
    frozen = torch.zeros(3, requires_grad=True)  # never used: no gradient, must not move
    for optimizer, net in [(train.SGD([*ours.parameters(), frozen], lr=0.5), ours),
                           (torch.optim.SGD(theirs.parameters(), lr=0.5), theirs)]:
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(X), y).backward()
            optimizer.step()
    torch.testing.assert_close(ours.weight, theirs.weight)
    torch.testing.assert_close(ours.bias, theirs.bias)
    assert frozen.abs().sum() == 0
    with pytest.raises(ValueError, match="empty parameter list"):
        train.SGD([], lr=0.1)


def test_mixed_precision_follows_compute_capability():
    net = nn.Linear(2, 2)
    adam = torch.optim.Adam(net.parameters())
    for capability in [(7, 0), (7, 5)]:  # V100, T4: bf16 would be emulated
        assert train.mixed_precision(capability, net, adam) == (torch.float16, True)
    for capability in [(8, 0), (8, 6), (9, 0)]:  # A100, RTX 30xx, H100: bf16 tensor cores, no scaler
        assert train.mixed_precision(capability, net, adam) == (torch.bfloat16, False)
    assert train.mixed_precision(None, net, adam) == (None, False)  # CPU, MPS
    # fp16 needs the scaler, which needs param_groups: the scratch optimiser trains in float32.
    assert train.mixed_precision((7, 5), net, train.SGD(net.parameters(), lr=0.1)) == (None, False)
    assert train.mixed_precision((8, 0), net, train.SGD(net.parameters(), lr=0.1)) == (torch.bfloat16, False)
    assert train.mixed_precision((7, 5), lambda X: X, adam) == (None, False)  # from-scratch model


def _train_as_on(capability, monkeypatch, net, make_optimizer, epochs=2):
    """train_classifier on the CPU, deciding precision as on a CUDA GPU of this capability."""
    monkeypatch.setattr(train, "_cuda_capability", lambda dev: capability)
    steps = []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step",
                        lambda self, opt, *a, **k: steps.append(self.get_scale()) or real_step(self, opt, *a, **k))
    X, y = blobs()
    loader = data.TensorLoader(X, y, batch_size=32)
    history = train.train_classifier(net, loader, loader, epochs, make_optimizer(), device=torch.device("cpu"),
                                     plot=False, progress=False)
    return history, steps


def test_fp16_with_gradient_scaler_trains_like_float32(monkeypatch):
    # The scaler path of a T4, run on the CPU (autocast and GradScaler both take device "cpu").
    torch.manual_seed(0)
    net, reference = nn.Linear(2, 2), nn.Linear(2, 2)
    reference.load_state_dict(net.state_dict())
    history, scales = _train_as_on((7, 5), monkeypatch, net, lambda: torch.optim.SGD(net.parameters(), lr=0.1))
    assert len(scales) == 2 * 13 and scales[0] == 2.0 ** 16  # every batch went through scaler.step
    # Gradients that overflow fp16 make the scaler skip the step and halve the scale: here at the start.
    skipped = sum(later < earlier for earlier, later in zip(scales, scales[1:]))
    assert skipped >= 1 and scales[skipped:] == [scales[-1]] * (len(scales) - skipped)
    assert history.test_acc[-1] > 0.95
    # Reference: plain float32 SGD by hand, on the same batches less the skipped ones.
    X, y = blobs()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, len(X), 32)]
    for Xb, yb in (batches + batches)[skipped:]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference(Xb), yb).backward()
        optimizer.step()
    torch.testing.assert_close(net.weight, reference.weight, atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(net.bias, reference.bias, atol=5e-3, rtol=5e-3)
    cpu_net = nn.Linear(2, 2)
    _, no_scaler = _train_as_on(None, monkeypatch, cpu_net, lambda: torch.optim.SGD(cpu_net.parameters(), lr=0.1))
    assert no_scaler == []  # the CPU itself trains in float32, without a scaler


def test_scratch_optimizer_trains_where_the_scaler_would_be_on(monkeypatch):
    # Before autocast and scaler were tied, a T4 called scaler.step(train.SGD): no param_groups.
    torch.manual_seed(0)
    W = torch.zeros(2, 2, requires_grad=True)
    history, steps = _train_as_on((7, 5), monkeypatch, lambda X: X @ W, lambda: train.SGD([W], lr=0.1))
    assert steps == [] and history.test_acc[-1] > 0.95
    net = nn.Linear(2, 2)
    history, steps = _train_as_on((7, 5), monkeypatch, net, lambda: train.SGD(net.parameters(), lr=0.1))
    assert steps == [] and history.test_acc[-1] > 0.95


def _blob_loaders(X=None, y=None):
    X0, y0 = blobs()
    loader = data.TensorLoader(X0 if X is None else X, y0 if y is None else y, batch_size=32)
    return loader, data.TensorLoader(X0, y0, batch_size=32)


@pytest.mark.parametrize("change, error, message", [
    ({"num_epochs": 1.5}, TypeError, "num_epochs must be a whole number"),
    ({"optimizer": None}, TypeError, r"optimizer must have zero_grad\(\) and step\(\).*got None"),
    ({"train_iter": []}, ValueError, "train_iter has no minibatches"),
    ({"test_iter": []}, ValueError, "test_iter has no minibatches"),
    ({"labels": lambda y: y.float()}, TypeError, r"Labels must be integer class indices, got dtype torch.float32"),
    ({"labels": lambda y: y + 5}, ValueError, r"class indices in \[0, 1\] \(the net outputs 2 logits\), got labels "
                                              "from 5 to 6"),
    ({"labels": lambda y: y - 1}, ValueError, "got labels from -1 to 0"),
])
def test_train_classifier_checks_its_arguments(change, error, message):
    net = nn.Linear(2, 2)
    X, y = blobs()
    y = change.get("labels", lambda y: y)(y)
    train_iter, test_iter = _blob_loaders(X, y)
    args = {"num_epochs": 2, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1), "train_iter": train_iter,
            "test_iter": test_iter} | {k: v for k, v in change.items() if k != "labels"}
    with pytest.raises(error, match=message):
        train.train_classifier(net, args["train_iter"], args["test_iter"], args["num_epochs"], args["optimizer"],
                               device=torch.device("cpu"), plot=False, progress=False)


def test_train_classifier_on_a_generator_without_batches():
    net = nn.Linear(2, 2)
    _, test_iter = _blob_loaders()
    with pytest.raises(ValueError, match="train_iter yielded no minibatches"):
        train.train_classifier(net, (b for b in []), test_iter, 1, torch.optim.SGD(net.parameters(), lr=0.1),
                               device=torch.device("cpu"), plot=False, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_train_classifier_stops_when_the_loss_is_not_finite(bad):
    X, y = blobs()
    X[100, 0] = bad  # in the 4th batch of 32 (batches are not shuffled)
    train_iter, test_iter = _blob_loaders(X, y)
    net = nn.Linear(2, 2)
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at epoch 1, batch 4 \(of 13\).*isfinite"):
        train.train_classifier(net, train_iter, test_iter, 3, torch.optim.SGD(net.parameters(), lr=0.1),
                               device=torch.device("cpu"), plot=False, progress=False)


def test_train_classifier_stops_when_the_loss_diverges_later():
    train_iter, test_iter = _blob_loaders()
    net = nn.Linear(2, 2)

    class BreaksAfter20Steps(torch.optim.SGD):
        steps = 0

        def step(self, closure=None):
            super().step(closure)
            self.steps += 1
            if self.steps == 20:  # after batch 7 of epoch 2 (13 batches per epoch)
                with torch.no_grad():
                    net.weight[0, 0] = float("nan")

    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 2, batch 8 \(of 13\)"):
        train.train_classifier(net, train_iter, test_iter, 3, BreaksAfter20Steps(net.parameters(), lr=0.1),
                               device=torch.device("cpu"), plot=False, progress=False)


def test_evaluate_accuracy_refuses_an_empty_loader():
    with pytest.raises(ValueError, match="evaluate_accuracy got no examples"):
        train.evaluate_accuracy(nn.Linear(2, 2), [], torch.device("cpu"))


@pytest.mark.parametrize("lr, error", [(-0.1, ValueError), ("0.1", TypeError), (float("nan"), ValueError)])
def test_scratch_sgd_refuses_learning_rates_torch_refuses(lr, error):
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError):
        torch.optim.SGD(params, lr=-0.1)  # the reference: torch refuses a negative one too
    with pytest.raises(error, match="lr must be"):
        train.SGD(params, lr=lr)


# Early stopping ---------------------------------------------------------------------------------

def _net_at(value):
    """A tiny module whose weights all equal ``value``: its state says which epoch it is from."""
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(value), net.bias.fill_(value)
    return net


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.72, 0.71, 0.5]  # best: epoch 5; three worse ones follow
    stopper = train.EarlyStopping([(torch.zeros(1, 2), torch.zeros(1).long())], patience=3)
    net = nn.Linear(2, 2)
    decisions = []
    for epoch, valid_loss in enumerate(losses, start=1):
        with torch.no_grad():
            net.weight.fill_(epoch), net.bias.fill_(-epoch)
        decisions.append(stopper.update(valid_loss, net))
        if decisions[-1]:
            break
    assert decisions == [False] * 7 + [True]  # epoch 8 is the third in a row without improvement
    assert (stopper.best_epoch, stopper.best_loss, stopper.valid_loss) == (5, 0.7, losses[:8])
    with torch.no_grad():
        net.weight.fill_(123.0)  # the kept copy is a copy, not a view of the live weights
    stopper.restore(net)
    torch.testing.assert_close(net.weight, torch.full((2, 2), 5.0))
    torch.testing.assert_close(net.bias, torch.full((2,), -5.0))


def test_early_stopping_min_delta_ignores_tiny_improvements():
    stopper = train.EarlyStopping([(torch.zeros(1, 2), torch.zeros(1).long())], patience=3, min_delta=0.05)
    net = nn.Linear(2, 2)
    assert [stopper.update(v, net) for v in [1.0, 0.98, 0.97, 0.96]] == [False, False, False, True]
    assert stopper.best_epoch == 1
    plain = train.EarlyStopping([(torch.zeros(1, 2), torch.zeros(1).long())], patience=3)
    assert [plain.update(v, net) for v in [1.0, 0.98, 0.97, 0.96]] == [False] * 4 and plain.best_epoch == 4


def test_early_stopping_keeps_its_copy_on_the_cpu():
    stopper = train.EarlyStopping([(torch.zeros(1, 2), torch.zeros(1).long())])
    net = _net_at(2.0)
    stopper.update(1.0, net)
    assert all(t.device.type == "cpu" for t in stopper.best_state.values())
    assert stopper.best_state["weight"].data_ptr() != net.weight.data_ptr()


def test_evaluate_loss_is_the_mean_over_examples():
    torch.manual_seed(0)
    X, y = blobs(100)
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))  # dropout must be off while evaluating
    loader = data.TensorLoader(X, y, batch_size=32)  # 32, 32, 32, 4: batches of unequal size
    mean_loss, acc = train.evaluate_loss(net, loader, device=torch.device("cpu"))
    with torch.no_grad():
        logits = net[0](X)
    assert mean_loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert acc == pytest.approx((logits.argmax(1) == y).double().mean().item())
    with pytest.raises(ValueError, match="evaluate_loss got no examples"):
        train.evaluate_loss(net, [], device=torch.device("cpu"))


def _scripted_valid_loss(losses, net, weights_seen):
    """A 'loss' for the validation data (one batch) that returns the scripted values in turn and
    records the weights the net had when it was evaluated."""
    calls = iter(losses)

    def loss(y_hat, y):
        weights_seen.append(net.weight.detach().clone())
        return torch.tensor(next(calls), dtype=torch.float64)
    return loss


def test_train_classifier_stops_early_and_restores_the_best_weights(capsys):
    torch.manual_seed(0)
    train_iter, _ = _blob_loaders()
    X, y = blobs(64, seed=1)
    net, seen = nn.Linear(2, 2), []
    losses = [0.9, 0.6, 0.7, 0.65, 0.8, 0.1]  # best at epoch 2; patience 3 stops after epoch 5
    stopper = train.EarlyStopping([(X, y)], patience=3, loss=_scripted_valid_loss(losses, net, seen))
    history = train.train_classifier(net, train_iter, train_iter, 20, torch.optim.SGD(net.parameters(), lr=0.1),
                                     device=torch.device("cpu"), plot=False, progress=False,
                                     early_stopping=stopper)
    assert len(history.train_loss) == len(history.test_acc) == len(history.valid_loss) == 5
    assert history.valid_loss == losses[:5] and history.best_epoch == 2 and len(history.valid_acc) == 5
    assert not torch.equal(seen[1], seen[4])  # training did move the weights after epoch 2
    torch.testing.assert_close(net.weight, seen[1], rtol=0, atol=0)
    assert "weights of epoch 2 restored (valid loss 0.600" in capsys.readouterr().out


def test_train_classifier_without_early_stopping_is_unchanged(capsys):
    runs = []
    for early_stopping in (None, "patience larger than the run"):
        torch.manual_seed(0)
        train_iter, valid_iter = _blob_loaders()
        net = nn.Linear(2, 2)
        stopper = None if early_stopping is None else train.EarlyStopping(valid_iter, patience=10)
        history = train.train_classifier(net, train_iter, valid_iter, 3, torch.optim.SGD(net.parameters(), lr=0.1),
                                         device=torch.device("cpu"), plot=False, progress=False,
                                         early_stopping=stopper)
        runs.append((history, net.weight.detach().clone(), capsys.readouterr().out))
    (plain, _, plain_out), (stopped, _, stopped_out) = runs
    assert (plain.valid_loss, plain.valid_acc, plain.best_epoch) == ([], [], None)
    assert "early stopping" not in plain_out and "early stopping" in stopped_out
    assert plain_out.count("\n") == 1  # one summary line, as before early stopping existed
    # Evaluating on validation data draws no random numbers: the same seed trains the same way.
    assert plain.train_loss == stopped.train_loss and plain.test_acc == stopped.test_acc
    assert len(stopped.valid_loss) == 3


@pytest.mark.parametrize("make, error, message", [
    (lambda v: train.EarlyStopping(v, patience=0), ValueError, "patience must be a positive integer, got 0"),
    (lambda v: train.EarlyStopping(v, patience=2.5), TypeError, "patience must be a whole number"),
    (lambda v: train.EarlyStopping(v, min_delta=-0.1), ValueError, "min_delta must be a finite number >= 0"),
    (lambda v: train.EarlyStopping([]), ValueError, "valid_iter has no minibatches"),
    (lambda v: train.EarlyStopping(3), TypeError, "valid_iter must be an iterable of"),
    (lambda v: train.EarlyStopping(v).restore(nn.Linear(2, 2)), RuntimeError, "no epoch has been recorded"),
    (lambda v: train.EarlyStopping(v).step(lambda X: X), TypeError, "must be an nn.Module, got function"),
])
def test_early_stopping_checks_its_arguments(make, error, message):
    _, valid_iter = _blob_loaders()
    with pytest.raises(error, match=message):
        make(valid_iter)


def test_train_classifier_checks_its_early_stopping_argument():
    train_iter, valid_iter = _blob_loaders()
    W = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(TypeError, match="net must be an nn.Module, got function"):
        train.train_classifier(lambda X: X @ W, train_iter, valid_iter, 2, train.SGD([W], lr=0.1),
                               device=torch.device("cpu"), plot=False, progress=False,
                               early_stopping=train.EarlyStopping(valid_iter))
    net = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="early_stopping must be a train.EarlyStopping or None, got int"):
        train.train_classifier(net, train_iter, valid_iter, 2, torch.optim.SGD(net.parameters(), lr=0.1),
                               device=torch.device("cpu"), plot=False, progress=False, early_stopping=5)


def test_training_plot_marks_the_best_epoch():
    torch.manual_seed(0)
    train_iter, valid_iter = _blob_loaders()
    net = nn.Linear(2, 2)
    plots = []
    real_finish = train._LivePlotWithBest.finish

    def finish(self):
        plots.append(self)
        real_finish(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train._LivePlotWithBest, "finish", finish)
        history = train.train_classifier(net, train_iter, valid_iter, 3, torch.optim.SGD(net.parameters(), lr=0.1),
                                         device=torch.device("cpu"), progress=False,
                                         early_stopping=train.EarlyStopping(valid_iter, patience=5))
    (live,) = plots
    assert set(live.curves) == {"train loss", "valid loss", "train acc", "valid acc", "test acc"}
    for ax in live.all_axes:
        marks = [line for line in ax.get_lines() if line.get_label().startswith("best epoch")]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [history.best_epoch] * 2
    import matplotlib.pyplot as plt
    plt.close(live.fig)
