"""Per-pixel uncertainty of a classification from its class probabilities.

The prediction stage stores probabilities as uint8 percent per class, (y, x, c). Both scores lie in
[0, 1], 1 = most uncertain:

* margin (default): 1 - (p1 - p2), p1 and p2 the two highest probabilities. It looks only at the
  contest the model is about to decide, which is what one label can settle.
* entropy: Shannon entropy of the probabilities divided by log(c), c the number of classes.

Percents are renormalised to sum to 1 per pixel (rounding makes them sum to 99..101). Pixels whose
probabilities are all 0 (no data) get NaN.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

UncertaintyMethod = Literal["margin", "entropy"]
METHODS: tuple[str, ...] = ("margin", "entropy")


def _proportions(percent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 probabilities summing to 1 along the last axis, and the mask of pixels with none."""
    if percent.ndim < 1 or percent.shape[-1] < 2:
        raise ValueError(f"probabilities need a last axis of at least 2 classes, got shape {percent.shape}")
    p = percent.astype(np.float32)
    total = p.sum(axis=-1, keepdims=True)
    empty = total[..., 0] <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / total
    return p, empty


def margin_uncertainty(percent: np.ndarray) -> np.ndarray:
    """float32 (...,): 1 - (highest - second highest probability); NaN where there are no probabilities."""
    p, empty = _proportions(percent)
    top2 = np.partition(p, -2, axis=-1)[..., -2:]
    out = 1.0 - (top2[..., 1] - top2[..., 0])
    out[empty] = np.nan
    return out.astype(np.float32)


def entropy_uncertainty(percent: np.ndarray) -> np.ndarray:
    """float32 (...,): entropy of the probabilities / log(number of classes); NaN where there are none."""
    p, empty = _proportions(percent)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    out = terms.sum(axis=-1) / np.log(p.shape[-1])
    out[empty] = np.nan
    return out.astype(np.float32)


def uncertainty(percent: np.ndarray, method: UncertaintyMethod = "margin") -> np.ndarray:
    """The per-pixel uncertainty of `method` ("margin" or "entropy")."""
    if method == "margin":
        return margin_uncertainty(percent)
    if method == "entropy":
        return entropy_uncertainty(percent)
    raise ValueError(f"uncertainty method must be one of {list(METHODS)}, got {method!r}")
