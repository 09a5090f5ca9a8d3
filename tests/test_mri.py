"""Physics: FFT unitarity, masks with fastMRI semantics, data consistency (eq. 3)."""

import numpy as np
import pytest
import torch

from ldpm.mri import (RandomMaskFunc, center_crop, data_consistency, fft2c, ifft2c, mask_for_slice,
                      rss, undersample, zero_filled)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(3, 32, 24)) + 1j * rng.normal(size=(3, 32, 24))).astype(np.complex64)


def test_fft_is_unitary_numpy(image):
    k = fft2c(image)
    assert np.allclose(np.linalg.norm(k), np.linalg.norm(image), rtol=1e-5)
    assert np.allclose(ifft2c(k), image, atol=1e-5)


def test_fft_torch_matches_numpy(image):
    t = torch.from_numpy(image)
    assert np.allclose(fft2c(t).numpy(), fft2c(image), atol=1e-4)
    assert torch.allclose(ifft2c(fft2c(t)), t, atol=1e-5)


def test_fft_is_centered():
    x = np.ones((16, 16), dtype=np.complex64)
    k = fft2c(x)
    assert np.argmax(np.abs(k)) == np.ravel_multi_index((8, 8), (16, 16))


@pytest.mark.parametrize("acc,cf", [(4, 0.08), (8, 0.04)])
def test_mask_acceleration_and_center(acc, cf):
    w = 320
    masks = np.stack([RandomMaskFunc([cf], [acc])(w, seed=s) for s in range(200)])
    n_low = round(w * cf)
    pad = (w - n_low + 1) // 2
    assert (masks[:, pad:pad + n_low] == 1).all()
    assert abs(w / masks.sum(1).mean() - acc) < 0.05 * acc
    assert set(np.unique(masks)) <= {0.0, 1.0}


def test_mask_for_slice_is_deterministic_and_slice_specific():
    a = mask_for_slice("file_brain_AXT1_0001", 3, 320, 8, base_seed=1)
    b = mask_for_slice("file_brain_AXT1_0001", 3, 320, 8, base_seed=1)
    c = mask_for_slice("file_brain_AXT1_0001", 4, 320, 8, base_seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # a pinned reference pattern: test masks must not change across versions or machines
    assert int(a.sum()) == 33
    assert np.flatnonzero(a)[:8].tolist() == [15, 19, 25, 30, 70, 78, 111, 123]


def test_mask_seed_restores_generator_state():
    f = RandomMaskFunc([0.04], [8], seed=5)
    g = RandomMaskFunc([0.04], [8], seed=5)
    f(64, seed=123)
    assert np.array_equal(f(64), g(64))


def test_data_consistency_keeps_measured_kspace():
    rng = np.random.default_rng(1)
    x = rng.random((32, 32)).astype(np.float32)
    mask = mask_for_slice("v", 0, 32, 4)
    k_u = undersample(x, mask)
    estimate = rng.random((32, 32)).astype(np.float32)
    out = data_consistency(estimate, k_u, mask)
    k_out = fft2c(out)
    cols = mask.astype(bool)
    assert np.allclose(k_out[:, cols], k_u[:, cols], atol=1e-6)
    assert np.allclose(k_out[:, ~cols], fft2c(estimate)[:, ~cols], atol=1e-6)


def test_data_consistency_torch():
    x = torch.rand(2, 1, 16, 16)
    mask = torch.from_numpy(mask_for_slice("v", 1, 16, 4))
    k_u = undersample(x, mask)
    out = data_consistency(torch.rand(2, 1, 16, 16), k_u, mask)
    assert torch.allclose(fft2c(out) * mask, k_u, atol=1e-6)


def test_zero_filled_of_full_mask_is_identity():
    x = np.random.default_rng(2).random((16, 16))
    assert np.allclose(np.abs(zero_filled(undersample(x, np.ones(16)))), x, atol=1e-6)


def test_rss_and_crop():
    coils = np.stack([np.full((6, 8), 3.0), np.full((6, 8), 4.0)])
    assert np.allclose(rss(coils), 5.0)
    x = np.arange(6 * 8).reshape(6, 8)
    assert center_crop(x, (2, 4)).tolist() == [[18, 19, 20, 21], [26, 27, 28, 29]]
    with pytest.raises(ValueError):
        center_crop(x, (10, 4))
