"""Permutation specs for MLPs, pararnn's recurrent layers and its language model.

Symmetries used (each leaves the network's function unchanged):

- MLP: the hidden units of every layer.
- Diagonal-recurrence cells (ParaGRU, ParaLSTM, MinGRU): the hidden channels permute
  consistently through the recurrent vectors ``a`` (and peepholes ``p``), the gate biases
  ``b``, the columns of the input projection ``B`` and whatever reads the output (the output
  projection). Their input projection is block-diagonal over ``num_heads`` heads, so a
  channel can only move within its head: the hidden and the input permutations are
  block-diagonal (``groups = num_heads``) and ``B`` is matched through a dense
  block-diagonal ``(in, gates, H)`` view.
- Dense cells (GRU, LSTM, Elman): the hidden units permute the columns of each gate's block
  of ``W_i``, ``b``, ``W_h`` and the rows of ``W_h``.
- Language model: the residual stream (embedding columns, every RMSNorm scale on it, the
  rows of in_proj / gate_up and the columns of out_proj / down), and per block the cell's
  input channels (conv), its hidden channels (with the z half of in_proj and the mixer's
  RMSNorm) and the SwiGLU hidden units.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..cells import Cell, ElmanCell, GRUCell, LSTMCell, MinGRUCell, ParaGRUCell, ParaLSTMCell
from .spec import PermutationSpec, View

# number of gates in the input projection of each diagonal-recurrence cell
_HEAD_CELLS = {ParaGRUCell: 3, ParaLSTMCell: 3, MinGRUCell: 2}
_DENSE_CELLS = {GRUCell: 3, LSTMCell: 4, ElmanCell: 1}


def mlp_spec(layers: Sequence[str], *, bias: bool = True, kernel: str = "kernel", bias_name: str = "bias",
             prefix: str = "P") -> dict[str, tuple]:
    """Spec for a stack of dense layers with kernels ``(in, out)`` (Flax convention):
    ``layers[i]/kernel`` is ``(P{i-1}, P{i})`` with the input and output axes of the first
    and last layer not permuted; biases ``(P{i},)``.

    >>> mlp_spec(["Dense_0", "Dense_1"])
    {'Dense_0/kernel': (None, 'P0'), 'Dense_0/bias': ('P0',), 'Dense_1/kernel': ('P0', None), 'Dense_1/bias': (None,)}
    """
    if len(layers) < 1:
        raise ValueError("mlp_spec needs at least one layer name.")
    spec: dict[str, tuple] = {}
    for i, name in enumerate(layers):
        p_in = f"{prefix}{i - 1}" if i > 0 else None
        p_out = f"{prefix}{i}" if i < len(layers) - 1 else None
        spec[f"{name}/{kernel}"] = (p_in, p_out)
        if bias:
            spec[f"{name}/{bias_name}"] = (p_out,)
    return spec


# ---- views ---------------------------------------------------------------------------------


def head_blocked_view(heads: int, gates: int) -> View:
    """``B (heads, in/heads, gates·H/heads)`` ↔ block-diagonal ``(in, gates, H)``: head g maps
    inputs ``g·in/heads …`` to hidden channels ``g·H/heads …`` (:func:`pararnn.cells.base.multihead_project`)."""

    def split(b):
        h, per_in, per_out = b.shape
        hh = per_out // gates
        dense = np.zeros((h * per_in, gates, h * hh), b.dtype)
        for g in range(h):
            dense[g * per_in:(g + 1) * per_in, :, g * hh:(g + 1) * hh] = b[g].reshape(per_in, gates, hh)
        return {"": dense}

    def merge(pieces, like):
        dense, (h, per_in, per_out) = pieces[""], like.shape
        hh = per_out // gates
        return np.stack([dense[g * per_in:(g + 1) * per_in, :, g * hh:(g + 1) * hh].reshape(per_in, per_out)
                         for g in range(h)])

    return View(split, merge, f"head-blocked kernel ({heads} heads, {gates} gates) as block-diagonal (in, gates, H)")


def gates_view(gates: int) -> View:
    """The last axis ``gates·H`` as ``(gates, H)`` (dense cells' fused gate kernels)."""

    def split(w):
        return {"": w.reshape(w.shape[:-1] + (gates, w.shape[-1] // gates))}

    def merge(pieces, like):
        return pieces[""].reshape(like.shape)

    return View(split, merge, f"last axis as ({gates} gates, H)")


def split_view(axis: int, names: Sequence[str]) -> View:
    """Split ``axis`` into equal pieces addressed as ``path:name`` (fused projections)."""

    def split(w):
        return dict(zip(names, np.split(w, len(names), axis=axis)))

    def merge(pieces, like):
        return np.concatenate([pieces[n] for n in names], axis=axis)

    return View(split, merge, f"axis {axis} split into {list(names)}")


# ---- recurrent layers ----------------------------------------------------------------------


def _cell_of(layer_or_cell) -> Cell:
    cell = getattr(layer_or_cell, "cell", layer_or_cell)
    if not isinstance(cell, Cell):
        raise TypeError(f"expected a pararnn.nn recurrent layer or a pararnn.cells cell, got "
                        f"{type(layer_or_cell).__name__}.")
    return cell


def recurrent_layer_spec(layer_or_cell, *, inputs: str | None = None, hidden: str = "H",
                         prefix: str = "") -> PermutationSpec:
    """Spec for the parameters of one recurrent layer (paths relative to ``prefix``).

    Args:
      layer_or_cell: a :mod:`pararnn.nn` layer (ParaGRU, ParaLSTM, MinGRU, GRU, LSTM, Elman)
        or its cell.
      inputs: the permutation of the layer's input features (None: inputs not permuted, e.g.
        the data).
      hidden: the name of the hidden-channel permutation; whatever reads the layer's output
        must use the same name on its input axis.
      prefix: path of the layer within the model (e.g. ``"blocks/0/mixer/cell"``).

    For multi-head cells ``groups`` keeps both permutations within heads.
    """
    cell = _cell_of(layer_or_cell)
    kind = type(cell)
    if kind in _HEAD_CELLS:
        gates, heads = _HEAD_CELLS[kind], cell.num_heads
        axes = {"B": (inputs, None, hidden), "b": (None, hidden)}
        if kind in (ParaGRUCell, ParaLSTMCell):
            axes["a"] = (None, hidden)
        if kind is ParaLSTMCell:
            axes["p"] = (None, hidden)
        groups = {hidden: heads} if heads > 1 else {}
        if heads > 1 and inputs is not None:
            groups[inputs] = heads
        spec = PermutationSpec(axes, groups, {"B": head_blocked_view(heads, gates)})
    elif kind in _DENSE_CELLS:
        gates = _DENSE_CELLS[kind]
        if gates == 1:
            spec = PermutationSpec({"W_i": (inputs, hidden), "b": (hidden,), "W_h": (hidden, hidden)})
        else:
            view = gates_view(gates)
            spec = PermutationSpec({"W_i": (inputs, None, hidden), "b": (None, hidden), "W_h": (hidden, None, hidden)},
                                   {}, {"W_i": view, "b": view, "W_h": view})
    else:
        raise TypeError(f"no permutation spec for cell type {kind.__name__}.")
    return spec.prefixed(prefix)


def require_recurrent_mixers(model, where: str) -> None:
    """Raise TypeError unless every block of ``model`` has the recurrent mixer: the specs and
    features here know its parameters only (attention and Mamba2 mixers have other symmetries)."""
    for i, block in enumerate(model.blocks):
        if not hasattr(block.mixer, "cell"):  # the recurrent mixer is the one with a cell
            raise TypeError(f"{where}: block {i} has the {getattr(model, 'mixer', type(block.mixer).__name__)!r} "
                            f"mixer; only language models with the recurrent mixer (model.mixer='recurrent') "
                            f"are supported.")


def language_model_spec(model) -> PermutationSpec:
    """Spec for a :class:`pararnn.models.LanguageModel` (paths as in ``nnx.state(model,
    nnx.Param)``). Permutations: ``"R"`` (residual stream) and per block i
    ``"blocks/i/X"`` (cell inputs), ``"blocks/i/H"`` (cell hidden) and ``"blocks/i/M"``
    (SwiGLU hidden). Recurrent mixers only (TypeError otherwise)."""
    require_recurrent_mixers(model, "language_model_spec")
    axes: dict[str, tuple] = {"embed/embedding": (None, "R"), "final_norm/scale": ("R",)}
    spec = PermutationSpec(axes)
    for i, block in enumerate(model.blocks):
        p, x, h, m = f"blocks/{i}", f"blocks/{i}/X", f"blocks/{i}/H", f"blocks/{i}/M"
        block_axes = {
            f"{p}/mixer_norm/scale": ("R",),
            f"{p}/mixer/in_proj/kernel:x": ("R", x),
            f"{p}/mixer/in_proj/kernel:z": ("R", h),
            f"{p}/mixer/conv/weight": (None, x),
            f"{p}/mixer/conv/bias": (x,),
            f"{p}/mixer/norm/scale": (h,),
            f"{p}/mixer/out_proj/kernel": (h, "R"),
            f"{p}/mlp_norm/scale": ("R",),
            f"{p}/mlp/gate_up/kernel:gate": ("R", m),
            f"{p}/mlp/gate_up/kernel:up": ("R", m),
            f"{p}/mlp/down/kernel": (m, "R"),
        }
        views = {f"{p}/mixer/in_proj/kernel": split_view(1, ["x", "z"]),
                 f"{p}/mlp/gate_up/kernel": split_view(1, ["gate", "up"])}
        spec = spec | PermutationSpec(block_axes, {}, views)
        spec = spec | recurrent_layer_spec(block.mixer.cell, inputs=x, hidden=h, prefix=f"{p}/mixer/cell")
    return spec
