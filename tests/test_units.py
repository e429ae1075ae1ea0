"""Fast unit tests of the small modules: early stopping, phase checkpoints, groups, the dataset registry,
config checks and the Markdown table builder."""
import jax.numpy as jnp
import numpy as np
import pytest

from sasrecllm_jax.errors import CheckpointError, DataError, PartitionError
from sasrecllm_jax.experiments.markdown import table
from sasrecllm_jax.train import groups
from sasrecllm_jax.train.checkpoint import PhaseCheckpoints
from sasrecllm_jax.train.early_stopping import EarlyStopping
from sasrecllm_jax.trees import merge


def test_early_stopping_counts_evaluations_without_improvement():
    s = EarlyStopping(patience=2)
    assert s.update(10, 0.6, {"m": 1}) and (s.best_step, s.bad_evals) == (10, 0)
    assert not s.update(20, 0.6, {"m": 2})  # equal is not better
    assert not s.exhausted
    assert not s.update(30, None, {})       # no AUC (one label only) counts as 0
    assert s.exhausted and s.best_metrics == {"m": 1} and s.evals == 3
    again = EarlyStopping.from_state(s.state(), patience=2)
    assert again == s
    assert "best_metrics" not in EarlyStopping(3).state()


def test_phase_checkpoints_hand_on_the_best_groups(tmp_path):
    ck = PhaseCheckpoints(tmp_path, "p")
    params = {"mapper": {"w": jnp.ones(3)}, "llm": {"base": jnp.zeros(2)}}
    like = groups.group_trees({"mapper": params["mapper"]})
    with pytest.raises(CheckpointError, match="no checkpoint to restore"):
        ck.restore_best(like)
    ck.save_best(4, groups.group_trees({**params, "mapper": {"w": jnp.full(3, 7.0)}}), 0.7)
    out = groups.replace_groups(params, ck.restore_best(like))
    np.testing.assert_array_equal(out["mapper"]["w"], np.full(3, 7.0))
    np.testing.assert_array_equal(out["llm"]["base"], np.zeros(2))  # the frozen base is never stored
    assert ck.best.meta()["auc"] == 0.7 and ck.best.latest_step() == 4
    with pytest.raises(CheckpointError, match="does not match this model"):
        ck.restore_best(groups.group_trees({"mapper": {"w": jnp.ones(5)}}))


def test_groups_of_a_hybrid_tree():
    tree = {"sasrec": {"item_emb": {"embedding": 1}, "counts": {"user": 2, "item": 3}}, "mapper": {"fc1": 4},
            "llm": {"model": {"q": {"kernel": 5, "lora": {"a": 6, "b": 7}}}}}
    lab = groups.labels(tree)
    assert lab["sasrec"]["counts"] == {"user": "counts", "item": "counts"}
    assert lab["llm"]["model"]["q"] == {"kernel": "frozen", "lora": {"a": "lora", "b": "lora"}}
    assert set(groups.group_trees(tree)) == {"sasrec", "counts", "mapper", "lora"}
    moved = groups.replace_groups(tree, {"mapper": {"mapper": {"fc1": 40}}})
    assert moved["mapper"]["fc1"] == 40 and moved["sasrec"] == tree["sasrec"]
    assert groups.frozen_groups(("mapper",)) == ("sasrec", "mf", "lora")
    assert groups.trainable_on("text", "sasrec") == {"lora"}
    assert groups.prompt_modules("hybrid", "mf") == {"mf", "mapper", "llm"}
    with pytest.raises(PartitionError, match="unknown group"):
        groups.split(tree, ["pop"])
    with pytest.raises(PartitionError, match="in both trees"):
        merge({"a": {"x": 1}}, {"a": {"x": 2}})


