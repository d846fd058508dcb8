import matplotlib

matplotlib.use("Agg")
import pytest
import torch

from common import plot


def test_plot_draws_one_line_per_curve():
    x = torch.arange(5.0)
    axes = plot.plot(x, [x, x**2], legend=["x", "x^2"])
    assert len(axes.get_lines()) == 2
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["x", "x^2"]


def test_show_images_accepts_gray_and_color_tensors():
    imgs = [torch.rand(1, 8, 8), torch.rand(3, 8, 8), torch.rand(8, 8)]
    axes = plot.show_images(imgs, 1, 3, titles=["a", "b", "c"])
    assert [ax.get_title() for ax in axes] == ["a", "b", "c"]


def test_show_images_sizes_the_figure_by_the_aspect_ratio():
    from PIL import Image

    wide = plot.show_images([torch.rand(3, 10, 20)] * 4, 2, 2, scale=2)    # tensors (C, H, W)
    assert tuple(wide[0].figure.get_size_inches()) == pytest.approx((4, 2))
    photo = plot.show_images([Image.new("RGB", (30, 10))], 1, 1, scale=3)  # PIL: size is (W, H)
    assert tuple(photo[0].figure.get_size_inches()) == pytest.approx((3, 1))


def test_live_plot_is_silent_outside_jupyter(capsys):
    live = plot.LivePlot()
    for epoch in range(3):
        live.add(epoch, {"loss": 1.0 / (epoch + 1)})
    live.finish()
    assert capsys.readouterr().out == ""
    assert len(live.axes.get_lines()) == 1 and list(live.curves["loss"][0]) == [0, 1, 2]


def test_live_plot_panels_split_curves_and_autoscale_the_loss():
    live = plot.LivePlot(xlim=[1, 3], panels=[plot.Panel("loss", curves=["train loss"]),
                                              plot.Panel("accuracy", curves=["test acc"], ylim=(0, 1))])
    for epoch in range(1, 4):
        live.add(epoch, {"train loss": 2.3 / epoch, "test acc": 0.3 * epoch})
    live.finish()
    loss_axes, acc_axes = live.all_axes
    assert [line.get_label() for line in loss_axes.get_lines()] == ["train loss"]
    assert [line.get_label() for line in acc_axes.get_lines()] == ["test acc"]
    assert loss_axes.get_ylim()[1] >= 2.3, "a loss above 1 must not be clipped"
    assert acc_axes.get_ylim() == (0, 1)
    assert (loss_axes.get_xlabel(), loss_axes.get_ylabel(), acc_axes.get_ylabel()) == ("epoch", "loss", "accuracy")


def test_live_plot_unnamed_curves_go_to_the_catch_all_panel():
    live = plot.LivePlot(panels=[plot.Panel("accuracy", curves=["acc"]), plot.Panel("loss")])
    live.add(1, {"acc": 0.5, "some loss": 1.5})
    live.finish()
    assert [line.get_label() for line in live.all_axes[1].get_lines()] == ["some loss"]


def test_plot_refuses_x_and_y_of_different_lengths():
    with pytest.raises(ValueError, match="Curve 1: x has 5 values but y has 4"):
        plot.plot(torch.arange(5.0), [torch.arange(5.0), torch.arange(4.0)])
    assert len(plot.plot([torch.arange(4.0)]).get_lines()) == 1  # only Y: against the index


@pytest.mark.parametrize("rows, cols, error, message", [
    (0, 3, ValueError, "num_rows must be a positive integer, got 0"),
    (1, 2.5, TypeError, "num_cols must be a whole number"),
])
def test_show_images_checks_the_grid(rows, cols, error, message):
    with pytest.raises(error, match=message):
        plot.show_images([torch.rand(8, 8)], rows, cols)


@pytest.mark.parametrize("image", [torch.rand(2, 3, 8, 8), torch.rand(8, 8, 3)], ids=["4-D", "channels-last"])
def test_show_images_refuses_tensors_that_are_not_images(image):
    with pytest.raises(ValueError, match=r"Image 0 has shape .*takes images \(C, H, W\)"):
        plot.show_images([image], 1, 1)
    assert len(plot.show_images(torch.rand(2, 8, 8), 1, 2)) == 2  # a batch of gray images (N, H, W) still works


def test_set_axes_keeps_the_callers_tick_labels_and_still_sets_scales():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(range(3), [1, 2, 3])
    ax.set_xticks(range(3), ["shirt", "bag", "boot"])
    plot.set_axes(ax, "class", "count")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["shirt", "bag", "boot"]
    plt.close(fig)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 10])
    plot.set_axes(ax, "x", "y", yscale="log")
    assert ax.get_yscale() == "log"
    plt.close(fig)
