"""Figures: display settings, a d2l-style ``plot``, image grids and a live training plot."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from .checks import check_int


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
    # Setting a scale resets the ticks: only change it when it differs, so that ticks the caller
    # set (class names under a bar chart) survive.
    if axes.get_xscale() != xscale:
        axes.set_xscale(xscale)
    if axes.get_yscale() != yscale:
        axes.set_yscale(yscale)
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
    _check_curve_lengths(X, Y)
    if axes is None:
        axes = plt.figure(figsize=figsize).gca()
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts * len(Y)):
        x, y = _as_numpy(x), _as_numpy(y)
        axes.plot(x, y, fmt) if len(x) else axes.plot(y, fmt)
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend)
    return axes


def _check_curve_lengths(X, Y) -> None:
    for i, (x, y) in enumerate(zip(X, Y)):
        if len(x) and len(x) != len(y):
            raise ValueError(f"Curve {i}: x has {len(x)} values but y has {len(y)}. Give one x per y value "
                             "(or only Y, to plot against the index).")


def _image_to_show(img, i: int):
    """A tensor image (C, H, W) or (H, W) as an array imshow takes; other images as they are."""
    if not isinstance(img, torch.Tensor):
        return img
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[0] not in (1, 3, 4)):
        raise ValueError(f"Image {i} has shape {tuple(img.shape)}: show_images takes images (C, H, W) with 1, 3 "
                         "or 4 channels, or (H, W). Pass a batch (N, C, H, W) itself, not a list of batches; "
                         "permute channels-last images (H, W, C) with img.permute(2, 0, 1).")
    img = img.detach().cpu()
    img = img.permute(1, 2, 0) if img.ndim == 3 else img
    img = img.squeeze(-1) if img.ndim == 3 and img.shape[-1] == 1 else img
    return img.numpy()


def _aspect_ratio(img) -> float:
    """Height over width of an image as imshow takes it (array or PIL image)."""
    width, height = img.size if hasattr(img, "getbbox") else (np.shape(img)[1], np.shape(img)[0])
    return height / width


def show_images(images, num_rows: int, num_cols: int, titles: Sequence[str] | None = None,
                scale: float = 1.5):
    """A grid of images: tensors (C, H, W) or (H, W), arrays or PIL images. Returns the axes.

    Each cell is ``scale`` inches wide and as high as the first image's aspect ratio asks, so
    that wide photos leave no empty bands between the rows.
    """
    num_rows, num_cols = check_int("num_rows", num_rows, minimum=1), check_int("num_cols", num_cols, minimum=1)
    images = [_image_to_show(img, i) for i, img in zip(range(num_rows * num_cols), images)]
    figsize = (num_cols * scale, num_rows * scale * _aspect_ratio(images[0]) if images else num_rows * scale)
    _, axes = plt.subplots(num_rows, num_cols, figsize=figsize, squeeze=False)
    axes = axes.flatten()
    for i, (ax, img) in enumerate(zip(axes, images)):
        ax.imshow(img, cmap="gray" if np.ndim(img) == 2 else None)
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=9)
    return axes


@dataclass
class Panel:
    """One axes of a :class:`LivePlot`: its y label, the curves it shows, its y range and scale.

    ``curves`` names the curves drawn here; a panel with no names takes every curve that no
    other panel names. ``ylim=None`` autoscales to the data.
    """

    ylabel: str | None = None
    curves: Sequence[str] = ()
    ylim: tuple[float, float] | None = None
    yscale: str = "linear"


class LivePlot:
    """Curves that grow while a model trains, in one or several side-by-side panels.

    In Jupyter the figure is redrawn in place (one output, no ``<Figure ...>`` lines); anywhere
    else it stays silent until :meth:`finish`. Call ``add(x, {"name": value, ...})`` per point.
    One panel by default (``ylabel``, ``ylim``, ``yscale``); pass ``panels`` for several, e.g.
    the loss on its own autoscaled axis beside accuracies in [0, 1].
    """

    def __init__(self, xlabel: str = "epoch", ylabel: str | None = None, xlim=None, ylim=None,
                 yscale: str = "linear", figsize=None, panels: Sequence[Panel] | None = None):
        self.panels = list(panels) if panels else [Panel(ylabel, (), ylim, yscale)]
        figsize = figsize or (3.5 * len(self.panels), 2.5)
        self.fig, axes = plt.subplots(1, len(self.panels), figsize=figsize, squeeze=False)
        self.all_axes = list(axes[0])
        self.axes = self.all_axes[0]  # the first (or only) panel
        self.xlabel, self.xlim = xlabel, xlim
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

    def _panel_of(self, name: str) -> int:
        for i, panel in enumerate(self.panels):
            if name in panel.curves:
                return i
        catch_all = [i for i, panel in enumerate(self.panels) if not panel.curves]
        return catch_all[0] if catch_all else 0

    def _draw(self) -> None:
        for ax in self.all_axes:
            ax.cla()
        for name, (xs, ys) in self.curves.items():
            self.all_axes[self._panel_of(name)].plot(xs, ys, label=name)
        for ax, panel in zip(self.all_axes, self.panels):
            set_axes(ax, self.xlabel, panel.ylabel, self.xlim, panel.ylim, "linear", panel.yscale)
            if ax.get_lines():
                ax.legend(loc="best")
        self.fig.tight_layout()

    def finish(self) -> None:
        """Draw the final state; in Jupyter, close the figure so that it is not shown twice."""
        self._draw()
        if self.live:
            plt.close(self.fig)
