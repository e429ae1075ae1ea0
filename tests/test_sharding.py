"""Data-parallel and FSDP layouts give the single-device loss and update, and compile their step once (4 emulated
CPU devices)."""
import os
import subprocess
import sys
import textwrap

from helpers import ROOT

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    assert len(jax.devices()) == 4, jax.devices()
    from sasrecllm_jax import sharding
    from sasrecllm_jax.config import DEBUG_TINY, LoraConfig, MapperConfig, ModelConfig, SASRecConfig
    from sasrecllm_jax.models.hybrid import Hybrid
    from sasrecllm_jax.train import groups as partition
    from sasrecllm_jax.train.step import TrainState, make_train_step

    cfg = ModelConfig(mapper=MapperConfig(hidden=32), sasrec=SASRecConfig(max_len=5))
    model = Hybrid(cfg, DEBUG_TINY, 9, 20, (5, 6), LoraConfig(rank=4, dropout=0.1), deterministic=False)
    rng = np.random.default_rng(0)
    B, T = 8, 16
    batch = {"tokens": rng.integers(10, 256, (B, T)).astype(np.int32), "mask": np.ones((B, T), np.int32),
             "user_pos": np.full(B, 3, np.int32), "item_pos": np.full(B, 9, np.int32),
             "his": rng.integers(0, 20, (B, 5)).astype(np.int32), "uid": np.arange(1, B + 1, dtype=np.int32),
             "iid": rng.integers(1, 20, B).astype(np.int32), "label": rng.integers(0, 2, B).astype(np.float32),
             "weight": np.ones(B, np.float32)}
    params = model.init(jax.random.key(0), batch)["params"]
    trainable, frozen = partition.split(params, ["lora", "mapper", "sasrec"])
    # plain SGD: Adam would turn +-1e-9 gradient noise on near-zero-gradient leaves into full-size steps
    # of either sign, hiding what this test is about (the layout), so the update is kept linear
    import optax
    tx, sched = optax.sgd(0.5), {}
    train_step = make_train_step(lambda p, b, r: model.apply({"params": p}, b, rngs=r), tx, sched)
    # a copy each time: the step donates the state it is given
    fresh = lambda: TrainState(jnp.int32(0), *jax.tree_util.tree_map(jnp.array, (trainable, frozen)),
                               tx.init(trainable), jax.random.key_data(jax.random.key(1)))

    def two_steps(state, layout=None, place_batch=lambda b: b):
        step = sharding.jit_step(train_step, layout)  # what PhaseRunner runs
        compiled = []  # jax reports every XLA compilation (or load from its cache) of the step
        hear = lambda event, secs, fun_name="", **kw: compiled.append(fun_name) if (
            event == "/jax/core/compile/backend_compile_duration" and "train_step" in fun_name) else None
        jax.monitoring.register_event_duration_secs_listener(hear)
        try:
            for _ in range(2):
                state, m = step(state, place_batch(batch))
        finally:
            jax.monitoring.unregister_event_duration_listener(hear)
        # the second step, fed the first one's state, reuses the first one's executable
        assert len(compiled) == 1, (layout is not None, compiled)
        return state, float(m["loss"])

    ref_state, ref_loss = two_steps(jax.device_put(fresh(), jax.devices()[0]))
    for mode in ("data", "fsdp"):
        mesh = sharding.make_mesh(mode)
        layout = sharding.param_shardings(fresh(), mesh, mode)
        state = sharding.place(fresh(), layout)
        if mode == "fsdp":
            q = state.frozen["llm"]["model"]["layers"]["mlp"]["up_proj"]["kernel"]
            assert "fsdp" in str(q.sharding.spec), q.sharding
            assert len(q.addressable_shards) == 4 and q.addressable_shards[0].data.shape[-1] == q.shape[-1] // 4
        state, loss = two_steps(state, layout, lambda b: sharding.place_batch(b, mesh))
        assert abs(loss - ref_loss) < 1e-5, (mode, loss, ref_loss)
        for a, b in zip(jax.tree_util.tree_leaves(state.trainable), jax.tree_util.tree_leaves(ref_state.trainable)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
        print(mode, "loss", loss, "reference", ref_loss)
    print("OK")
""")


def test_sharded_steps_match_single_device():
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
