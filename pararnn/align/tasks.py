"""Small offline tasks and the loss of the Align experiments.

- :func:`synthetic_images`: 10-class images of jittered Gaussian blobs plus pixel noise —
  a stand-in for MNIST/CIFAR that needs no download.
- :func:`add_task`: the RNN "add task" of Boopathy & Fiete: x_t ~ Bernoulli(0.5),
  y_t = 0.5 + 0.5·x_{t−2} − 0.25·x_{t−5} (x_{t−k} = 0 before the start).
- :func:`mse_loss` and :func:`onehot_targets`: the paper's MSE to one-hot − 0.1, in two
  scalings (``convention``): pararnn's ``"half_sum"`` and the reference code's ``"mean"``.

The data are NumPy arrays drawn from ``numpy.random.default_rng(seed)``: same seed, same
data; no JAX compilation for each new shape (which costs seconds on a loaded CPU).
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from .layers import check_positive_int


def synthetic_images(n: int, *, seed: int = 0, size: int = 12, classes: int = 10,
                     blobs: int = 3, jitter: float = 1.0, noise: float = 0.3,
                     class_seed: int = 0, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, size, size, 1)`` and integer labels ``(n,)``.

    Class c has ``blobs`` Gaussian blobs (width size/6) at random centres with random signs,
    drawn from ``class_seed`` only — train and test sets drawn with different ``seed`` s
    share the classes. Each image moves every centre by N(0, jitter²) pixels, scales each
    blob by U(0.5, 1.5) and adds N(0, noise²) pixel noise.
    """
    for name, v in (("n", n), ("size", size), ("classes", classes), ("blobs", blobs)):
        check_positive_int(v, name, "synthetic_images")
    cls_rng, rng = np.random.default_rng(class_seed), np.random.default_rng(seed)
    centres = cls_rng.uniform(2.0, size - 3.0, (classes, blobs, 2))
    signs = np.where(cls_rng.random((classes, blobs)) < 0.7, 1.0, -1.0)
    labels = rng.integers(0, classes, n)
    c = centres[labels] + jitter * rng.standard_normal((n, blobs, 2))
    amp = signs[labels] * rng.uniform(0.5, 1.5, (n, blobs))
    grid, width = np.arange(size, dtype=np.float64), size / 6.0
    gy = np.exp(-0.5 * ((grid[None, None, :] - c[..., 0:1]) / width) ** 2)  # (n, blobs, size)
    gx = np.exp(-0.5 * ((grid[None, None, :] - c[..., 1:2]) / width) ** 2)
    img = np.einsum("nb,nbi,nbj->nij", amp, gy, gx) + noise * rng.standard_normal((n, size, size))
    return img[..., None].astype(dtype), labels.astype(np.int32)


def add_task(n: int, length: int = 100, *, seed: int = 0, dtype=np.float32):
    """``x (n, length, 1)`` of Bernoulli(0.5) bits and targets ``y (n, length, 1)``."""
    check_positive_int(n, "n", "add_task")
    check_positive_int(length, "length", "add_task")
    x = (np.random.default_rng(seed).random((n, length)) < 0.5).astype(np.float64)
    lag = lambda k: np.pad(x, ((0, 0), (k, 0)))[:, :length]
    y = 0.5 + 0.5 * lag(2) - 0.25 * lag(5)
    return x[..., None].astype(dtype), y[..., None].astype(dtype)


def onehot_targets(labels, classes: int, dtype=jnp.float32) -> jax.Array:
    """One-hot − 0.1 (the paper's MSE targets), ``(n, classes)``."""
    return jax.nn.one_hot(jnp.asarray(labels), classes, dtype=dtype) - 0.1


#: ``mse_loss`` scalings: ``"half_sum"`` = ½·Σ over the last axis, mean over the others
#: (pararnn's default: e = ∂L/∂out = (out − y)/N); ``"mean"`` = mean over every entry (Boopathy
#: & Fiete's code: mean over batch and classes), which is ``"half_sum"`` · 2/C for C outputs.
LOSS_CONVENTIONS = ("half_sum", "mean")


def mse_loss(out: jax.Array, target: jax.Array, convention: str = "half_sum") -> jax.Array:
    """Squared error of ``out`` against ``target`` (same shape, C = last axis).

    ``convention="half_sum"`` (default): ½ · mean over all leading axes of the squared error
    summed over the last axis. ``"mean"``: the mean over every entry, as the reference code
    does. ``"half_sum"`` = ``"mean"`` · C/2, so every update it drives is C/2 times the
    reference's (5× for 10 classes): divide the reference's learning rates by C/2 to compare.
    Use ``functools.partial(mse_loss, convention="mean")`` as a ``loss_fn``.
    """
    if convention not in LOSS_CONVENTIONS:
        raise ValueError(f"mse_loss: convention must be one of {LOSS_CONVENTIONS}, got {convention!r}.")
    if out.shape != target.shape:
        raise ValueError(f"mse_loss: outputs {out.shape} and targets {target.shape} differ.")
    d = out - target.astype(out.dtype)
    if convention == "mean":
        return jnp.mean(d * d)
    return 0.5 * jnp.mean(jnp.sum(d * d, axis=-1))
