"""Devices: the multi-process runtime, the (data, fsdp, seq) mesh and how arrays are sharded.

Parameters (and optimizer state) are sharded FSDP-style: each array is split along its
largest axis that the ``fsdp`` mesh axis divides, and replicated across ``data`` and
``seq``. Batches are split along their first axis over ``data`` × ``fsdp`` and, with
sequence parallelism (``mesh.seq > 1``), along time over ``seq``.
"""

from __future__ import annotations

import os

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .config import ConfigError, MeshConfig

BATCH_AXES = ("data", "fsdp")
SEQ_AXIS = "seq"


def maybe_initialize_distributed() -> bool:
    """Start JAX's distributed runtime when the environment describes several processes
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, as set by a
    launcher or by hand). Returns whether it did."""
    if "JAX_COORDINATOR_ADDRESS" not in os.environ:
        return False
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        # CPU processes talk over gloo (the default has no cross-process collectives);
        # accelerators ignore this setting.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    except KeyError as e:
        raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set, so {e.args[0]} must be set too.") from None
    return True


def mesh_devices(cfg: MeshConfig) -> list:
    devices = jax.devices()
    if cfg.devices == -1:
        return devices
    if not 1 <= cfg.devices <= len(devices):
        raise ConfigError(f"mesh.devices={cfg.devices} must be -1 or between 1 and the {len(devices)} devices here.")
    if jax.process_count() > 1:
        raise ConfigError("mesh.devices must be -1 in multi-process runs (every process's devices are used).")
    return devices[: cfg.devices]


def make_mesh(cfg: MeshConfig) -> Mesh:
    all_devices = mesh_devices(cfg)
    n = len(all_devices)
    inner = cfg.fsdp * cfg.seq
    if cfg.fsdp < 1 or cfg.seq < 1 or n % inner:
        raise ConfigError(f"mesh.fsdp={cfg.fsdp} × mesh.seq={cfg.seq} = {inner} must divide the {n} "
                          f"available devices.")
    data = cfg.data if cfg.data > 0 else n // inner
    if data * inner != n:
        raise ConfigError(f"mesh.data={cfg.data} × mesh.fsdp={cfg.fsdp} × mesh.seq={cfg.seq} = "
                          f"{data * inner} must equal the {n} available devices (mesh.data=-1 uses all "
                          f"the rest).")
    # seq innermost: the devices of one sequence are neighbours (the halo and summary exchange)
    devices = np.asarray(all_devices).reshape(data, cfg.fsdp, cfg.seq)
    return Mesh(devices, ("data", "fsdp", SEQ_AXIS))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest axis divisible by ``fsdp``; replicate small or indivisible arrays."""
    if fsdp == 1 or not shape:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % fsdp == 0 and d >= fsdp]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: shape[i])
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return P(*spec)


def state_shardings(mesh: Mesh, abstract_state):
    """NamedShardings for a pytree of arrays / ShapeDtypeStructs (parameters, optimizer state)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(getattr(x, "shape", ())), fsdp)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """(batch, time) arrays: batch over data × fsdp, time over seq."""
    return NamedSharding(mesh, P(BATCH_AXES, SEQ_AXIS) if mesh.shape[SEQ_AXIS] > 1 else P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_rows(global_batch: int) -> slice:
    """This process's rows of a global batch (processes own contiguous, equal shares)."""
    per = global_batch // jax.process_count()
    start = jax.process_index() * per
    return slice(start, start + per)


def to_global(batch_np: dict, mesh: Mesh, global_batch: int) -> dict:
    """Assemble this process's rows into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
            for k, v in batch_np.items()}
