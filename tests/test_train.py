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
