"""A small reverse-mode automatic differentiation engine in NumPy.

The notebook ``chapter_preliminaries/autograd-from-scratch`` derives it step by step and checks
every operation against PyTorch; ``framework-from-scratch`` builds layers, losses and an
optimiser on top of it. A :class:`Tensor` wraps a float64 array and remembers its ``parents``,
the operation ``op`` that made it and ``backward_fn``, which maps the gradient of the result to
one gradient per parent; :meth:`Tensor.backward` walks the graph in reverse topological order.

Operations: ``add``, ``mul``, ``matmul`` (2-D), ``tsum``, ``mean``, ``relu``, ``tanh``,
``sigmoid``, ``exp``, ``log``, ``log_softmax`` and ``take_rows`` (an embedding lookup), with
NumPy broadcasting; the operators ``+ - * @`` and ``.sum()``/``.mean()`` call them.
"""
from __future__ import annotations

import numpy as np


class Tensor:
    """A NumPy array that remembers how it was computed."""

    def __init__(self, data, parents=(), op="", backward_fn=None):
        self.data = np.asarray(data, dtype=np.float64)
        self.parents = parents          # the tensors this one was computed from
        self.op = op                    # name of the operation that created it ("" for a leaf)
        self.backward_fn = backward_fn  # d(loss)/d(self) -> one gradient per parent
        self.grad = None                # d(loss)/d(self), filled in by backward()

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Tensor(shape={self.shape}, op={self.op or 'leaf'!r})"

    def detach(self) -> Tensor:
        """A new leaf with the same values: gradients stop here (truncated backpropagation)."""
        return Tensor(self.data.copy())

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(node) into ``node.grad`` for every node ``self`` depends on."""
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() needs a gradient for a non-scalar of shape {self.shape}")
            grad = np.ones_like(self.data)
        pending = {id(self): np.asarray(grad, dtype=np.float64)}  # gradients collected so far
        for node in topological_order(self):
            g = pending.pop(id(node))  # complete: all consumers were visited
            node.grad = g if node.grad is None else node.grad + g
            if node.backward_fn is not None:
                for parent, contribution in zip(node.parents, node.backward_fn(g)):
                    pending[id(parent)] = pending[id(parent)] + contribution if id(parent) in pending else contribution


def topological_order(root: Tensor) -> list[Tensor]:
    """Every node that ``root`` depends on, each after all the nodes that consume it."""
    order, seen = [], set()

    def visit(node):
        if id(node) not in seen:
            seen.add(id(node))
            for parent in node.parents:
                visit(parent)
            order.append(node)  # after its parents

    visit(root)
    return order[::-1]  # root first, leaves last


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, to get ``shape`` back."""
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))  # added leading axes
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True).reshape(shape)


def as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def add(a, b) -> Tensor:
    a, b = as_tensor(a), as_tensor(b)
    return Tensor(a.data + b.data, (a, b), "add",
                  lambda g: (unbroadcast(g, a.shape), unbroadcast(g, b.shape)))


def mul(a, b) -> Tensor:
    a, b = as_tensor(a), as_tensor(b)
    return Tensor(a.data * b.data, (a, b), "mul",
                  lambda g: (unbroadcast(g * b.data, a.shape), unbroadcast(g * a.data, b.shape)))


def matmul(a, b) -> Tensor:
    a, b = as_tensor(a), as_tensor(b)
    if a.data.ndim != 2 or b.data.ndim != 2:
        raise ValueError(f"matmul takes 2-D tensors, got shapes {a.shape} and {b.shape}")
    return Tensor(a.data @ b.data, (a, b), "matmul", lambda g: (g @ b.data.T, a.data.T @ g))


def tsum(a, axis=None, keepdims=False) -> Tensor:
    def backward_fn(g):
        if axis is not None and not keepdims:
            g = np.expand_dims(g, axis)  # put the summed axis back, size 1
        return (np.broadcast_to(g, a.shape).copy(),)
    return Tensor(a.data.sum(axis=axis, keepdims=keepdims), (a,), "sum", backward_fn)


def mean(a, axis=None, keepdims=False) -> Tensor:
    s = tsum(a, axis, keepdims)
    return mul(s, s.data.size / a.data.size)


def relu(a) -> Tensor:
    return Tensor(np.maximum(a.data, 0), (a,), "relu", lambda g: (g * (a.data > 0),))


def tanh(a) -> Tensor:
    y = np.tanh(a.data)
    return Tensor(y, (a,), "tanh", lambda g: (g * (1 - y ** 2),))


def sigmoid(a) -> Tensor:
    y = 0.5 * (1 + np.tanh(0.5 * a.data))  # = 1 / (1 + exp(-x)), without overflow for large |x|
    return Tensor(y, (a,), "sigmoid", lambda g: (g * y * (1 - y),))


def exp(a) -> Tensor:
    y = np.exp(a.data)
    return Tensor(y, (a,), "exp", lambda g: (g * y,))


def log(a) -> Tensor:
    return Tensor(np.log(a.data), (a,), "log", lambda g: (g / a.data,))


def log_softmax(a, axis=-1) -> Tensor:
    shifted = a.data - a.data.max(axis=axis, keepdims=True)
    y = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return Tensor(y, (a,), "log_softmax",
                  lambda g: (g - np.exp(y) * g.sum(axis=axis, keepdims=True),))


def take_rows(table, indices) -> Tensor:
    """Rows ``table[indices]`` of a 2-D tensor (an embedding lookup): shape ``indices.shape + (d,)``.

    A row used several times receives the sum of its gradients (``np.add.at``).
    """
    indices = np.asarray(indices)
    if not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"take_rows needs integer indices, got dtype {indices.dtype}.")
    if table.data.ndim != 2:
        raise ValueError(f"take_rows reads rows of a 2-D table, got shape {table.shape}.")

    def backward_fn(g):
        grad = np.zeros_like(table.data)
        np.add.at(grad, indices, g)
        return (grad,)
    return Tensor(table.data[indices], (table,), "take_rows", backward_fn)


Tensor.__add__ = add
Tensor.__radd__ = lambda self, other: add(other, self)
Tensor.__mul__ = mul
Tensor.__rmul__ = lambda self, other: mul(other, self)
Tensor.__neg__ = lambda self: mul(self, -1.0)
Tensor.__sub__ = lambda self, other: add(self, -as_tensor(other))
Tensor.__rsub__ = lambda self, other: add(other, -self)
Tensor.__matmul__ = matmul
Tensor.sum = tsum
Tensor.mean = mean
