"""Parameter counts and memory estimates from abstract shapes (nothing is allocated)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict

import jax
import jax.numpy as jnp

from .config import Config, MeshConfig
from .errors import TrainingError

GiB = 2 ** 30


def param_breakdown(abstract_params) -> "OrderedDict[str, int]":
    """Parameter counts grouped by top-level module (blocks are grouped per index)."""
    groups: OrderedDict[str, int] = OrderedDict()
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        name = keys[0] if keys[0] != "blocks" else f"blocks.{keys[1]}"
        groups[name] = groups.get(name, 0) + math.prod(leaf.shape)
    return groups


def count_params(abstract_params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract_params))


def _itemsize(name: str) -> int:
    return jnp.dtype(name).itemsize


def activation_bytes(cfg: Config, batch_per_device: int, seq: int = 1) -> int:
    """A rough upper estimate of the activations kept for the backward pass on one device.

    Per layer and token: the mixer stores ~12·d values (recurrent: projections, conv, gates,
    states, Jacobians) — attention ~6·d plus its float32 scores and probabilities (2 per head
    and key, so quadratic in seq_len), Mamba2 ~6 per inner channel plus its float32 chunk
    matrices (2 per head and chunk position) — and the SwiGLU ~3·h; with ``remat`` only the
    block input survives per layer, plus one layer's worth during its recomputation. Logits
    and their gradient are float32. With sequence parallelism (``seq`` devices per sequence)
    a device holds ``seq_len / seq`` positions of each of its sequences.
    """
    m, d = cfg.model, cfg.model.d_model
    h = m.mlp_hidden or 64 * math.ceil(8 * d / 3 / 64)
    tokens = batch_per_device * (cfg.data.seq_len // max(seq, 1)) // max(cfg.optim.grad_accum, 1)
    if m.mixer == "attention":
        heads = max(d // max(m.head_dim, 1), 1)
        mixer = 6 * d * _itemsize(m.dtype) + 2 * heads * cfg.data.seq_len * 4
    elif m.mixer == "mamba2":
        inner = m.ssm_expand * d
        heads = max(inner // max(m.head_dim, 1), 1)
        mixer = (6 * inner + 4 * m.ssm_state) * _itemsize(m.dtype) + 2 * heads * m.ssm_chunk * 4
    else:
        mixer = 12 * d * _itemsize(m.dtype)
    per_layer = mixer + 3 * h * _itemsize(m.dtype)
    if m.remat:
        layers = m.n_layers * d * _itemsize(m.dtype) + per_layer
    else:
        layers = m.n_layers * per_layer
    return tokens * (layers + 2 * m.vocab_size * 4)


def estimate_bytes_per_device(cfg: Config, n_params: int, n_devices: int, fsdp: int, seq: int = 1) -> dict:
    """Bytes per device: parameters, gradients and AdamW's two moments sharded over ``fsdp``,
    plus activations for this device's share of the batch (``n_devices / seq`` devices split
    the batch; ``seq`` devices split each sequence)."""
    p_bytes = n_params * _itemsize(cfg.model.param_dtype)
    params = p_bytes / fsdp
    grads = p_bytes / fsdp
    optimizer = 2 * n_params * _itemsize(cfg.model.param_dtype) / fsdp
    batch_per_device = max(cfg.data.batch_size // max(n_devices // max(seq, 1), 1), 1)
    acts = activation_bytes(cfg, batch_per_device, seq)
    total = params + grads + optimizer + acts
    return {"params": params, "grads": grads, "optimizer": optimizer, "activations": acts, "total": total}


def device_memory_bytes() -> tuple[int | None, str]:
    """Usable memory of one local device, and where the number came from."""
    dev = jax.local_devices()[0]
    try:
        stats = dev.memory_stats()
    except Exception:
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.device_kind} memory_stats"
    try:
        with open("/proc/meminfo") as f:
            text = f.read()
        kb = int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1))
        return kb * 1024 // max(jax.local_device_count(), 1), "host RAM (MemAvailable) / local devices"
    except (OSError, AttributeError):
        return None, "unknown"


def fit_suggestion(cfg: Config, n_params: int, device_gib: float = 80.0) -> str:
    """Smallest fsdp degree (a power of two) on ``device_gib`` devices that would fit."""
    for fsdp in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        need = estimate_bytes_per_device(cfg, n_params, fsdp, fsdp)["total"]
        if need <= 0.9 * device_gib * GiB:
            return (f"it fits on {fsdp} devices of {device_gib:.0f} GiB with --set mesh.fsdp={fsdp} "
                    f"(~{need / GiB:.1f} GiB each)")
    return f"it needs more than 512 devices of {device_gib:.0f} GiB"


@dataclasses.dataclass(frozen=True)
class MeshPlan:
    """The (data, fsdp, seq) mesh a config asks for, given how many devices are ``available``.

    ``mesh.data=-1`` means "all devices the fsdp and seq axes leave", at least 1.
    ``--dry-run`` and the memory preflight both estimate per device on this plan, so they agree.
    """

    data: int
    fsdp: int
    available: int
    seq: int = 1

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.seq

    def describe(self) -> str:
        seq = f" × seq {self.seq}" if self.seq > 1 else ""
        return (f"data {self.data} × fsdp {self.fsdp}{seq} = {self.devices} "
                f"device{'s' if self.devices != 1 else ''}")


def mesh_settings(mesh: MeshConfig) -> str:
    """The mesh keys as set, for messages: ``mesh.seq`` only when it splits sequences."""
    seq = f", mesh.seq={mesh.seq}" if mesh.seq > 1 else ""
    return f"mesh.data={mesh.data}, mesh.fsdp={mesh.fsdp}{seq}"


def plan_mesh(mesh: MeshConfig, available: int) -> MeshPlan:
    data = mesh.data if mesh.data > 0 else max(available // (mesh.fsdp * mesh.seq), 1)
    return MeshPlan(data=data, fsdp=mesh.fsdp, available=available, seq=mesh.seq)


def _breakdown(need: dict) -> str:
    return (f"parameters {need['params'] / GiB:.1f}, gradients {need['grads'] / GiB:.1f}, AdamW state "
            f"{need['optimizer'] / GiB:.1f}, activations {need['activations'] / GiB:.1f}")


def memory_preflight(cfg: Config, n_params: int, available: int,
                     device_memory: tuple[int | None, str] | None = None) -> dict:
    """Check, before anything is allocated, that ``cfg`` fits the ``available`` devices.

    Estimates bytes per device on :func:`plan_mesh`'s mesh (the one ``--dry-run`` reports);
    raises :class:`TrainingError` naming that mesh and the estimate when the mesh needs more
    devices than are available or a device's memory (``device_memory``: ``(bytes, where the
    number came from)``, default :func:`device_memory_bytes`) is too small. Returns the
    estimate (``estimate_bytes_per_device``'s dict)."""
    plan = plan_mesh(cfg.mesh, available)
    need = estimate_bytes_per_device(cfg, n_params, plan.devices, plan.fsdp, plan.seq)
    have, source = device_memory if device_memory is not None else device_memory_bytes()
    what = f"config {cfg.name!r} ({n_params / 1e9:.2f} B parameters)"
    if plan.devices > available:
        here = ""
        if have is not None:
            alone = estimate_bytes_per_device(cfg, n_params, available, 1)["total"]
            here = (f"; with mesh.fsdp=1 on the {available} device{'s' if available != 1 else ''} here it would "
                    f"need about {alone / GiB:.1f} GiB per device, and a device here has {have / GiB:.1f} GiB "
                    f"({source})")
        raise TrainingError(
            f"not enough devices: {what} is set up for a mesh of {plan.describe()} "
            f"({mesh_settings(cfg.mesh)}), where it needs about {need['total'] / GiB:.1f} GiB per device "
            f"({_breakdown(need)}; the --dry-run estimate), but {available} device{'s are' if available != 1 else ' is'} "
            f"available{here}. Run it where {plan.devices} devices are available (several hosts: see README), "
            f"or set mesh.fsdp / mesh.data / mesh.seq for this machine.")
    if have is not None and need["total"] > have:
        raise TrainingError(
            f"not enough memory: {what} needs about {need['total'] / GiB:.1f} GiB per device ({_breakdown(need)}) "
            f"on a mesh of {plan.describe()} ({mesh_settings(cfg.mesh)}), but a device "
            f"here has {have / GiB:.1f} GiB ({source}). {fit_suggestion(cfg, n_params)}.")
    return need
