"""Device mesh and layouts: data parallel or fully sharded (FSDP-style) parameters, with JAX's own sharding.

The mesh has two axes, ("data", "fsdp"). A batch is split over both. Under "data" every parameter
is replicated; under "fsdp" each parameter of rank >= 2 is split along its largest axis that the
device count divides (the rest replicated), and XLA inserts the gathers. The jitted step is the same
function in every layout: computation follows the shardings of its inputs.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sasrecllm_jax.errors import ConfigError


def init_distributed(enabled: bool) -> None:
    """Several hosts: coordinates come from the environment (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS...)."""
    if enabled:
        jax.distributed.initialize()


def make_mesh(mode: str) -> Mesh:
    devices = np.asarray(jax.devices())
    shape = (len(devices), 1) if mode == "data" else (1, len(devices))
    return Mesh(devices.reshape(shape), ("data", "fsdp"))


def param_spec(x, n: int) -> P:
    shape = np.shape(x)
    if len(shape) < 2 or n == 1:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % n == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(tree, mesh: Mesh, mode: str):
    n = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, param_spec(x, n) if mode == "fsdp" else P()), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp")))


def check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"{what} = {batch_size} is not divisible by the {n} devices of the mesh; "
                          f"choose a multiple of {n}")


def jit_step(train_step, layout=None):
    """train_step(state, batch) -> (state, metrics), jitted with the state donated. Under a mesh the new state
    keeps the layout the old one came in (`layout`, from param_shardings): left to XLA, some leaves come out
    laid out otherwise, and the second step, fed the first one's state, would compile again."""
    if layout is None:
        return jax.jit(train_step, donate_argnums=0)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(layout, None))


def place(tree, shardings):
    return jax.device_put(tree, shardings)


def place_batch(batch: dict, mesh: Mesh) -> dict:
    s = batch_sharding(mesh)
    return {k: jax.device_put(v, s) for k, v in batch.items()}
