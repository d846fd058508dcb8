"""Measuring generative models: feature statistics, the Fréchet distance, a feature classifier.

The Fréchet distance between two Gaussians :math:`\\mathcal{N}(\\mu_1, \\Sigma_1)` and
:math:`\\mathcal{N}(\\mu_2, \\Sigma_2)` is

.. math:: \\lVert \\mu_1 - \\mu_2 \\rVert^2 + \\operatorname{Tr}\\big(\\Sigma_1 + \\Sigma_2 - 2 (\\Sigma_1 \\Sigma_2)^{1/2}\\big).

Fitted to a classifier's features of real and of generated images, it measures how far the
generated images are from the real ones, as the network sees them (the FID of Heusel et al.,
2017, uses Inception-v3's features; the course uses :func:`fashion_mnist_classifier`, a small
convnet trained on Fashion-MNIST and cached by its recipe).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import config, data
from .checks import check_float_tensor

# ---------------------------------------------------------------------------------------------
# Feature statistics and the Fréchet distance
# ---------------------------------------------------------------------------------------------


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean ``(d,)`` and the unbiased covariance ``(d, d)`` of ``features`` ``(n, d)``, in float64 on the CPU.

    ``n`` must exceed ``d``: with fewer rows the covariance is singular and the Fréchet
    distance computed from it is mostly estimation error.
    """
    check_float_tensor("features", features, "feature vectors, one per row",
                       "Convert them first, e.g. features.float().")
    if features.ndim != 2:
        raise ValueError(f"features must be a matrix (n, d), one feature vector per row, got shape "
                         f"{tuple(features.shape)}. Flatten each example's features first: features.flatten(1).")
    n, d = features.shape
    if d < 1:
        raise ValueError("features has no columns (d = 0): give at least one feature per example.")
    if n <= d:
        raise ValueError(f"features has {n} rows for {d} feature dimensions: the covariance needs more rows than "
                         f"dimensions (n > d) to be of full rank. Use more than {d} examples (several times more "
                         "for a stable estimate) or fewer features.")
    x = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("features contains inf or nan: check the network that produced them.")
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (n - 1)


def _check_statistics(mu: torch.Tensor, sigma: torch.Tensor, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    mu = torch.as_tensor(mu).detach().to("cpu", torch.float64)
    sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{which} must be a vector (d,), got shape {tuple(mu.shape)}.")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"sigma{which} must be a ({d}, {d}) covariance matrix to go with mu{which} of shape ({d},), "
                         f"got shape {tuple(sigma.shape)}. Compute both with feature_statistics(features).")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"mu{which} or sigma{which} contains inf or nan.")
    scale = sigma.abs().max().item() if d else 0.0
    if not torch.allclose(sigma, sigma.T, rtol=0.0, atol=1e-8 * max(scale, 1.0)):
        raise ValueError(f"sigma{which} is not symmetric: a covariance matrix equals its transpose. "
                         "Compute it with feature_statistics(features).")
    return mu, sigma


