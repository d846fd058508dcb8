import matplotlib

matplotlib.use("Agg")
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


def test_live_plot_is_silent_outside_jupyter(capsys):
    live = plot.LivePlot()
    for epoch in range(3):
        live.add(epoch, {"loss": 1.0 / (epoch + 1)})
    live.finish()
    assert capsys.readouterr().out == ""
    assert len(live.axes.get_lines()) == 1 and list(live.curves["loss"][0]) == [0, 1, 2]
