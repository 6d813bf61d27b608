"""The sequence mixers of the language model (``model.mixer``), all behind one interface.

A mixer is an ``nnx.Module`` with

- ``mixer(x_BxTxD, cache=None, mode=None) -> (y_BxTxD, new_cache)``: the whole sequence in
  parallel, continuing from ``cache`` (None: the sequence start); ``mode="sequential"`` is
  what one-token decoding uses;
- ``mixer.init_cache(batch_size, capacity, dtype=None)``: a cache to decode up to
  ``capacity`` positions with fixed shapes (None when the mixer's cache has a fixed size
  anyway);
- ``mixer.out_proj``: its last linear layer (scaled at init by 1/√(2L), like the MLP's).

Mixers: ``recurrent`` (a pararnn recurrent cell, ``model.cell``), ``attention`` (causal
multi-head softmax attention with RoPE and a KV cache) and ``mamba2`` (the SSD selective
state-space model).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from .attention import AttentionMixer
from .errors import MixerConfigError
from .mamba2 import Mamba2Mixer
from .recurrent_mixer import RecurrentMixer

MIXERS = {"recurrent": RecurrentMixer, "attention": AttentionMixer, "mamba2": Mamba2Mixer}

# the LanguageModel / ModelConfig options each mixer reads
MIXER_OPTIONS = {
    "recurrent": ("cell", "num_heads", "conv_kernel", "max_recurrent_norm", "mode", "solver_method"),
    "attention": ("head_dim", "rope_base"),
    "mamba2": ("head_dim", "ssm_state", "ssm_expand", "conv_kernel", "ssm_chunk", "ssm_algorithm", "mode"),
}


def make_mixer(kind: str, d_model: int, *, std: float, rngs: nnx.Rngs, dtype: Any = None,
               param_dtype: Any = jnp.float32, seq_axis: str | None = None, **options) -> nnx.Module:
    """Build the mixer ``kind`` from the options it reads (:data:`MIXER_OPTIONS`; the others
    are ignored, so one set of model options serves every mixer). ``seq_axis``: sequence
    parallelism over that mesh axis (recurrent mixer only)."""
    if kind not in MIXERS:
        raise MixerConfigError(f"model.mixer must be one of {sorted(MIXERS)}, got {kind!r}.")
    if seq_axis is not None and kind != "recurrent":
        raise MixerConfigError(f"sequence parallelism (mesh.seq > 1) needs model.mixer='recurrent' "
                               f"(its Newton solve splits across devices); got {kind!r}.")
    missing = [k for k in MIXER_OPTIONS[kind] if k not in options]
    if missing:
        raise TypeError(f"make_mixer({kind!r}): missing options {missing}.")
    chosen = {k: options[k] for k in MIXER_OPTIONS[kind]}
    if seq_axis is not None:
        chosen["seq_axis"] = seq_axis
    return MIXERS[kind](d_model, std=std, rngs=rngs, dtype=dtype, param_dtype=param_dtype, **chosen)
