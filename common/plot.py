"""Figures: display settings, a d2l-style ``plot``, image grids and a live training plot."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where figures can be displayed and updated in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def use_svg_display() -> None:
    """Render inline figures as crisp SVG in Jupyter; does nothing elsewhere."""
    if in_notebook():
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("svg")


def set_figsize(figsize: tuple[float, float] = (3.5, 2.5)) -> None:
    """Default size of new figures, in inches."""
    plt.rcParams["figure.figsize"] = figsize


def set_axes(axes, xlabel=None, ylabel=None, xlim=None, ylim=None, xscale="linear",
             yscale="linear", legend=None) -> None:
    """Labels, limits, scales, legend and grid of a matplotlib axes in one call."""
    axes.set_xlabel(xlabel), axes.set_ylabel(ylabel)
    axes.set_xscale(xscale), axes.set_yscale(yscale)
    axes.set_xlim(xlim), axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid(True)


def _as_numpy(values):
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def plot(X, Y=None, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear",
         yscale="linear", fmts=("-", "m--", "g-.", "r:"), figsize=(3.5, 2.5), axes=None):
    """Plot one or several curves. ``X`` and ``Y`` may be lists of curves, tensors or arrays.

    With only ``X``, its values are plotted against their index. Returns the axes.
    """
    def has_one_axis(v):
        return (hasattr(v, "ndim") and v.ndim == 1) or (isinstance(v, list) and not hasattr(v[0], "__len__"))

    if Y is None:
        X, Y = [[]] * (1 if has_one_axis(X) else len(X)), X
    if has_one_axis(X):
        X = [X]
    if has_one_axis(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    if axes is None:
        axes = plt.figure(figsize=figsize).gca()
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts * len(Y)):
        x, y = _as_numpy(x), _as_numpy(y)
        axes.plot(x, y, fmt) if len(x) else axes.plot(y, fmt)
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend)
    return axes


def show_images(images, num_rows: int, num_cols: int, titles: Sequence[str] | None = None,
                scale: float = 1.5):
    """A grid of images: tensors (C, H, W) or (H, W), arrays or PIL images. Returns the axes."""
    figsize = (num_cols * scale, num_rows * scale)
    _, axes = plt.subplots(num_rows, num_cols, figsize=figsize, squeeze=False)
    axes = axes.flatten()
    for i, (ax, img) in enumerate(zip(axes, images)):
        if isinstance(img, torch.Tensor):
            img = img.detach().cpu()
            img = img.permute(1, 2, 0) if img.ndim == 3 else img
            img = img.squeeze(-1) if img.ndim == 3 and img.shape[-1] == 1 else img
            img = img.numpy()
        ax.imshow(img, cmap="gray" if np.ndim(img) == 2 else None)
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=9)
    return axes


class LivePlot:
    """Curves that grow while a model trains.

    In Jupyter the figure is redrawn in place (one output, no ``<Figure ...>`` lines); anywhere
    else it stays silent until :meth:`finish`. Call ``add(x, {"name": value, ...})`` per point.
    """

    def __init__(self, xlabel: str = "epoch", ylabel: str | None = None, xlim=None, ylim=None,
                 yscale: str = "linear", figsize=(3.5, 2.5)):
        self.fig, self.axes = plt.subplots(figsize=figsize)
        self.options = dict(xlabel=xlabel, ylabel=ylabel, xlim=xlim, ylim=ylim, yscale=yscale)
        self.curves: dict[str, tuple[list[float], list[float]]] = {}
        self.handle = None
        self.live = in_notebook() and matplotlib.get_backend().lower().endswith("inline")

    def add(self, x: float, values: dict[str, float]) -> None:
        for name, y in values.items():
            xs, ys = self.curves.setdefault(name, ([], []))
            xs.append(x), ys.append(float(y))
        if self.live:
            self._draw()
            from IPython.display import display

            if self.handle is None:
                self.handle = display(self.fig, display_id=True)
            else:
                self.handle.update(self.fig)

    def _draw(self) -> None:
        self.axes.cla()
        for name, (xs, ys) in self.curves.items():
            self.axes.plot(xs, ys, label=name)
        set_axes(self.axes, **self.options)
        self.axes.legend(loc="best")

    def finish(self) -> None:
        """Draw the final state; in Jupyter, close the figure so that it is not shown twice."""
        self._draw()
        if self.live:
            plt.close(self.fig)
