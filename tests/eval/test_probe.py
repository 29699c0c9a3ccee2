"""The probe, kNN and feature pooling: perfect when separable, chance when not, order-blind."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from jepa_lab.eval.probe import (
    ProbeResult,
    _canonical_order,
    decode_classes,
    encode_classes,
    fit_probe,
    knn_accuracy,
    pooled_features,
    wilson_half_width,
)
from jepa_lab.spec.experiment import EvalSpec

SPEC = EvalSpec(val_size=60)  # a tenth of the 600 training samples of these tests
N_CLASSES = 4


def _blobs(
    n: int, spread: float, seed: int, dim: int = 8, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) Gaussian blobs of unit std around 4 class centres ``spread`` apart, and labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = spread * torch.eye(dim)[:N_CLASSES]
    y = torch.randint(0, N_CLASSES, (n,), generator=generator)
    x = centres[y] + torch.randn(n, dim, generator=generator)
    return x.to(dtype), y


def _chance_tolerance(n_test: int) -> float:
    """Five binomial standard deviations of the accuracy of predictions independent of labels."""
    return 5 * math.sqrt((1 / N_CLASSES) * (1 - 1 / N_CLASSES) / n_test)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_probe_is_perfect_on_separable_blobs(dtype: torch.dtype) -> None:
    train_x, train_y = _blobs(400, spread=20.0, seed=0, dtype=dtype)
    test_x, test_y = _blobs(200, spread=20.0, seed=1, dtype=dtype)
    result = fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0)
    assert result.test_acc == 1.0
    assert result.val_acc == 1.0
    # Every L2 separates the blobs: the validation tie goes to the largest.
    assert result.l2 == max(SPEC.l2_grid)
    assert 1 <= result.iterations <= SPEC.max_iter


def test_probe_is_at_chance_on_shuffled_labels() -> None:
    n_test = 2000
    train_x, _ = _blobs(1000, spread=20.0, seed=0)
    test_x, _ = _blobs(n_test, spread=20.0, seed=1)
    generator = torch.Generator().manual_seed(2)
    # Test labels independent of everything: the accuracy is Binomial(n_test, 1/4) / n_test.
    train_y = torch.randint(0, N_CLASSES, (1000,), generator=generator)
    test_y = torch.randint(0, N_CLASSES, (n_test,), generator=generator)
    result = fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0)
    assert abs(result.test_acc - 1 / N_CLASSES) < _chance_tolerance(n_test)


def test_probe_does_not_depend_on_sample_order() -> None:
    # Overlapping blobs, so the fit, the L2 choice and the validation split all matter.
    train_x, train_y = _blobs(600, spread=2.0, seed=0)
    test_x, test_y = _blobs(300, spread=2.0, seed=1)
    result = fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0)
    assert 0.5 < result.test_acc < 1.0
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(3))
    permuted = fit_probe(train_x[perm], train_y[perm], test_x, test_y, SPEC, seed=0)
    assert permuted == result  # exact: test_acc, val_acc, l2 and iterations
    test_perm = torch.randperm(300, generator=torch.Generator().manual_seed(4))
    shuffled = fit_probe(train_x, train_y, test_x[test_perm], test_y[test_perm], SPEC, 0)
    # the same fit; its per-image predictions follow the test images' order
    assert shuffled == replace(result, test_pred=result.test_pred[test_perm])


def test_probe_with_ids_does_not_depend_on_sample_order() -> None:
    train_x, train_y = _blobs(600, spread=2.0, seed=0)
    test_x, test_y = _blobs(300, spread=2.0, seed=1)
    ids = torch.arange(1000, 1600)
    result = fit_probe(train_x, train_y, test_x, test_y, SPEC, 0, ids)
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(3))
    assert fit_probe(train_x[perm], train_y[perm], test_x, test_y, SPEC, 0, ids[perm]) == result


def test_ids_fix_the_validation_split_whatever_the_features() -> None:
    # Two encoders' features of the same images: with ids, the same samples are held out.
    train_x, train_y = _blobs(600, spread=2.0, seed=0)
    other_x, _ = _blobs(600, spread=5.0, seed=7)
    ids = torch.arange(600) * 3
    n_val = SPEC.val_size
    first = _canonical_order(train_x, train_y, ids, seed=0)[:n_val]
    second = _canonical_order(other_x, train_y, ids, seed=0)[:n_val]
    assert torch.equal(first, second)
    # Without ids the split follows the content, so different features hold out other samples.
    by_content = _canonical_order(train_x, train_y, None, seed=0)[:n_val]
    assert not torch.equal(by_content, _canonical_order(other_x, train_y, None, seed=0)[:n_val])
    # Another seed holds out other samples.
    assert not torch.equal(first, _canonical_order(train_x, train_y, ids, seed=1)[:n_val])


def test_probe_is_deterministic_and_seeded() -> None:
    train_x, train_y = _blobs(600, spread=2.0, seed=0)
    test_x, test_y = _blobs(300, spread=2.0, seed=1)
    first = fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0)
    assert fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0) == first
    assert isinstance(first, ProbeResult)
    # Another seed draws another validation split (its accuracy is on different samples).
    others = {fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=s).val_acc for s in range(4)}
    assert len(others) > 1


def test_probe_ignores_constant_features() -> None:
    train_x, train_y = _blobs(400, spread=20.0, seed=0)
    test_x, test_y = _blobs(200, spread=20.0, seed=1)
    train_x[:, -1] = 3.0  # constant column: std 0, must not blow up
    test_x[:, -1] = 3.0
    assert fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0).test_acc == 1.0


def test_probe_accepts_zero_l2_with_a_constant_feature() -> None:
    train_x, train_y = _blobs(400, spread=2.0, seed=0)
    test_x, test_y = _blobs(200, spread=2.0, seed=1)
    train_x[:, -1] = 0.0  # a direction without data: no curvature at all when l2 = 0
    result = fit_probe(
        train_x, train_y, test_x, test_y, EvalSpec(l2_grid=(0.0,), val_size=40), seed=0
    )
    assert result.l2 == 0.0 and 0.5 < result.test_acc < 1.0


def test_probe_rejects_bad_inputs() -> None:
    x, y = _blobs(100, spread=20.0, seed=0)
    with pytest.raises(ValueError, match="features"):
        fit_probe(x, y[:50], x, y, SPEC, seed=0)
    with pytest.raises(ValueError, match="features"):
        fit_probe(x, y, x[:, :4], y, SPEC, seed=0)
    with pytest.raises(ValueError, match="train_ids"):
        fit_probe(x, y, x, y, SPEC, 0, torch.zeros(100, dtype=torch.int64))
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_probe(bad, y, x, y, SPEC, seed=0)


def test_knn_is_perfect_on_separated_clusters() -> None:
    train_x, train_y = _blobs(400, spread=20.0, seed=0)
    test_x, test_y = _blobs(200, spread=20.0, seed=1)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20, n_classes=N_CLASSES) == 1.0


def test_knn_is_at_chance_on_shuffled_labels() -> None:
    n_test = 2000
    train_x, _ = _blobs(1000, spread=20.0, seed=0)
    test_x, _ = _blobs(n_test, spread=20.0, seed=1)
    generator = torch.Generator().manual_seed(2)
    train_y = torch.randint(0, N_CLASSES, (1000,), generator=generator)
    test_y = torch.randint(0, N_CLASSES, (n_test,), generator=generator)
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=20, n_classes=N_CLASSES)
    assert abs(acc - 1 / N_CLASSES) < _chance_tolerance(n_test)


def test_knn_chunking_does_not_change_the_result() -> None:
    train_x, train_y = _blobs(500, spread=2.0, seed=0)
    test_x, test_y = _blobs(300, spread=2.0, seed=1)
    whole = knn_accuracy(train_x, train_y, test_x, test_y, k=10, n_classes=N_CLASSES)
    chunked = knn_accuracy(train_x, train_y, test_x, test_y, k=10, n_classes=N_CLASSES, chunk=7)
    assert chunked == whole
    assert 0.5 < whole < 1.0
    with pytest.raises(ValueError, match="k="):
        knn_accuracy(train_x, train_y, test_x, test_y, k=501, n_classes=N_CLASSES)


def _patch_tokens(x: torch.Tensor) -> torch.Tensor:
    """A stand-in encoder: each pixel is a token, its channels the features, (B, H*W, C)."""
    assert x.dtype == torch.float32, "prepare must have turned the uint8 batch into floats"
    return x.flatten(2).transpose(1, 2) * 3


def test_pooled_features_average_tokens_and_ignore_batching() -> None:
    images = torch.randint(0, 256, (10, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255 - 0.5

    whole = pooled_features(_patch_tokens, prepare, images, batch_size=10, device="cpu")
    expected = (3 * (images.float() / 255 - 0.5)).mean((2, 3))  # mean over the H*W tokens
    assert whole.shape == (10, 3) and whole.dtype == torch.float32 and whole.device.type == "cpu"
    torch.testing.assert_close(whole, expected)
    batched = pooled_features(_patch_tokens, prepare, images, batch_size=3, device="cpu")
    torch.testing.assert_close(batched, whole, rtol=0, atol=1e-7)
    assert not whole.requires_grad


def test_pooled_features_rejects_pooled_encoders() -> None:
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="tokens"):
        pooled_features(lambda x: x.flatten(1), lambda x: x.float(), images, 2, "cpu")


def test_probe_keeps_its_test_predictions_in_test_order() -> None:
    train_x, train_y = _blobs(400, spread=3.0, seed=0)
    test_x, test_y = _blobs(300, spread=3.0, seed=1)
    result = fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0)
    predicted = decode_classes(encode_classes(result.test_pred))
    assert predicted.shape == test_y.shape
    assert float((predicted == test_y).double().mean()) == result.test_acc
    assert result.val_size == SPEC.val_size
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    permuted = fit_probe(train_x, train_y, test_x[perm], test_y[perm], SPEC, seed=0)
    assert torch.equal(decode_classes(encode_classes(permuted.test_pred)), predicted[perm])


def test_encoded_classes_round_trip_compactly() -> None:
    classes = torch.randint(0, 10, (10_000,), generator=torch.Generator().manual_seed(0))
    text = encode_classes(classes)
    assert torch.equal(decode_classes(text), classes)
    assert len(text) < 8_000  # ~3.3 bits of entropy per image, in base64
    with pytest.raises(ValueError, match="uint8"):
        encode_classes(torch.tensor([0, 300]))


def test_wilson_half_width_matches_the_closed_form() -> None:
    # Wilson (1927): centre (p + z^2/2n) / (1 + z^2/n), half-width z/(1 + z^2/n) *
    # sqrt(p(1-p)/n + z^2/4n^2), z the 97.5 % normal quantile.
    z, n, k = 1.959963984540054, 5000, 4250
    p = k / n
    expected = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_half_width(k, n) == pytest.approx(expected, rel=1e-9)
    assert wilson_half_width(850, 1000) > 2 * wilson_half_width(4250, 5000) * 0.99 > 0


def test_probe_reports_the_wilson_interval_of_its_validation_accuracy() -> None:
    train_x, train_y = _blobs(600, spread=2.0, seed=0)
    test_x, test_y = _blobs(300, spread=2.0, seed=1)
    result = fit_probe(train_x, train_y, test_x, test_y, SPEC, seed=0)
    correct = round(result.val_acc * SPEC.val_size)
    assert result.val_ci == wilson_half_width(correct, SPEC.val_size) > 0
