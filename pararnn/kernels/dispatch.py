"""One jitted function, two lowerings: the Triton kernel on CUDA GPUs, the same kernel in
Pallas interpret mode everywhere else.

``lax.platform_dependent`` keeps both in the traced program and lowers only the branch of the
platform being compiled for, so ``jax.jit(f).lower(lowering_platforms=("cuda",))`` on a
CPU-only machine produces the Triton custom call (``__gpu$xla.gpu.triton``) while running
``f`` on the CPU executes the kernel body as XLA operations (slow, but the same arithmetic:
this is how the test suite checks the kernels without a GPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

__all__ = ["KernelOptions", "pallas_on_every_platform", "TRITON_CUSTOM_CALL", "is_cuda_backend"]

#: The custom-call target of a Pallas Triton kernel in lowered StableHLO.
TRITON_CUSTOM_CALL = "__gpu$xla.gpu.triton"


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """Triton launch options (defaults are a model, not GPU-tuned yet).

    Attributes:
      num_warps: warps per program (4: 128 threads; a (C, BD) = 512-element tile is then 4
        registers per thread).
      num_stages: software-pipelining depth of the time loops (their loads do not depend on
        the recurrence, so the pipeliner can prefetch them).
    """

    num_warps: int = 4
    num_stages: int = 2


def pallas_on_every_platform(make_kernel: Callable[[bool], Callable], *, grid: tuple[int, ...],
                             in_specs: Sequence, out_specs: Any, out_shape: Any, name: str,
                             options: KernelOptions = KernelOptions()) -> Callable:
    """``f(*inputs) -> outputs``: the Pallas kernel ``make_kernel(True)`` compiled by Triton on
    CUDA, ``make_kernel(False)`` run in interpret mode on every other platform (the flag lets
    a kernel add GPU-only operations such as barriers)."""

    def build(interpret: bool) -> Callable:
        params = None if interpret else plgpu.CompilerParams(
            num_warps=options.num_warps, num_stages=options.num_stages)
        return pl.pallas_call(make_kernel(not interpret), grid=grid, in_specs=list(in_specs),
                              out_specs=out_specs,
                              out_shape=out_shape, interpret=interpret, compiler_params=params,
                              name=name)

    gpu, interpreted = build(False), build(True)

    def run(*inputs):
        return lax.platform_dependent(*inputs, cuda=gpu, default=interpreted)

    return run


def is_cuda_backend(backend: str | None = None) -> bool:
    """Whether JAX's default (or the given) backend is a CUDA GPU."""
    backend = backend or jax.default_backend()
    if backend == "cuda":
        return True
    if backend != "gpu":
        return False
    try:
        version = jax.devices("gpu")[0].client.platform_version.lower()
    except Exception:  # no GPU client after all
        return False
    return "cuda" in version
