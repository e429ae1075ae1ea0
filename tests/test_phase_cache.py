"""The phase cache: a reused phase gives bit for bit what training it again gives, and its key changes
exactly when something the phase reads changes. Also train.eval_at_start."""
import json

import jax
import numpy as np
import pytest

from helpers import ONE_SHAPE, smoke_config, synthetic_dataset
from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.run_folder.metrics_log import read_metrics
from sasrecllm_jax.train.checkpoint import Store, load_raw
from sasrecllm_jax.train.groups import group_trees
from sasrecllm_jax.train.run import train_and_evaluate
from sasrecllm_jax.train.phase_cache import enabled_reason, phase_key
from sasrecllm_jax.train.strategies import resolve_phases

FAST = [ONE_SHAPE, "train.eval_every=8", "train.log_every=2", "train.enc_epochs=2",
        "data.max_rows={train: 64, eval: 64}"]  # 4 steps per LLM phase: equality needs no more


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture
def clean_commit(monkeypatch):
    monkeypatch.setenv("SASRECLLM_COMMIT", "0123abc")  # the cache only serves a named, clean code version


def cfg_of(dataset, *overrides):
    return smoke_config(dataset, *FAST, *overrides)


def test_reused_phases_equal_retrained_ones(dataset, tmp_path, clean_commit):
    cache = f"train.phase_cache={tmp_path / 'cache'}"
    tmp_path, grid = tmp_path / "runs", tmp_path  # the experiment grid's layout: GRID/runs/NAME
    tallrec = train_and_evaluate(cfg_of(dataset, "train.method=tallrec", cache), tmp_path / "tallrec")
    assert tallrec["reused_phases"] == {}
    # plug-and-play's stage 1 LoRA phase is TALLRec's phase: taken from the cache, SASRec's is trained
    pnp = cfg_of(dataset, "train.strategy=plug_and_play")
    reused = train_and_evaluate(cfg_of(dataset, "train.strategy=plug_and_play", cache), tmp_path / "reused")
    fresh = train_and_evaluate(pnp, tmp_path / "fresh")
    assert reused["reused_phases"] == {"text_lora": str(tmp_path / "tallrec")} and fresh["reused_phases"] == {}
    a, b = load_raw(tmp_path / "reused" / "final"), load_raw(tmp_path / "fresh" / "final")
    assert a.keys() == b.keys() == {"lora", "mapper", "sasrec"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert reused["test"] == fresh["test"] and reused["valid"] == fresh["valid"]
    # the reused phase's history is in the run's own record, and its checkpoint in the run's folder
    evals = lambda run: [(r["step"], r["all/auc"]) for r in read_metrics(tmp_path / run)
                         if r["kind"] == "eval" and r["phase"] == "text_lora"]
    assert evals("reused") == evals("fresh") == evals("tallrec") and evals("fresh")
    assert Store(tmp_path / "reused" / "checkpoints" / "text_lora" / "best").latest_step() is not None
    assert reused["timing"]["text_lora"]["reused_from"] == str(tmp_path / "tallrec")
    # the same method again: every phase comes from the cache, the final evaluation is the same
    again = train_and_evaluate(cfg_of(dataset, "train.strategy=plug_and_play", cache), tmp_path / "again")
    assert set(again["reused_phases"]) == {"sasrec", "text_lora", "mapper"}
    assert again["test"] == fresh["test"] and again["valid"] == fresh["valid"]
    # the gate changes the mapper phase (trained again) and nothing the stage-1 phases read (reused)
    gated = train_and_evaluate(cfg_of(dataset, "train.strategy=plug_and_play", "model.mapper.fusion=gate", cache),
                               tmp_path / "gated")
    assert set(gated["reused_phases"]) == {"sasrec", "text_lora"}
    g = float(load_raw(tmp_path / "gated" / "final")["mapper"]["mapper"]["id_gate"])
    assert gated["id_gate"] == g and g != 1.0 and "id_gate" not in fresh  # recorded, and it trained
    from sasrecllm_jax.experiments.summary import summarise
    summarise(grid)
    assert ("again: sasrec from reused, text_lora from tallrec, mapper from reused; gated: sasrec from reused, "
            "text_lora from tallrec; reused: text_lora from tallrec.") in (grid / "SUMMARY.md").read_text()


def test_key_follows_what_the_phase_reads(dataset, tmp_path, clean_commit):
    cfg = cfg_of(dataset, f"train.phase_cache={tmp_path}")
    comp, params = Assembly.for_run(cfg)
    text, hybrid = (next(p for p in resolve_phases(cfg) if p.prompt == kind) for kind in ("text", "hybrid"))

    def key(phase, *overrides, inputs=None):
        c = cfg_of(dataset, f"train.phase_cache={tmp_path}", *overrides)
        used = {"text": ["llm"], "hybrid": ["llm", "sasrec", "mapper"]}[phase.prompt]
        return phase_key(c, phase, inputs or group_trees({k: params[k] for k in used}), comp.dataset.path)

    base_text, base_hybrid = key(text), key(hybrid)
    assert key(text) == base_text  # deterministic
    # the mapper and the encoder are not read by a text phase; method and strategy only choose phases
    for o in ("model.mapper.fusion=gate", "model.mapper.hidden=16", "model.mapper.num_tokens=2", "model.sasrec.dropout=0.5",
              "train.method=tallrec", "train.enc_lr=0.5", "train.phase_overrides={hybrid: {patience: 2}}"):
        assert key(text, o) == base_text, o
    for o in ("model.mapper.fusion=gate", "model.mapper.fusion=residual", "model.mapper.num_tokens=2",
              "model.sasrec.dropout=0.5"):
        assert key(hybrid, o) != base_hybrid, o
    # an override reaches the key through the resolved phase it changes
    c = cfg_of(dataset, "train.phase_overrides={hybrid: {lr: {mapper: 3.0e-4, lora: 3.0e-4}}}")
    tuned = next(p for p in resolve_phases(c) if p.name == "hybrid")
    assert tuned.lr == {"mapper": 3e-4, "lora": 3e-4} and key(tuned) != base_hybrid
    for o in ("model.lora.dropout=0.1", "train.seed=1", "train.batch_size=8", "data.max_titles=2",
              "train.eval_at_start=true"):
        assert key(text, o) != base_text, o
    # input values: whatever an earlier phase trained changes the key
    bumped = group_trees({"llm": params["llm"]})
    bumped["lora"] = jax.tree_util.tree_map(lambda x: x + 1e-3, bumped["lora"])
    assert key(text, inputs=bumped) != base_text
    # the dataset's content, not only its path
    (comp.dataset.path / "extra.txt").write_text("x")
    try:
        assert key(text) != base_text
    finally:
        (comp.dataset.path / "extra.txt").unlink()


def test_cache_is_off_for_uncommitted_code(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SASRECLLM_COMMIT", "0123abc+dirty")
    assert "uncommitted" in enabled_reason(cfg_of(dataset, f"train.phase_cache={tmp_path}"))
    monkeypatch.setenv("SASRECLLM_COMMIT", "0123abc")
    assert enabled_reason(cfg_of(dataset, f"train.phase_cache={tmp_path}")) is None
    assert enabled_reason(cfg_of(dataset)) is not None


def test_eval_at_start_can_hand_on_the_input(dataset, tmp_path):
    """A phase that cannot improve (lr 1e-30: steps below float32 resolution of every score; a learning
    rate must be > 0) keeps its step-0 evaluation as the best and hands on its input; its own patience (1)
    stops it at the first evaluation without improvement."""
    phases = json.dumps([{"name": "lora", "trainable": ["lora"], "prompt": "text", "epochs": 4,
                          "max_steps": 16, "lr": {"lora": 1e-30}, "patience": 1}])
    seen = {}
    train_and_evaluate(cfg_of(dataset, "train.method=tallrec", f"train.phases={phases}", "train.eval_at_start=true"),
                       tmp_path, on_phase=lambda p, before, after: seen.update(before=before, after=after))
    evals = [r for r in read_metrics(tmp_path) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 8]
    assert Store(tmp_path / "checkpoints" / "lora" / "best").latest_step() == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, seen["before"], seen["after"])


def test_phase_overrides_change_only_the_named_phase(dataset):
    preset = resolve_phases(cfg_of(dataset))
    tuned = resolve_phases(cfg_of(dataset, "train.phase_overrides={hybrid: {epochs: 0.5, patience: 2}}"))
    assert [p.name for p in tuned] == [p.name for p in preset] == ["sasrec", "text_lora", "hybrid"]
    assert tuned[:2] == preset[:2] and (tuned[2].epochs, tuned[2].patience) == (0.5, 2)
    from sasrecllm_jax.errors import ConfigError
    with pytest.raises(ConfigError, match=r"no phase 'mapper'; its phases are \['sasrec', 'text_lora', 'hybrid'\]"):
        resolve_phases(cfg_of(dataset, "train.phase_overrides={mapper: {epochs: 2}}"))
    with pytest.raises(ConfigError, match=r"phase_overrides.hybrid: unknown key\(s\) \['epoch'\]"):
        resolve_phases(cfg_of(dataset, "train.phase_overrides={hybrid: {epoch: 2}}"))
    with pytest.raises(ConfigError, match="train.phase_overrides.hybrid.patience = -1: must be >= 0"):
        resolve_phases(cfg_of(dataset, "train.phase_overrides={hybrid: {patience: -1}}"))


def test_abandoned_temporary_folders_are_removed(tmp_path):
    """A writer killed mid-entry leaves .KEY.PID.partial behind; the next writer removes it, but not the
    folder of a process that still runs (a side-by-side grid worker writing its entry)."""
    import os
    import subprocess

    from sasrecllm_jax.train.phase_cache import PhaseCache
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that ran and was reaped
    abandoned, live = tmp_path / f".k1.{dead.pid}.partial", tmp_path / f".k2.{os.getppid()}.partial"
    for d in (abandoned, live):
        (d / "best").mkdir(parents=True)
    PhaseCache(tmp_path).put("k3", {"sasrec": {"w": np.zeros(2, np.float32)}}, 0, {"phase": "sasrec"})
    assert not abandoned.exists() and live.exists() and (tmp_path / "k3" / "meta.json").exists()


def test_ml1m_grid_shares_the_phases_it_plans_to(tmp_path, monkeypatch):
    """Every shipped experiment config loads, and the phases the GPU grid counts on reusing have equal keys
    across methods, in every dataset's recipe: an edit that breaks the sharing costs device time."""
    from helpers import ROOT
    from sasrecllm_jax.config import load_config
    monkeypatch.chdir(ROOT)  # the configs name their prompt templates relative to the repository
    monkeypatch.setenv("SASRECLLM_COMMIT", "0123abc")
    (tmp_path / "data.parquet").write_bytes(b"same dataset for every method")
    inputs = {"lora": {"a": np.zeros(2)}}  # the same input values for every method: only configs differ
    def recipe_keys(dataset):
        keys = {}
        for path in sorted((ROOT / "configs" / "experiments" / dataset).glob("*.yaml")):
            if path.name == "base.yaml":
                continue
            cfg = load_config(path, [f"train.phase_cache={tmp_path}"])
            keys[path.stem] = {p.name: phase_key(cfg, p, inputs, tmp_path) for p in resolve_phases(cfg, str(path))}
        return keys
    for dataset in ("ml1m-cold", "amazon-books"):
        keys = recipe_keys(dataset)
        same = lambda phase, *methods: len({keys[m][phase] for m in methods}) == 1
        assert same("text_lora", "tallrec", "sasrecllm_dual_stage", "sasrecllm_plug_and_play", "sasrecllm_dual_stage_late",
                    "sasrecllm_late_fused", "sasrecllm_text_items", "sasrecllm_text_items_whole",
                    "sasrecllm_text_items_whole_gates", "sasrecllm_text_items_whole_cross",
                    "sasrecllm_text_items_whole_cross_new_only")
        assert same("sasrec", "sasrecllm_dual_stage_late", "sasrecllm_late_fused", "sasrecllm_text_items")  # the early rows' SASRec, once
        assert same("sasrec", "sasrec", "sasrecllm_text_items_whole", "sasrecllm_text_items_whole_gates",
                    "sasrecllm_text_items_whole_cross", "sasrecllm_text_items_whole_cross_new_only")  # every row's
        assert same("sasrec", "sasrec", "sasrecllm_dual_stage", "sasrecllm_plug_and_play", "sasrecllm_hierarchical_freezing")
        assert not same("sasrec", "sasrec", "sasrecllm_dual_stage_late")  # trained on the early rows alone
        assert same("mf", "mf", "collm_mf")
    keys = recipe_keys("ml1m")
    same = lambda phase, *methods: len({keys[m][phase] for m in methods}) == 1
    assert same("text_lora", "tallrec", "sasrecllm_dual_stage", "sasrecllm_plug_and_play", "sasrecllm_dual_stage_gate",
                "sasrecllm_dual_stage_gate_hlr", "sasrecllm_dual_stage_gate_zero", "sasrecllm_dual_stage_mapper64",
                "sasrecllm_dual_stage_k2", "sasrecllm_dual_stage_gate_sasrec", "sasrecllm_dual_stage_residual",
                "sasrecllm_dual_stage_gate_counts", "sasrecllm_dual_stage_residual_counts", "sasrecllm_late_fused",
                "sasrecllm_late_fused_cross")
    assert same("sasrec", "sasrec_counts", "sasrecllm_dual_stage_gate_counts", "sasrecllm_dual_stage_residual_counts")
    assert not same("sasrec", "sasrec", "sasrec_counts")
    assert same("sasrec", "sasrec", "sasrecllm_dual_stage", "sasrecllm_plug_and_play", "sasrecllm_hierarchical_freezing",
                "sasrecllm_dual_stage_gate", "sasrecllm_dual_stage_yes_logit", "sasrecllm_dual_stage_gate_sasrec",
                "sasrecllm_dual_stage_residual", "sasrecllm_late_fused", "sasrecllm_late_fused_cross")
    assert same("mf", "mf", "collm_mf")
    assert not same("text_lora", "tallrec", "sasrecllm_dual_stage_yes_logit")  # the head changes what LoRA learns
    hybrids = ("sasrecllm_dual_stage", "sasrecllm_dual_stage_gate", "sasrecllm_dual_stage_gate_hlr",
               "sasrecllm_dual_stage_gate_zero", "sasrecllm_dual_stage_gate_sasrec", "sasrecllm_dual_stage_residual",
               "sasrecllm_dual_stage_mapper64", "sasrecllm_dual_stage_k2", "sasrecllm_dual_stage_yes_logit",
               "sasrecllm_dual_stage_gate_counts", "sasrecllm_dual_stage_residual_counts")
    assert len({keys[m]["hybrid"] for m in hybrids}) == len(hybrids)  # each variant trains its own hybrid phase
