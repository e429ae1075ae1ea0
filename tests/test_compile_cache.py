"""The persistent compilation cache of the commands: where it lives, that it can be turned off, and that a
second process loads what the first compiled instead of compiling it again."""
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp

from sasrecllm_jax import compile_cache
from sasrecllm_jax.evaluate import CompileTimer

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, jax, jax.numpy as jnp
from jax import monitoring
from sasrecllm_jax import compile_cache
hits = []
monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("/cache_hits") else None)
folder = compile_cache.enable(min_compile_secs=0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0) * 3.0)
value = float(f(jnp.arange(12.0).reshape(3, 4) / 10).sum())
print(json.dumps({"folder": None if folder is None else str(folder), "hits": len(hits), "value": value}))
"""


def _probe(tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE",
                                                                        "SASRECLLM_COMPILE_CACHE"))}
    clean.update(SASRECLLM_CACHE=str(tmp_path / "home-cache"), JAX_PLATFORMS="cpu", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_what_the_first_compiled(tmp_path):
    first = _probe(tmp_path)
    folder = Path(first["folder"])
    assert folder.parent == tmp_path / "home-cache" / "xla" and folder.name == compile_cache.host_tag()
    assert first["hits"] == 0 and any(p.name.endswith("-cache") for p in folder.iterdir())
    second = _probe(tmp_path)
    assert second["folder"] == first["folder"] and second["hits"] >= 1
    assert second["value"] == first["value"]


def test_off_and_explicit_folders(tmp_path):
    off = _probe(tmp_path, SASRECLLM_COMPILE_CACHE="off")
    assert off["folder"] is None and not (tmp_path / "home-cache" / "xla").exists()
    mine = _probe(tmp_path, SASRECLLM_COMPILE_CACHE=str(tmp_path / "mine"))
    assert mine["folder"] == str(tmp_path / "mine") and any((tmp_path / "mine").iterdir())
    # JAX's own setting wins over ours
    jaxs = _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-own"), SASRECLLM_COMPILE_CACHE="off")
    assert jaxs["folder"] == str(tmp_path / "jax-own")


def test_host_tag_separates_cpus():
    avx2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2\n"
    avx512 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 avx512f avx512_bf16\n"
    assert compile_cache.host_tag(avx2) == compile_cache.host_tag(avx2 + "processor\t: 1\nflags\t\t: other\n")
    assert compile_cache.host_tag(avx2) != compile_cache.host_tag(avx512)
    assert compile_cache.host_tag(avx2).startswith(f"jax{jax.__version__}-")


def _probe_fn(scale: float):
    def probe(batch):  # a few hundred operations: a compilation long enough to be seen at 0.1 s
        x = batch["tokens"]
        for i in range(300):
            x = jnp.sin(x * (1 + i % 7)) @ jnp.ones((96, 96)) / scale
        return x.sum()
    return jax.jit(probe)


def _new_scale() -> float:
    """A constant no other process put into a probe: a program no persistent cache holds yet."""
    return 96.0 + uuid.uuid4().int % 10**6 / 10**3


def test_compile_notice_separates_compiling_from_the_first_batch():
    said = []
    timer = CompileTimer("probe", notify=said.append)
    fn = _probe_fn(_new_scale())
    timer(fn, {"tokens": jnp.ones((64, 96))})
    timer(fn, {"tokens": jnp.zeros((64, 96))})  # the same shape: no second notice
    assert said[0] == "compiling the probe for batches of 64x96 ..." and len(said) == 2
    compiling, first = map(float, re.fullmatch(r"compiled the probe for 64x96 in ([\d.]+) s \(with its first batch "
                                               r"([\d.]+) s\)", said[1]).groups())
    assert 0 < compiling <= first + 0.05 and timer.seconds >= first - 0.05


def test_compile_notice_says_when_the_program_came_from_the_cache():
    """The same program traced again (a new jit of it) in a process whose persistent cache holds it: the
    notice says loaded. (The tests' conftest gives the session a persistent cache.)"""
    assert jax.config.jax_compilation_cache_dir
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        said = []
        scale = _new_scale()
        CompileTimer("probe", notify=said.append)(_probe_fn(scale), {"tokens": jnp.ones((8, 96))})
        CompileTimer("probe", notify=said.append)(_probe_fn(scale), {"tokens": jnp.ones((8, 96))})
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)
    assert said[1].startswith("compiled the probe for 8x96 in ")
    assert said[3].startswith("loaded the probe for 8x96 from the compilation cache in "), said