def test_registry_prepares_a_named_dataset_once(tmp_path, monkeypatch):
    from helpers import synthetic_dataset
    from sasrecllm_jax.config import DataConfig
    from sasrecllm_jax.data import registry
    from sasrecllm_jax.data.dataset import load_dataset
    source = synthetic_dataset(tmp_path / "made")
    made = load_dataset(source)
    calls = []

    def prepare(name):
        calls.append(name)
        return made.splits, made.items, "synthetic", "by hand"
    monkeypatch.setattr(registry, "_registered", {"toy": prepare})
    cfg = DataConfig(dataset="toy", data_dir=str(tmp_path / "data"))
    first = registry.resolve_dataset(cfg)
    again = registry.resolve_dataset(cfg)  # prepared once, then read from data_dir
    assert calls == ["toy"] and first.card["recipe"] == "by hand" == again.card["recipe"]
    assert registry.resolve_dataset(DataConfig(dataset=str(source))).card["splits"] == made.card["splits"]
    with pytest.raises(DataError, match="neither a prepared folder nor a named dataset .*toy"):
        registry.resolve_dataset(DataConfig(dataset="nope", data_dir=str(tmp_path / "data")))
    assert {"ml100k", "ml1m-collm"} <= set(registry.preparers())  # the installed entry points


def test_markdown_table():
    assert table(["a", "b"], [[1, "x"], [2.5, "-"]]) == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | - |"]


def test_rates_print_with_two_significant_digits():
    from sasrecllm_jax.train.progress import two_digits
    assert [two_digits(x) for x in (0.3412, 2.24, 15.3, 2213.0, 99.6, 0.0456, 0.0)] == \
        ["0.34", "2.2", "15", "2200", "100", "0.046", "0"]


def test_warm_cold_chart_points_can_plot_new_item_rows():
    from sasrecllm_jax.experiments.seeds import method_points
    run = lambda a: {"method": "sasrec", "config": {"train": {"seed": 0}}, "valid": {"all": {"auc": 0.6}},
                     "test": {"all": {"auc": a, "n": 9}, "warm": {"auc": a + 0.1, "n": 5},
                              "cold": {"auc": a - 0.1, "n": 4}, "new_item": {"auc": 0.5, "n": 2}}}
    summary = {"sasrec": run(0.7), "old": {**run(0.6), "test": {**run(0.6)["test"], "new_item": None}}}
    summary["old"]["test"].pop("new_item")
    points = {p["name"]: p for p in method_points(summary, "new_item")}
    assert points["sasrec"]["cold"] == 0.5 and points["sasrec"]["warm"] == pytest.approx(0.8)
    assert points["old"]["cold"] is None  # a run from before new-item parts: not drawn on that plane
    assert {p["name"]: p["cold"] for p in method_points(summary)} == pytest.approx({"sasrec": 0.6, "old": 0.5})


def test_an_eval_cap_can_keep_every_new_item_row():
    """data.eval_always: [new_item] keeps every new-item row under an eval cap and samples the rest."""
    import pandas as pd
    from sasrecllm_jax.data.pipeline import SplitData
    train = pd.DataFrame({"uid": [1, 2], "iid": [1, 2]})
    df = pd.DataFrame({"uid": [1] * 10, "iid": [1, 2, 9, 1, 2, 8, 1, 2, 7, 1], "label": [1, 0] * 5,
                       "timestamp": range(10), "his": [np.zeros(0, np.int64)] * 10, "not_cold": 1})
    data = SplitData.from_frame("test", df, 3, max_rows=2, train=train, always=("new_item",))
    assert sorted(data.iid[data.new_item]) == [7, 8, 9] and len(data) == 5  # the 3 new-item rows + 2 others
    again = SplitData.from_frame("test", df, 3, max_rows=2, train=train, always=("new_item",))
    np.testing.assert_array_equal(again.iid, data.iid)  # seeded
    assert len(SplitData.from_frame("test", df, 3, max_rows=2, train=train)) == 2


def test_row_caps_the_smaller_wins_on_the_cpu(monkeypatch):
    """data.max_rows and data.cpu_max_rows: on the CPU backend the smaller cap set for a kind applies (a
    --set data.max_rows below a config's cpu_max_rows was ignored); elsewhere max_rows alone."""
    import jax

    from sasrecllm_jax.config import load_config
    from sasrecllm_jax.data.encode import row_limit
    cfg = load_config(None, ["data.max_rows={train: 256, eval: 128}", "data.cpu_max_rows={train: 2048, eval: 64}"])
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert (row_limit(cfg, "train"), row_limit(cfg, "eval")) == (256, 64)
    only_cpu = load_config(None, ["data.cpu_max_rows={eval: 500}"])
    assert (row_limit(only_cpu, "train"), row_limit(only_cpu, "eval")) == (0, 500)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert (row_limit(cfg, "train"), row_limit(cfg, "eval")) == (256, 128) and row_limit(only_cpu, "eval") == 0
