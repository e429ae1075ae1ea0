"""What a run ran on: library versions, the JAX backend and device, the CPU model. Recorded in every
results.json, so that a difference between two runs can be told apart from a difference of machines."""
from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import jax

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"python": platform.python_version(), **versions, "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(), "cpu": cpu_model(),
            "platform": f"{sys.platform} {platform.machine()}"}


def differences(a: dict | None, b: dict | None) -> dict[str, tuple]:
    """{field: (a's, b's)} where two recorded environments differ (a missing record: {'environment': ...})."""
    if not a or not b:
        return {} if a == b else {"environment": ("recorded" if a else "not recorded",
                                                  "recorded" if b else "not recorded")}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
