"""Arrow-pointing dataset (pLSTM paper's extrapolation task): an image with an arrow and a
disc; label 1 iff the arrow points at the disc (its ray hits the disc).

Geometry is drawn in unit coordinates and rasterised at any size, so a larger image is the
same task at a higher resolution — train at one size, test at a larger one (extrapolation in
the number of patches). Lines are anti-aliased with a one-pixel soft edge. Pure NumPy,
deterministic by seed; classes balanced exactly (alternating labels, then shuffled).
"""

from __future__ import annotations

import numpy as np

__all__ = ["arrow_geometry", "render_arrows", "make_arrow_dataset", "points_at"]

_ARROW_LEN = 0.28
_HEAD = 0.4  # arrow-head barbs, fraction of the arrow length
_WIDTH = 0.07  # line width in unit coordinates


def points_at(tail: np.ndarray, direction: np.ndarray, center: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Whether the ray tail + t·direction (t > 0, direction unit) hits the disc (center,
    radius). Arrays (..., 2) / (...,). Used for the labels and by the tests."""
    rel = center - tail
    along = np.sum(rel * direction, axis=-1)
    perp2 = np.sum(rel * rel, axis=-1) - along ** 2
    return (along > 0) & (perp2 < radius ** 2)


def arrow_geometry(num: int, seed: int) -> dict:
    """Random scenes: ``tail`` (num, 2), ``direction`` (num, 2) unit, ``center`` (num, 2),
    ``radius`` (num,), ``label`` (num,) int32. Positives aim within 80 % of the disc's angular
    half-width; negatives miss it by at least 20 % of it plus 0.15 rad, so labels are robust to
    rasterisation. The arrow never touches the disc."""
    rng = np.random.default_rng(seed)
    out = {k: np.zeros((num, 2)) for k in ("tail", "direction", "center")}
    out["radius"] = np.zeros(num)
    labels = np.arange(num) % 2
    for n in range(num):
        while True:  # resample until the arrow stays inside and clear of the disc
            c = rng.uniform(0.2, 0.8, 2)
            r = rng.uniform(0.08, 0.13)
            p = rng.uniform(0.08, 0.92, 2)
            dist = np.linalg.norm(c - p)
            if dist < r + _ARROW_LEN + 0.08:
                continue
            half = np.arcsin(r / dist)
            if labels[n]:
                delta = rng.uniform(-0.8, 0.8) * half
            else:
                delta = rng.choice([-1, 1]) * rng.uniform(1.2 * half + 0.15, np.pi)
            theta = np.arctan2(*(c - p)[::-1]) + delta
            u = np.array([np.cos(theta), np.sin(theta)])
            if np.all((p + _ARROW_LEN * u > 0.06) & (p + _ARROW_LEN * u < 0.94)):
                break
        out["tail"][n], out["center"][n], out["radius"][n], out["direction"][n] = p, c, r, u
    perm = rng.permutation(num)
    out = {k: v[perm] for k, v in out.items()}
    out["label"] = labels[perm].astype(np.int32)
    return out


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of pixel centres px (S, S, 2) to segments a→b (num, 2) → (num, S, S)."""
    ab = (b - a)[:, None, None]
    ap = px[None] - a[:, None, None]
    t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0, 1)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1)


def render_arrows(geom: dict, size: int) -> np.ndarray:
    """Rasterise scenes at ``size``×``size`` → float32 (num, size, size, 1) in [0, 1]."""
    c = (np.arange(size) + 0.5) / size
    px = np.stack(np.meshgrid(c, c, indexing="ij"), -1)  # [i, j] = (x, y)
    tail, d = geom["tail"], geom["direction"]
    head = tail + _ARROW_LEN * d
    dist = _segment_distance(px, tail, head)
    for sign in (-1, 1):  # barbs at ±150° from the direction
        a = np.deg2rad(150) * sign
        rot = np.stack([d[:, 0] * np.cos(a) - d[:, 1] * np.sin(a),
                        d[:, 0] * np.sin(a) + d[:, 1] * np.cos(a)], -1)
        dist = np.minimum(dist, _segment_distance(px, head, head + _HEAD * _ARROW_LEN * rot))
    disc = np.linalg.norm(px[None] - geom["center"][:, None, None], axis=-1) - geom["radius"][:, None, None]
    soft = lambda x: np.clip(0.5 - x * size, 0.0, 1.0)  # one-pixel anti-aliased edge
    img = np.maximum(soft(dist - _WIDTH / 2), soft(disc))
    return img[..., None].astype(np.float32)


def make_arrow_dataset(num: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (num, size, size, 1) float32, labels (num,) int32); same seed → same data at
    every size (only the rasterisation changes)."""
    if num < 1 or size < 4:
        raise ValueError(f"make_arrow_dataset: need num >= 1 and size >= 4, got num={num}, size={size}.")
    g = arrow_geometry(num, seed)
    return render_arrows(g, size), g["label"]
