"""``pseudo_grads``: Align-zero, Align-ada, FA, DFA, readout-only and backprop updates.

Each returns a pytree shaped like ``params`` that goes to any optax optimiser in place of
the gradient (Boopathy & Fiete, 2022; Lillicrap et al., 2016; Nøkland, 2016).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from .layers import ACTIVATIONS
from .stack import LayerStack

RULES = ("backprop", "align_zero", "align_ada", "fa", "dfa", "readout")
STRUCTURED_RULES = ("align_ada", "fa", "dfa", "readout")


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict) and set(batch) >= {"x", "y"}:
        return batch["x"], batch["y"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"batch must be a pair (inputs, targets) or a dict with keys 'x' and 'y', "
                     f"got {type(batch).__name__}"
                     f"{' of length ' + str(len(batch)) if isinstance(batch, (tuple, list)) else ''}.")


def stack_of(apply_fn: Any) -> LayerStack | None:
    """The :class:`LayerStack` behind ``apply_fn`` (the stack or its bound ``apply``)."""
    if isinstance(apply_fn, LayerStack):
        return apply_fn
    owner = getattr(apply_fn, "__self__", None)
    return owner if isinstance(owner, LayerStack) else None


def _check_same_structure(params, params_init) -> None:
    s1, s2 = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(params_init)
    if s1 != s2:
        raise ValueError(f"params_init must have the structure of params; got {s2} vs {s1}.")
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params_init)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"params_init leaf of shape {jnp.shape(b)} where params has "
                             f"{jnp.shape(a)}.")


def output_error(loss_fn: Callable, out: jax.Array, y: Any) -> jax.Array:
    """e = ∂loss_fn(out, y)/∂out at the current output."""
    return jax.grad(lambda o: loss_fn(o, y))(out)


def feedback_weights(rule: str, stack: LayerStack, params: Any, x: jax.Array, *,
                     key: jax.Array) -> list:
    """The fixed random feedback of ``"fa"`` or ``"dfa"``, a deterministic function of ``key``.

    - ``"fa"``: one parameter dict per layer drawn by the layer's own ``init`` (B_l has
      W_l's shape and distribution); the backward pass uses B_l where backprop uses W_l.
    - ``"dfa"``: one matrix per hidden layer (``None`` for the readout), ``(n_out, n_l)``
      with N(0, 1/n_l) entries, n_l = the layer's z features per output position (its
      width, or H·W·C of a conv map); δ_l = φ_l'(z_l) ⊙ (e @ B_l). The 1/√n_l scale gives
      δ_l the magnitude of backprop's last-hidden-layer delta in both parameterisations.

    ``params`` (the network's, any values) and ``x`` give the shapes and dtypes. Pass the
    same ``key`` at every step: the feedback is then fixed across training.
    """
    stack.check_params(params)
    keys = jax.random.split(key, len(stack.layers))
    if rule == "fa":
        dtypes = [jax.tree_util.tree_leaves(p)[0].dtype for p in params]
        return [layer.init(k, dt) for layer, k, dt in zip(stack.layers, keys, dtypes)]
    if rule != "dfa":
        raise ValueError(f"feedback_weights: rule must be 'fa' or 'dfa', got {rule!r}.")
    zs = stack.z_shapes(params, x)
    out = zs[-1]
    out_lead, n_out = out.shape[:-1], out.shape[-1]
    mats = []
    for k, z in zip(keys[:-1], zs[:-1]):
        per_position = z.shape[:-1] == out_lead
        n = z.shape[-1] if per_position else math.prod(z.shape[1:])
        mats.append(jax.random.normal(k, (n_out, n), z.dtype) / math.sqrt(n))
    return mats + [None]


def _dfa_deltas(stack: LayerStack, zs: Sequence, e: jax.Array, mats: Sequence) -> list:
    deltas = []
    for layer, z, b in zip(stack.layers[:-1], zs[:-1], mats[:-1]):
        if z.shape[:-1] == e.shape[:-1]:
            proj = jnp.matmul(e.astype(z.dtype), b)
        elif e.ndim == 2 and b.shape[1] == math.prod(z.shape[1:]):
            proj = jnp.matmul(e.astype(z.dtype), b).reshape(z.shape)
        else:
            raise ValueError(f"dfa: cannot project an output error of shape {e.shape} onto a "
                             f"layer output of shape {z.shape} with feedback {b.shape}.")
        deltas.append(jax.vjp(ACTIVATIONS[layer.activation], z)[1](proj)[0])  # φ'(z) ⊙ proj for elementwise φ
    return deltas + [e]


def pseudo_grads(rule: str, apply_fn: Callable, params: Any, params_init: Any, batch: Any,
                 loss_fn: Callable, *, key: jax.Array | None = None) -> Any:
    """A learning rule's weight update direction, shaped like ``params``.

    Args:
      rule: ``"backprop"`` (= ``jax.grad``), ``"align_zero"``, ``"align_ada"``, ``"fa"``,
        ``"dfa"`` or ``"readout"``.
      apply_fn: ``apply_fn(params, x) -> outputs``. ``"backprop"`` and ``"align_zero"``
        accept any function; the other rules need its layer structure: pass a
        :class:`LayerStack` (``pararnn.align.mlp``, ``conv_net``, ``rnn``) or its ``apply``.
      params: the current parameters θ_t.
      params_init: the frozen initial parameters θ₀ (same structure), which carry the
        feedback of the Align rules; unused by the other rules.
      batch: ``(x, y)`` or ``{"x": x, "y": y}``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``; e = ∂loss/∂outputs at the current outputs.
      key: the PRNG key that fixes the FA/DFA feedback weights (required for them; pass the
        same key at every step). See :func:`feedback_weights`.

    Returns:
      A pytree like ``params``: descend along it (``params − lr · update``).

    Align-zero is the VJP of ``apply_fn(·, x)`` at θ₀ applied to e — gradient descent on the
    network linearised at init, driven by the real error. For a recurrent layer the
    temporal credit runs through the frozen RNN over the whole horizon (with
    ``mode="parallel"``, the parallel adjoint of :func:`pararnn.solve`).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    x, y = _split_batch(batch)
    if rule == "backprop":
        return jax.grad(lambda p: loss_fn(apply_fn(p, x), y))(params)
    _check_same_structure(params, params_init)
    if rule == "align_zero":
        e = output_error(loss_fn, apply_fn(params, x), y)
        out0, vjp = jax.vjp(lambda p: apply_fn(p, x), params_init)
        return vjp(e.astype(out0.dtype))[0]
    stack = stack_of(apply_fn)
    if stack is None:
        raise ValueError(f"rule {rule!r} needs the layer structure of the network: pass a "
                         f"pararnn.align.LayerStack (e.g. pararnn.align.mlp(...)) or its .apply "
                         f"as apply_fn, got {apply_fn!r}. 'backprop' and 'align_zero' work "
                         f"for any apply_fn.")
    if rule in ("fa", "dfa") and key is None:
        raise ValueError(f"rule {rule!r} needs key= (a PRNG key fixing its random feedback "
                         f"weights; pass the same key at every step).")
    out, zs, records = stack.forward(params, x)
    e = output_error(loss_fn, out, y)
    if rule == "align_ada":
        deltas = stack.deltas(params_init, x, e)
    elif rule == "fa":
        deltas = stack.deltas(params, x, e, feedback=feedback_weights("fa", stack, params, x, key=key))
    elif rule == "dfa":
        deltas = _dfa_deltas(stack, zs, e, feedback_weights("dfa", stack, params, x, key=key))
    else:  # readout
        deltas = [None] * (len(stack) - 1) + [e]
    return stack.local_grads(params, records, deltas)


def alignment(update: Any, reference: Any) -> jax.Array:
    """Cosine similarity of two pytrees (flattened): 1 = same direction."""
    a = jnp.concatenate([jnp.ravel(l) for l in jax.tree_util.tree_leaves(update)])
    b = jnp.concatenate([jnp.ravel(l) for l in jax.tree_util.tree_leaves(reference)])
    b = b.astype(a.dtype)
    denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(denom > 0, jnp.vdot(a, b) / jnp.where(denom > 0, denom, 1), 0.0)
