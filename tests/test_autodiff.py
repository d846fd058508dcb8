import numpy as np
import pytest
import torch
from torch.nn import functional as F

from common import autodiff as ad

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


def check_against_torch(ours, theirs, *arrays):
    mine = [ad.Tensor(a) for a in arrays]
    ref = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, out_ref = ours(*mine), theirs(*ref)
    torch.testing.assert_close(torch.from_numpy(out.data), out_ref.detach())
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    out_ref.backward(torch.from_numpy(upstream))
    for t, r in zip(mine, ref):
        torch.testing.assert_close(torch.as_tensor(t.grad), r.grad)


CASES = {
    "add broadcast": (ad.add, torch.add, randn(3, 4), randn(4)),
    "mul broadcast 3-D": (ad.mul, torch.mul, randn(2, 3, 4), randn(3, 1)),
    "matmul": (ad.matmul, torch.matmul, randn(3, 4), randn(4, 5)),
    "sum axis": (lambda a: a.sum(axis=1), lambda a: a.sum(dim=1), randn(2, 3, 4)),
    "mean keepdims": (lambda a: a.mean(axis=-1, keepdims=True), lambda a: a.mean(dim=-1, keepdim=True), randn(3, 4)),
    "relu": (ad.relu, torch.relu, randn(3, 4)),
    "tanh": (ad.tanh, torch.tanh, randn(3, 4)),
    "sigmoid": (ad.sigmoid, torch.sigmoid, 5 * randn(3, 4)),
    "exp": (ad.exp, torch.exp, randn(3, 4)),
    "log": (ad.log, torch.log, np.abs(randn(3, 4)) + 0.1),
    "log_softmax": (lambda a: ad.log_softmax(a, 1), lambda a: F.log_softmax(a, 1), 10 * randn(3, 4)),
    "rsub, neg, rmul": (lambda a, b: 1 - a - 2 * b, lambda a, b: 1 - a - 2 * b, randn(3, 4), randn(4)),
}


@pytest.mark.parametrize("name", CASES)
def test_operation_matches_torch(name):
    ours, theirs, *arrays = CASES[name]
    check_against_torch(ours, theirs, *arrays)


def test_take_rows_sums_the_gradients_of_repeated_rows():
    table = randn(5, 3)
    indices = np.array([[0, 2, 2], [4, 0, 0]])
    check_against_torch(lambda t: ad.take_rows(t, indices), lambda t: F.embedding(torch.from_numpy(indices), t), table)


def test_take_rows_refuses_float_indices_and_1d_tables():
    with pytest.raises(TypeError, match="integer indices"):
        ad.take_rows(ad.Tensor(randn(3, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="2-D table"):
        ad.take_rows(ad.Tensor(randn(3)), np.array([0, 1]))


def test_sigmoid_is_finite_for_huge_inputs():
    y = ad.sigmoid(ad.Tensor([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(y.data, [0.0, 0.5, 1.0])


def test_detach_stops_gradients_and_reuse_adds_them():
    x = ad.Tensor(3.0)
    y = x * x            # dy/dx = 2x = 6 through both uses
    z = y.detach() * x   # the detached copy is a constant 9
    (y + z).backward()
    assert x.grad == 6.0 + 9.0


def test_backward_of_a_non_scalar_needs_a_gradient():
    with pytest.raises(ValueError, match="non-scalar"):
        ad.Tensor(randn(2, 2)).backward()
