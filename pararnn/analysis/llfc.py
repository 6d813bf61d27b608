"""Layerwise linear feature connectivity (LLFC, Zhou et al. 2023) and its two conditions.

LLFC holds at layer ℓ when c·f_ℓ(θ_α) ≈ α f_ℓ(θ_a) + (1 − α) f_ℓ(θ_b) for some scalar c: the
features of the interpolated network are (up to scale) the interpolation of the features.
It is measured as a cosine distance — per sample and averaged over samples (default), or
once over the whole (N, F) feature matrix (``cosine="global"``; the reference code offers
both) — against the same distance between the two endpoints' features as a baseline. All
reductions run in NumPy float64, whatever the features' dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import jax

from .interpolation import interpolate


def _as_samples(name: str, f: Any, n: int | None = None) -> np.ndarray:
    """Features ``(N, ...)`` → float64 ``(N, F)``: axis 0 indexes samples."""
    f = np.asarray(jax.device_get(f), dtype=np.float64)
    if f.ndim < 1 or f.shape[0] < 1:
        raise ValueError(f"features {name!r} must have a leading sample axis, got shape {f.shape}.")
    if n is not None and f.shape[0] != n:
        raise ValueError(f"features {name!r}: {f.shape[0]} samples, expected {n} (shapes must agree "
                         f"between the models).")
    return f.reshape(f.shape[0], -1)


def cosine_distance(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per row, ``1 − |cos(u_i, v_i)|`` for ``(N, F)`` arrays → ``(N,)``.

    Zero rows: two zero vectors are at distance 0 (equal); a zero and a non-zero vector at
    distance 1 (no direction in common) — so identical features always give exactly 0.
    """
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    nu, nv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
    dot = np.einsum("nf,nf->n", u, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(np.abs(dot) / (nu * nv), 0.0, 1.0)
    both_zero, one_zero = (nu == 0) & (nv == 0), (nu == 0) ^ (nv == 0)
    # exactly equal rows are at distance 0 (rounding in |u·v|/(|u||v|) could leave ~1e-16)
    equal = np.all(u == v, axis=1)
    return np.where(both_zero | equal, 0.0, np.where(one_zero, 1.0, 1.0 - cos))


COSINES = ("per_sample", "global")


def global_cosine_distance(u: np.ndarray, v: np.ndarray) -> float:
    """``1 − |⟨U, V⟩_F| / (‖U‖_F ‖V‖_F)`` over whole ``(N, F)`` matrices (zero and equal
    matrices as in :func:`cosine_distance`)."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if np.array_equal(u, v) or (nu == 0 and nv == 0):
        return 0.0
    if nu == 0 or nv == 0:
        return 1.0
    return float(1.0 - min(abs(np.vdot(u, v)) / (nu * nv), 1.0))


@dataclasses.dataclass(frozen=True)
class LayerLLFC:
    """LLFC of one layer: means over samples (``cosine="per_sample"``) or one number for the
    whole feature matrix (``cosine="global"``).

    Attributes:
      distance: mean 1 − |cos(f(θ_α), α f(θ_a) + (1 − α) f(θ_b))| (global: of the matrices).
      baseline: mean 1 − |cos(f(θ_a), f(θ_b))|, the distance between the endpoints.
      scale: mean ⟨f(θ_α), mix⟩ / ‖mix‖² (the c of LLFC; ≈ 1 when features are linear;
        global: ⟨F_α, MIX⟩_F / ‖MIX‖_F²).
      distance_std: standard deviation of the per-sample distance with ``ddof`` (default 0,
        the population std; the reference code reports torch's unbiased N − 1 std: pass
        ``std_ddof=1``). NaN for the global cosine (one number, no spread).
    """

    distance: float
    baseline: float
    scale: float
    distance_std: float


@dataclasses.dataclass(frozen=True)
class LLFC:
    """Result of :func:`llfc`: ``layers`` maps each feature name to :class:`LayerLLFC`."""

    alpha: float
    layers: dict[str, LayerLLFC]

    def __getitem__(self, name: str) -> LayerLLFC:
        return self.layers[name]

    def table(self) -> str:
        """A plain-text table, one row per layer."""
        rows = [f"{'layer':<28} {'distance':>10} {'baseline':>10} {'scale':>8}"]
        rows += [f"{k:<28} {v.distance:>10.4g} {v.baseline:>10.4g} {v.scale:>8.4f}" for k, v in self.layers.items()]
        return "\n".join(rows)


def _check_cosine(cosine: str, std_ddof: int) -> None:
    if cosine not in COSINES:
        raise ValueError(f"cosine must be one of {COSINES}, got {cosine!r}.")
    if isinstance(std_ddof, bool) or not isinstance(std_ddof, int) or std_ddof < 0:
        raise ValueError(f"std_ddof must be a non-negative int, got {std_ddof!r}.")


def layer_llfc(f_alpha: Any, f_a: Any, f_b: Any, alpha: float, name: str = "features", *,
               cosine: str = "per_sample", std_ddof: int = 0) -> LayerLLFC:
    """LLFC of one layer from features ``(N, ...)`` at θ_α, θ_a and θ_b; ``cosine`` and
    ``std_ddof`` as :func:`llfc`."""
    _check_cosine(cosine, std_ddof)
    fa = _as_samples(name, f_a)
    fb = _as_samples(name, f_b, fa.shape[0])
    fal = _as_samples(name, f_alpha, fa.shape[0])
    if not (fa.shape == fb.shape == fal.shape):
        raise ValueError(f"features {name!r}: shapes differ between the models: θ_a {fa.shape}, "
                         f"θ_b {fb.shape}, θ_α {fal.shape} (after flattening per sample).")
    mix = alpha * fa + (1.0 - alpha) * fb
    if cosine == "global":
        norm2 = float(np.vdot(mix, mix))
        return LayerLLFC(distance=global_cosine_distance(fal, mix), baseline=global_cosine_distance(fa, fb),
                         scale=float(np.vdot(fal, mix)) / norm2 if norm2 > 0 else float("nan"),
                         distance_std=float("nan"))
    d = cosine_distance(fal, mix)
    norm2 = np.einsum("nf,nf->n", mix, mix)
    dot = np.einsum("nf,nf->n", fal, mix)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(norm2 > 0, dot / np.where(norm2 > 0, norm2, 1.0), np.nan)
    return LayerLLFC(distance=float(d.mean()), baseline=float(cosine_distance(fa, fb).mean()),
                     scale=float(np.nanmean(scale)) if np.any(norm2 > 0) else float("nan"),
                     distance_std=float(d.std(ddof=std_ddof)) if d.size > std_ddof else float("nan"))


def llfc(features_fn: Callable[[Any, Any], Mapping[str, Any]], params_a: Any, params_b: Any, x: Any,
         alpha: float = 0.5, *, cosine: str = "per_sample", std_ddof: int = 0) -> LLFC:
    """Layerwise linear feature connectivity between two networks at one α.

    Args:
      features_fn: ``features_fn(params, x) -> {layer name: features (N, ...)}``; axis 0
        indexes samples (for sequence models, :mod:`pararnn.analysis.features` flattens
        batch and time so every token is a sample).
      params_a, params_b: parameter pytrees of the same structure.
      x: the inputs passed to ``features_fn``.
      alpha: the weight of θ_a in θ_α = α θ_a + (1 − α) θ_b.
      cosine: ``"per_sample"`` (mean over samples of each sample's cosine distance, Zhou et
        al.'s reported metric) or ``"global"`` (one cosine distance between the whole
        ``(N, F)`` matrices, the reference code's other metric).
      std_ddof: delta degrees of freedom of ``distance_std`` (0: population std; 1: the
        reference code's unbiased std).

    Returns:
      :class:`LLFC` with, per layer, the mean over samples of
      ``1 − |cos(f(θ_α), α f(θ_a) + (1 − α) f(θ_b))|``, the endpoint baseline
      ``1 − |cos(f(θ_a), f(θ_b))|`` and the scale coefficient ``⟨f(θ_α), mix⟩ / ‖mix‖²``.
    """
    alpha = float(alpha)
    _check_cosine(cosine, std_ddof)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    feats_a = dict(features_fn(params_a, x))
    feats_b = dict(features_fn(params_b, x))
    feats_m = dict(features_fn(interpolate(params_a, params_b, alpha), x))
    if not (feats_a.keys() == feats_b.keys() == feats_m.keys()):
        raise ValueError(f"features_fn returned different layer names for the two models: "
                         f"{sorted(feats_a)} vs {sorted(feats_b)}.")
    if not feats_a:
        raise ValueError("features_fn returned no features.")
    return LLFC(alpha=alpha, layers={k: layer_llfc(feats_m[k], feats_a[k], feats_b[k], alpha, k, cosine=cosine,
                                                   std_ddof=std_ddof) for k in feats_a})


# ---- the two conditions of LLFC ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeakAdditivity:
    """``distance``: mean 1 − |cos(σ(α g_a + (1 − α) g_b), α σ(g_a) + (1 − α) σ(g_b))| over
    samples; ``baseline``: mean 1 − |cos(σ(g_a), σ(g_b))|."""

    distance: float
    baseline: float


def weak_additivity(preact_a: Any, preact_b: Any, alpha: float = 0.5,
                    activation: Callable[[Any], Any] = jax.nn.relu) -> WeakAdditivity:
    """Weak additivity of an activation on two networks' pre-activations ``(N, ...)``.

    The first condition of LLFC (Zhou et al. 2023, for ReLU): the activation of the mixed
    pre-activations is (in direction) the mix of the activations. Exact for any linear
    activation; for ReLU it holds when the two pre-activations mostly share signs.
    """
    ga, gb = _as_samples("preact_a", preact_a), _as_samples("preact_b", preact_b, None)
    if ga.shape != gb.shape:
        raise ValueError(f"preact_a and preact_b must have the same shape, got {ga.shape} and {gb.shape}.")
    act = lambda g: np.asarray(activation(g), np.float64)  # noqa: E731
    lhs = act(alpha * ga + (1 - alpha) * gb)
    rhs = alpha * act(ga) + (1 - alpha) * act(gb)
    return WeakAdditivity(distance=float(cosine_distance(lhs, rhs).mean()),
                          baseline=float(cosine_distance(act(ga), act(gb)).mean()))


@dataclasses.dataclass(frozen=True)
class Commutativity:
    """Attributes:
      ratio: ‖(H_a − H_b)(W_a − W_b)‖_F / ‖H_a W_a − H_b W_b‖_F — the pre-activation error
        of the interpolated layer (which is α(1 − α)·(H_a − H_b)(W_a − W_b)) relative to the
        difference of the endpoints' pre-activations; ≪ 1 when the condition holds.
      normalized: ‖(H_a − H_b)(W_a − W_b)‖_F / (‖H_a − H_b‖_F ‖W_a − W_b‖_F) ∈ [0, 1].
    """

    ratio: float
    normalized: float


def commutativity(w_a: Any, w_b: Any, h_a: Any, h_b: Any) -> Commutativity:
    """The commutativity condition of LLFC, (W_a − W_b)(H_a − H_b) ≈ 0, for one linear layer.

    Args:
      w_a, w_b: the layer's kernels ``(in, out)`` (Flax convention: ``y = h @ w``).
      h_a, h_b: the layer's inputs in each network ``(N, in)``.

    Mixing weights and inputs gives (α W_a + (1 − α) W_b)(α H_a + (1 − α) H_b) = α W_a H_a +
    (1 − α) W_b H_b − α(1 − α)(W_a − W_b)(H_a − H_b): the pre-activations are linearly
    connected exactly when the last term vanishes.
    """
    wa, wb = np.asarray(w_a, np.float64), np.asarray(w_b, np.float64)
    ha, hb = np.asarray(h_a, np.float64), np.asarray(h_b, np.float64)
    if wa.ndim != 2 or wa.shape != wb.shape:
        raise ValueError(f"w_a and w_b must be (in, out) kernels of the same shape, got {wa.shape} and {wb.shape}.")
    if ha.ndim != 2 or ha.shape != hb.shape or ha.shape[1] != wa.shape[0]:
        raise ValueError(f"h_a and h_b must be (N, in={wa.shape[0]}) of the same shape, got {ha.shape} and {hb.shape}.")
    cross = np.linalg.norm((ha - hb) @ (wa - wb))
    diff = np.linalg.norm(ha @ wa - hb @ wb)
    denom = np.linalg.norm(ha - hb) * np.linalg.norm(wa - wb)
    return Commutativity(ratio=float(cross / diff) if diff > 0 else 0.0,
                         normalized=float(cross / denom) if denom > 0 else 0.0)
