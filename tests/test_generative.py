import numpy as np
import pytest
import scipy.linalg
import torch

from common import generative


def correlated_features(seed, n=400, d=12, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + shift


def frechet_scipy(mu1, s1, mu2, s2):
    """The textbook formula with SciPy's general matrix square root (a Schur method) of s1 @ s2."""
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    return float(((mu1 - mu2) ** 2).sum()) + float(s1.trace() + s2.trace()) - 2 * covmean.trace()


def test_feature_statistics_match_numpy():
    f = correlated_features(0)
    mu, sigma = generative.feature_statistics(f)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), f.double().numpy().mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)


def test_frechet_distance_matches_scipy_sqrtm():
    (mu1, s1), (mu2, s2) = (generative.feature_statistics(correlated_features(seed, shift=shift))
                            for seed, shift in ((1, 0.0), (2, 0.5)))
    ours = generative.frechet_distance(mu1, s1, mu2, s2)
    assert ours > 1.0
    assert ours == pytest.approx(frechet_scipy(mu1, s1, mu2, s2), rel=1e-8)
    assert generative.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8 * float(s1.trace()))


def test_frechet_distance_of_diagonal_gaussians_has_a_closed_form():
    g = torch.Generator().manual_seed(3)
    mu1, mu2 = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    a, b = torch.rand(8, generator=g, dtype=torch.float64) * 3, torch.rand(8, generator=g, dtype=torch.float64) * 3
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert generative.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(float(expected))


def test_feature_statistics_refuse_what_cannot_give_a_covariance():
    with pytest.raises(ValueError, match="more rows than"):
        generative.feature_statistics(torch.randn(10, 10))
    with pytest.raises(ValueError, match=r"matrix \(n, d\)"):
        generative.feature_statistics(torch.randn(20, 2, 3))
    with pytest.raises(ValueError, match="inf or nan"):
        generative.feature_statistics(torch.tensor([[0.0], [float("nan")], [1.0]]))
    with pytest.raises(TypeError):
        generative.feature_statistics(torch.ones(5, 2, dtype=torch.long))


def test_frechet_distance_refuses_mismatched_or_broken_statistics():
    mu, sigma = generative.feature_statistics(correlated_features(4, d=4))
    with pytest.raises(ValueError, match="different dimensions"):
        generative.frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])
    with pytest.raises(ValueError, match="covariance matrix"):
        generative.frechet_distance(mu, sigma[:3], mu, sigma)
    lopsided = sigma.clone()
    lopsided[0, 1] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        generative.frechet_distance(mu, lopsided, mu, sigma)


def test_classifier_recipe_with_missing_settings_is_refused_before_any_training():
    with pytest.raises(ValueError, match="recipe lacks"):
        generative.fashion_mnist_classifier(recipe={"width": 8})
