"""Compiled programs kept on disk (JAX's persistent compilation cache), so that a machine compiles each
train step and scorer once: a second quickstart, `score`, `recommend` or `ablate` on a finished run, a
resumed run and every seed of a grid load what an earlier command compiled. On 2 CPU cores a SmolLM2
train step compiles in 4-6 s per prompt length and loads from the cache in under 2; an LLM phase on a GPU
compiles for 7-52 s (bench/RESULTS.md). Every program is kept, not only slow ones: loading a finished
run for `score` jits some forty small programs (parameter initialisers, conversions) at 0.1 s each,
which the cache turns into about 4 s less per call.

Where: $SASRECLLM_COMPILE_CACHE if set ("off" turns the cache off), else `xla/HOST` under the download
cache ($SASRECLLM_CACHE, default ~/.cache/sasrecllm_jax), HOST naming the jax version and the CPU model
and features, so that machines sharing a home directory keep apart what only one of them can run. A
cache directory set in JAX itself (JAX_COMPILATION_CACHE_DIR) wins. The folder is capped at 2 GiB,
least recently used first out.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
from pathlib import Path

import jax

from sasrecllm_jax.downloads import OFF, cache_dir

MAX_BYTES = 2 * 2**30


def host_tag(cpuinfo: str | None = None) -> str:
    """jax version + a digest of what the compiled code depends on: the machine's architecture, CPU model
    and CPU features (from /proc/cpuinfo, or the text given, where there is one)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    lines = [line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line]
    facts = [platform.system(), platform.machine(), platform.processor()]
    for key in ("model name", "flags", "Features", "CPU part"):  # x86 / ARM names; the first CPU's
        facts += [value.strip() for name, value in lines if name.strip() == key][:1]
    return f"jax{jax.__version__}-{platform.machine()}-{hashlib.sha256(chr(10).join(facts).encode()).hexdigest()[:12]}"


def default_dir() -> Path | None:
    """The folder this process would use, or None when the cache is off."""
    env = os.environ.get("SASRECLLM_COMPILE_CACHE")
    if env is not None:
        return None if env.strip().lower() in OFF else Path(env).expanduser()
    return cache_dir() / "xla" / host_tag()


def enable(min_compile_secs: float = 0.0) -> Path | None:
    """Turn the cache on for this process (programs that took at least min_compile_secs to compile are
    kept: by default all); returns its folder, or None when it is off. Leaves JAX's own setting alone
    when there is one."""
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    folder = default_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time rather than fail
        return None
    if importlib.util.find_spec("filelock") is not None:  # JAX needs it to cap the folder's size
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
