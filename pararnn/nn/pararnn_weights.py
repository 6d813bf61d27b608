"""Weights from Apple's ParaRNN (PyTorch) into pararnn's ParaGRU / ParaLSTM layers, and back.

ParaRNN's cells keep their parameters as ``state_dict`` entries (plain arrays here: pass
``{k: v.numpy() for k, v in module.state_dict().items()}`` — no torch needed):

============  ===========================  ==============================================
ParaRNN       ``GRUDiagMH``                ``LSTMCIFGDiagMH``
============  ===========================  ==============================================
``A``         (3, H): [z, r, h]            (3, N): [f, o, c]
``B``         (heads, in/heads, 3, H/heads) (heads, in/heads, 3, N/heads), gates [f, o, c]
``C``         —                            (2, N): peepholes [f, o]
``b``         (3, H): [z, r, h]            (3, N): [f, o, c]
============  ===========================  ==============================================

pararnn stores the same numbers as ``a`` (gates [z, r, ĥ] / [f, c, o]), ``B`` (heads,
in/heads, 3·H/heads) — each head's columns gate-major — ``b``, and ParaLSTM's peepholes
``p`` = [p_f, p_o]. The equations are the same (ParaRNN's ``recurrence_step``; pararnn's
:mod:`pararnn.cells.paragru` / :mod:`pararnn.cells.paralstm`), with one difference:
pararnn passes ``a`` (and ``p``) through the soft clamp ``m·tanh(a/m)`` when
``max_recurrent_norm = m`` is set. Loading therefore stores ``a = m·artanh(A/m)`` (exact
for |A| < m; larger weights raise and ask for a layer with ``max_recurrent_norm=None``),
so that the loaded layer computes ParaRNN's function either way.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from ..cells import ParaGRUCell, ParaLSTMCell

__all__ = ["load_pararnn_state_dict", "to_pararnn_state_dict"]

# pararnn gate k of ParaLSTM is ParaRNN gate _LSTM_ORDER[k]: [f, c, o] ← [f, o, c]
_LSTM_ORDER = np.array([0, 2, 1])


def _kind(layer) -> str:
    cell = getattr(layer, "cell", None)
    if type(cell) is ParaGRUCell:
        return "gru"
    if type(cell) is ParaLSTMCell:
        return "lstm"
    raise TypeError(f"load_pararnn_state_dict: layer must be a pararnn.nn.ParaGRU or ParaLSTM, got "
                    f"{type(layer).__name__}{' with cell ' + type(cell).__name__ if cell is not None else ''}.")


def _expected_shapes(layer, kind: str) -> dict[str, tuple[int, ...]]:
    cell = layer.cell
    heads, n = cell.num_heads, cell.hidden_features
    shapes = {"A": (3, n), "B": (heads, cell.in_features // heads, 3, n // heads), "b": (3, n)}
    if kind == "lstm":
        shapes["C"] = (2, n)
    return shapes


def _unclamp(values: np.ndarray, bound: float | None, key: str) -> np.ndarray:
    """The raw weight whose soft clamp ``bound·tanh(a/bound)`` is ``values``."""
    if bound is None:
        return values
    worst = float(np.max(np.abs(values))) if values.size else 0.0
    if worst >= bound:
        raise ValueError(
            f"load_pararnn_state_dict: {key} has entries up to |{worst:.4g}|, but the layer clamps its "
            f"recurrent weights to |·| < max_recurrent_norm={bound}; build the layer with "
            f"max_recurrent_norm=None to load these weights exactly.")
    return bound * np.arctanh(values / bound)


def load_pararnn_state_dict(layer, state_dict: Mapping[str, Any], *, prefix: str = ""):
    """Copy a ParaRNN cell's weights into ``layer`` (in place; returns ``layer``).

    Args:
      layer: a :class:`pararnn.nn.ParaGRU` (from ``GRUDiagMH``) or :class:`pararnn.nn.ParaLSTM`
        (from ``LSTMCIFGDiagMH``) of the same sizes and ``num_heads``.
      state_dict: ``{name: array}`` (NumPy arrays, or anything ``np.asarray`` reads).
      prefix: the cell's key prefix inside a whole model's state dict, e.g.
        ``"blocks.0.rnn_cell."``; only keys under it are read.

    Raises:
      ValueError: a key is missing or unexpected, a shape differs (the message names the key,
        the shape seen and the one expected), or a recurrent weight exceeds the layer's
        ``max_recurrent_norm``.
    """
    kind = _kind(layer)
    shapes = _expected_shapes(layer, kind)
    mine = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    missing = sorted(set(shapes) - set(mine))
    extra = sorted(set(mine) - set(shapes))
    if missing or extra:
        raise ValueError(
            f"load_pararnn_state_dict: a ParaRNN {'GRUDiagMH' if kind == 'gru' else 'LSTMCIFGDiagMH'} "
            f"state dict has keys {sorted(prefix + k for k in shapes)}; missing {[prefix + k for k in missing]}, "
            f"unexpected {[prefix + k for k in extra]}.")
    arrays = {}
    for key, want in shapes.items():
        value = np.asarray(mine[key], dtype=np.float64)
        if value.shape != want:
            raise ValueError(f"load_pararnn_state_dict: {prefix + key} has shape {value.shape}, expected {want} "
                             f"for {type(layer).__name__}(in_features={layer.in_features}, hidden_features="
                             f"{layer.hidden_features}, num_heads={layer.cell.num_heads}).")
        arrays[key] = value
    bound = layer.cell.max_recurrent_norm
    order = _LSTM_ORDER if kind == "lstm" else np.arange(3)
    heads, per_in = shapes["B"][:2]
    new = {
        "a": _unclamp(arrays["A"][order], bound, prefix + "A"),
        "B": arrays["B"][:, :, order, :].reshape(heads, per_in, -1),
        "b": arrays["b"][order],
    }
    if kind == "lstm":
        new["p"] = _unclamp(arrays["C"], bound, prefix + "C")
    for key, value in new.items():
        variable = getattr(layer, key)
        variable[...] = jnp.asarray(value, dtype=variable[...].dtype)
    return layer


def to_pararnn_state_dict(layer, *, prefix: str = "") -> dict[str, np.ndarray]:
    """``layer``'s weights in ParaRNN's layout (NumPy arrays, ``prefix`` prepended to the
    keys): the effective (clamped) recurrent weights, so that ParaRNN computes the layer's
    function. The inverse of :func:`load_pararnn_state_dict`."""
    kind = _kind(layer)
    shapes = _expected_shapes(layer, kind)
    bound = layer.cell.max_recurrent_norm
    clamp = (lambda a: a) if bound is None else (lambda a: bound * np.tanh(a / bound))
    inverse = np.argsort(_LSTM_ORDER) if kind == "lstm" else np.arange(3)
    get = lambda key: np.asarray(getattr(layer, key)[...])  # noqa: E731
    heads, per_in, _, per_head = shapes["B"]
    out = {"A": clamp(get("a"))[inverse],
           "B": get("B").reshape(heads, per_in, 3, per_head)[:, :, inverse, :],
           "b": get("b")[inverse]}
    if kind == "lstm":
        out["C"] = clamp(get("p"))
    return {prefix + k: v for k, v in out.items()}