def _psd_sqrt(S: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, via eigh."""
    eigenvalues, V = torch.linalg.eigh(S)
    return (V * eigenvalues.clamp_min(0).sqrt()) @ V.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    ``mu1``, ``mu2`` have shape ``(d,)``, ``sigma1``, ``sigma2`` shape ``(d, d)`` (symmetric,
    positive semi-definite). ``Tr (sigma1 sigma2)^(1/2)`` is the sum of the square roots of the
    eigenvalues of the symmetric matrix ``sigma1^(1/2) sigma2 sigma1^(1/2)``, which has the same
    eigenvalues as ``sigma1 sigma2``; eigenvalues that rounding makes slightly negative count as
    0, and so does a result of -1e-12.
    """
    mu1, sigma1 = _check_statistics(mu1, sigma1, 1)
    mu2, sigma2 = _check_statistics(mu2, sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"The two distributions have different dimensions: mu1 {tuple(mu1.shape)}, mu2 "
                         f"{tuple(mu2.shape)}. Compute both statistics from the same feature extractor.")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = ((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(distance.item(), 0.0)


# ---------------------------------------------------------------------------------------------
# The course's Fashion-MNIST feature classifier, cached by its recipe
# ---------------------------------------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """A small convnet for Fashion-MNIST whose penultimate layer serves as a feature extractor.

    Input: images ``(n, 1, 28, 28)`` with values in [0, 1] (as :func:`common.data.load_fashion_mnist`
    gives them). ``features(X)`` returns ``(n, num_features)`` (after a ReLU), ``forward(X)``
    the class logits ``(n, 10)``. The buffer ``test_accuracy`` holds the accuracy measured on the
    test set after training (nan for an untrained net).
    """

    def __init__(self, width: int = 16, num_features: int = 64):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, width), block(width, 2 * width), nn.Flatten(),
                                  nn.Linear(2 * width * 7 * 7, num_features), nn.ReLU())
        self.head = nn.Linear(num_features, 10)
        self.register_buffer("test_accuracy", torch.tensor(math.nan))

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(n, num_features)`` of images ``(n, 1, 28, 28)`` in [0, 1]."""
        if X.ndim != 4 or tuple(X.shape[1:]) != (1, 28, 28):
            raise ValueError(f"FeatureClassifier takes Fashion-MNIST images (n, 1, 28, 28), got shape "
                             f"{tuple(X.shape)}.")
        return self.body(X)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(X))


def classifier_recipe() -> dict:
    """The feature classifier's training settings (smaller in smoke mode); they key its cache file."""
    return {"width": config.pick(full=16, smoke=8), "features": 64, "n_train": config.pick(full=60000, smoke=8000),
            "n_test": config.pick(full=10000, smoke=2000), "epochs": config.pick(full=6, smoke=2), "batch_size": 128,
            "lr": 0.01, "version": 1}


def _train_classifier(recipe: dict) -> FeatureClassifier:
    """Adam with a one-cycle schedule on the first ``n_train`` training images; accuracy on the first
    ``n_test`` test images."""
    from .train import StepEveryBatch, train_classifier

    dev = config.device()
    train_iter, test_iter = data.load_fashion_mnist(recipe["batch_size"], n_train=recipe["n_train"],
                                                  n_test=recipe["n_test"], device=dev)
    print(f"training the Fashion-MNIST feature classifier on {train_iter.num_examples} images "
          f"({recipe['epochs']} epochs); it is cached for later runs")
    net = FeatureClassifier(recipe["width"], recipe["features"])
    optimizer = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe["lr"],
                                                   total_steps=recipe["epochs"] * len(train_iter))
    history = train_classifier(net, train_iter, test_iter, recipe["epochs"], StepEveryBatch(optimizer, schedule),
                               plot=False, progress=False, device=dev)
    net.test_accuracy.fill_(history.test_acc[-1])
    return net.cpu()


def fashion_mnist_classifier(device: torch.device | str | None = None, recipe: dict | None = None
                             ) -> FeatureClassifier:
    """The course's Fashion-MNIST classifier, trained on first use and then read from the data cache.

    It is trained with :func:`common.data.cached_state` (seeded, keyed by ``recipe``, default
    :func:`classifier_recipe`) and returned on ``device`` in eval mode, with its parameters
    frozen: it only measures. Its penultimate layer, ``net.features(X)``, gives the features
    for the Fréchet distance.
    """
    recipe = classifier_recipe() if recipe is None else recipe
    missing = {"width", "features", "n_train", "n_test", "epochs", "batch_size", "lr"} - set(recipe)
    if missing:
        raise ValueError(f"recipe lacks {sorted(missing)}; start from classifier_recipe() and change what you need.")
    net = FeatureClassifier(recipe["width"], recipe["features"])
    net.load_state_dict(data.cached_state("fashion-mnist-features", recipe,
                                          lambda r: _train_classifier(r).state_dict()))
    net.to(config.resolve_device(device)).eval()
    net.requires_grad_(False)
    return net
