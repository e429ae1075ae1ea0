"""End to end on configs/smoke.yaml (DEBUG_TINY, synthetic data): every method and strategy, resume,
NaN handling, ablations, and the errors a user sees for bad configs and checkpoints."""
import json
import logging
import re
from types import SimpleNamespace

import jax
import numpy as np
import pandas as pd
import pytest

from helpers import ONE_SHAPE, ROOT, readme_code, smoke_config, synthetic_dataset
from sasrecllm_jax.cli import train_main
from sasrecllm_jax.errors import CheckpointError, ConfigError, TrainingError
from sasrecllm_jax.train import groups as partition
from sasrecllm_jax.train.checkpoint import Store, load_raw
from sasrecllm_jax.train.final import next_steps
from sasrecllm_jax.train.run import train_and_evaluate

FAST = [ONE_SHAPE, "train.eval_every=8", "train.log_every=2", "train.enc_epochs=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


def run(dataset, workdir, *overrides, **kw):
    return train_and_evaluate(smoke_config(dataset, *FAST, *overrides), workdir, **kw)


def training_loss(cfg):
    """The training objective (mean BCE over a phase's whole training set, no dropout) as a function."""
    from sasrecllm_jax.assembly import Assembly
    from sasrecllm_jax.evaluate import Scorer, score_split
    from sasrecllm_jax.metrics import logloss
    comp = Assembly.for_run(cfg)[0]  # the run's own LLM base (random weights are rebuilt, not stored)
    scorers = {}  # one compiled scorer per prompt kind, shared by the phases' before/after losses

    def loss(phase, params):
        with_prompts = phase.prompt != "none"
        used = partition.prompt_modules(phase.prompt, cfg.model.encoder)
        data = comp.split("train", phase.prompt, comp.row_limit("train") if with_prompts else 0)
        if phase.prompt not in scorers:
            scorers[phase.prompt] = Scorer(comp.model(phase.prompt, deterministic=True))
        scorer = scorers[phase.prompt]
        scores = score_split(scorer, {k: v for k, v in params.items() if k in used}, data, 64, cfg.data.pad_multiple,
                             with_prompts)
        return logloss(data.label, scores)
    return loss


METHODS = [("mf", ["model.encoder=mf"]), ("sasrec", []), ("icl", []), ("tallrec", []),
           ("collm_mf", ["model.encoder=mf", "model.mf.dim=16"]),
           ("dual_stage", []), ("hierarchical_freezing", []), ("plug_and_play", [])]


@pytest.mark.parametrize("name,extra", METHODS, ids=[m for m, _ in METHODS])
def test_method_end_to_end(dataset, tmp_path, caplog, name, extra):
    method = "sasrecllm" if name in ("dual_stage", "hierarchical_freezing", "plug_and_play") else name
    checked = []

    def frozen_untouched(phase, before, after):
        trained = set(phase.trainable)
        for group in partition.present_groups(before) - trained:
            b, _ = partition.split(before, [group])
            a, _ = partition.split(after, [group])
            if group in {g for g, src in phase.restore.items()}:
                continue  # restored at the phase start: checked by the restore tests
            jax.tree_util.tree_map(np.testing.assert_array_equal, b, a)
        checked.append(phase.name)
        start, end = loss(phase, before), loss(phase, after)
        assert end < start, f"{phase.name}: the training loss did not go down ({start:.5f} -> {end:.5f})"

    overrides = (f"train.method={method}", f"train.strategy={name}", *extra)
    loss = training_loss(smoke_config(dataset, *FAST, *overrides))
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        results = run(dataset, tmp_path, *overrides, on_phase=frozen_untouched)
    assert checked == results["phases"]
    # one batch shape per phase here, so one compilation of its train step (a state that mixes an earlier
    # phase's outputs with fresh leaves used to compile it again at the second step)
    compiled = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(train_step)")]
    assert len(compiled) == len(results["phases"]), f"{len(compiled)} train step compilations for {results['phases']}"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == method and saved["config"]["train"]["method"] == method
    for part in ("all", "warm", "cold"):
        assert set(saved["test"][part]) >= {"auc", "uauc", "logloss", "n"}
    assert saved["test"]["all"]["n"] == 96 and saved["test"]["all"]["auc"] is not None
    assert saved["valid"]["all"]["auc"] is not None
    if method == "sasrec":  # a user's liked history names their genre: SASRec learns it quickly
        assert saved["test"]["all"]["auc"] > 0.6
    assert (tmp_path / "tensorboard").exists()


def test_pop_scores_with_the_counts_and_trains_nothing(dataset, tmp_path):
    """method pop: no phase, the test AUC of the counted user + item log-odds (computed here apart)."""
    import pandas as pd

    from sasrecllm_jax.metrics import auc
    from sasrecllm_jax.models.pop import count_logits
    res = run(dataset, tmp_path / "pop", "train.method=pop", "model.encoder=pop", "model.pop.prior=3.0")
    assert res["phases"] == [] and res["method"] == "pop"
    train, test = (pd.read_parquet(dataset / f"{s}.parquet") for s in ("train", "test"))
    card = json.loads((dataset / "dataset.json").read_text())
    users, items = count_logits(train, card["users"]["max_id"], card["items"]["max_id"], 3.0)
    scores = users[test.uid] + items[test.iid]
    warm = test.not_cold.to_numpy().astype(bool)
    assert res["test"]["all"]["n"] == len(test) and warm.all()  # the synthetic split has no cold rows
    assert np.isclose(res["test"]["all"]["auc"], auc(test.label, scores), atol=1e-6)


def test_counts_need_both_labels(dataset, tmp_path, capsys, monkeypatch):
    """A train split with one label cannot be counted into tendencies: one line naming the file, exit 2."""
    from sasrecllm_jax.data.dataset import load_dataset, write_dataset
    ds = load_dataset(dataset)
    splits = {k: (v.assign(label=1) if k == "train" else v) for k, v in ds.splits.items()}
    write_dataset(tmp_path / "liked", splits, ds.items, source="test", recipe="every train label set to 1")
    monkeypatch.chdir(ROOT)
    assert train_main(["--config", "configs/smoke.yaml", "--set", f"data.dataset={tmp_path / 'liked'}",
                       "--set", "train.method=pop", "--set", "model.encoder=pop", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "liked/train.parquet: every label is 1" in err and "--negatives N" in err and "Traceback" not in err


def test_counted_sasrec_terms_stay_fixed_while_sasrec_trains(dataset, tmp_path):
    """model.sasrec.bias: counts adds the counted log-odds as group pop, which no phase trains: the final
    model holds them exactly as counted, and every SASRec leaf moved in its phase."""
    import pandas as pd

    from sasrecllm_jax.models.pop import count_logits
    moved = []

    def sasrec_moved_and_counts_did_not(phase, before, after):
        assert phase.trainable == ("sasrec",)
        (counts_before, _), (counts_after, _) = (partition.split(p, ["counts"]) for p in (before, after))
        jax.tree_util.tree_map(np.testing.assert_array_equal, counts_before, counts_after)
        (sasrec_before, _), (sasrec_after, _) = (partition.split(p, ["sasrec"]) for p in (before, after))
        moved.extend(not np.array_equal(b, a) for b, a in zip(jax.tree_util.tree_leaves(sasrec_before),
                                                               jax.tree_util.tree_leaves(sasrec_after)))

    run(dataset, tmp_path, "train.method=sasrec", "model.sasrec.bias=counts", on_phase=sasrec_moved_and_counts_did_not)
    assert len(moved) > 10 and all(moved)  # every SASRec leaf (embeddings, blocks, norms) trained
    final = load_raw(tmp_path / "final")
    assert final.keys() == {"sasrec", "counts"} and final["counts"]["sasrec"]["counts"].keys() == {"user", "item"}
    card = json.loads((dataset / "dataset.json").read_text())
    users, items = count_logits(pd.read_parquet(dataset / "train.parquet"), card["users"]["max_id"],
                                card["items"]["max_id"], 5.0)
    np.testing.assert_array_equal(final["counts"]["sasrec"]["counts"]["user"], users)
    np.testing.assert_array_equal(final["counts"]["sasrec"]["counts"]["item"], items)


def test_resume_is_bit_exact(dataset, tmp_path):
    overrides = ["train.method=collm_mf", "model.encoder=mf", "model.mf.dim=16", "train.enc_epochs=2"]
    run(dataset, tmp_path / "a", *overrides)

    class Kill(Exception):
        pass

    def kill(phase, step):
        if phase == "hybrid" and step == 11:  # after the eval at step 8, with the mf phase done
            raise Kill()

    with pytest.raises(Kill):
        run(dataset, tmp_path / "b", *overrides, on_step=kill)
    assert not (tmp_path / "b" / "results.json").exists()
    with pytest.raises(TrainingError, match="pass --resume"):
        run(dataset, tmp_path / "b", *overrides)
    run(dataset, tmp_path / "b", *overrides, resume=True)
    a, b = load_raw(tmp_path / "a" / "final"), load_raw(tmp_path / "b" / "final")
    assert a.keys() == b.keys() == {"lora", "mapper", "mf"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    ra, rb = (json.loads((tmp_path / r / "results.json").read_text()) for r in "ab")
    assert ra["test"] == rb["test"]


def test_nan_loss_stops_with_checkpoint_intact(dataset, tmp_path):
    phases = json.dumps([{"name": "sasrec", "trainable": ["sasrec"], "prompt": "none", "epochs": 10,
                          "lr": {"sasrec": 1e30}, "eval_every": 1}])
    with pytest.raises(TrainingError, match=r"the loss is nan.*checkpoint is .*latest/(\d+) \(step \1\) and is intact") as e:
        run(dataset, tmp_path, "train.method=sasrec", f"train.phases={phases}", "train.clip_norm=0")
    good = int(e.value.args[0].split("(step ")[1].split(")")[0])
    state = load_raw(tmp_path / "checkpoints" / "sasrec" / "latest")["state"]
    assert state["step"] == good and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state["trainable"]))


def test_nan_step_is_exact_without_a_sync_per_step(dataset, tmp_path):
    """The loop reads losses only every train.log_every steps, yet names the first non-finite step."""
    phases = json.dumps([{"name": "sasrec", "trainable": ["sasrec"], "prompt": "none", "epochs": 10,
                          "lr": {"sasrec": 1e30}, "eval_every": 1000}])
    steps = []
    for every in (1, 7):
        with pytest.raises(TrainingError, match="before any checkpoint") as e:
            run(dataset, tmp_path / str(every), "train.method=sasrec", f"train.phases={phases}", "train.clip_norm=0",
                f"train.log_every={every}", "train.warmup_steps=3")
        steps.append(int(e.value.args[0].split("step ")[1].split(":")[0]))
    assert steps[0] == steps[1] and steps[0] % 7 != 0, steps  # a step between two log steps


def test_a_phase_hands_on_its_best_evaluation_or_its_last_step(dataset, tmp_path, monkeypatch):
    """restore_best (the default) ends a phase on its best valid evaluation's params; restore_best: false on
    its last step's. Either way results.json's timing names the step handed on, and final/ holds it. The
    valid AUCs are scripted (best at step 2 of 5), so the test does not rest on what one seed happens to do."""
    from sasrecllm_jax.run_folder.metrics_log import read_metrics
    from sasrecllm_jax.train import phase as phase_lib
    real_evaluate = phase_lib.evaluate
    script = {1: 0.60, 2: 0.90, 3: 0.70, 4: 0.65, 5: 0.62}

    def scripted(scorer, params, data, cfg, prompt, *args, **kw):
        result, scores = real_evaluate(scorer, params, data, cfg, prompt, *args, **kw)
        step = len(evaluated) + 1
        evaluated.append(step)
        return {**result, "all": {**result["all"], "auc": script[step]}}, scores
    monkeypatch.setattr(phase_lib, "evaluate", scripted)
    handed = {}
    for restore_best in (True, False):
        evaluated = []
        phases = json.dumps([{"name": "sasrec", "trainable": ["sasrec"], "prompt": "none", "max_steps": 5,
                              "lr": {"sasrec": 0.3}, "eval_every": 1, "restore_best": restore_best, "patience": 100}])
        workdir = tmp_path / str(restore_best)
        run(dataset, workdir, "train.method=sasrec", f"train.phases={phases}", "train.warmup_steps=0")
        assert [(r["step"], r["all/auc"]) for r in read_metrics(workdir) if r["kind"] == "eval"] == list(script.items())
        handed[restore_best] = json.loads((workdir / "results.json").read_text())["timing"]["sasrec"]["best_step"]
        final = load_raw(workdir / "final")["sasrec"]
        kept = (load_raw(workdir / "checkpoints" / "sasrec" / "best")["sasrec"] if restore_best else
                load_raw(workdir / "checkpoints" / "sasrec" / "latest")["state"]["trainable"])  # the last step's
        jax.tree_util.tree_map(np.testing.assert_array_equal, final, kept)
    assert handed == {True: 2, False: 5}
    assert Store(tmp_path / "True" / "checkpoints" / "sasrec" / "best").meta()["auc"] == 0.90
    a, b = (load_raw(tmp_path / str(r) / "final")["sasrec"]["sasrec"]["item_emb"]["embedding"] for r in (True, False))
    assert not np.array_equal(a, b)


def test_plug_and_play_restores_other_runs(dataset, tmp_path):
    run(dataset, tmp_path / "enc", "train.method=sasrec")
    run(dataset, tmp_path / "llm", "train.method=tallrec")
    phases = json.dumps([{"name": "mapper", "trainable": ["mapper"], "prompt": "hybrid", "epochs": 1,
                          "lr": {"mapper": 1e-3}, "restore": {"sasrec": str(tmp_path / "enc"), "lora": str(tmp_path / "llm")}}])
    seen = {}
    run(dataset, tmp_path / "pnp", f"train.phases={phases}", on_phase=lambda p, b, a: seen.update(after=a))
    enc, llm = load_raw(tmp_path / "enc" / "final"), load_raw(tmp_path / "llm" / "final")
    jax.tree_util.tree_map(np.testing.assert_array_equal, enc["sasrec"], partition.split(seen["after"], ["sasrec"])[0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, llm["lora"], partition.split(seen["after"], ["lora"])[0])
    # a checkpoint from a different model is refused, never loaded loosely
    with pytest.raises(CheckpointError, match=r"'sasrec' does not match this model \(shape of .*checkpoint \[64\], model \[32\]\)"):
        run(dataset, tmp_path / "pnp2", f"train.phases={phases}", "model.sasrec.hidden=32")
    # an encoder trained on another dataset is refused before anything trains (its ids name other items); a
    # LoRA adapter holds no ids and may come from another dataset
    digest, other = tmp_path / "enc" / "dataset.sha256", tmp_path / "llm" / "dataset.sha256"
    kept = digest.read_text()
    assert len(kept.strip()) == 64 and other.read_text() == kept
    digest.write_text("0" * 64 + "\n")
    other.write_text("0" * 64 + "\n")
    with pytest.raises(ConfigError, match=r"phase mapper \(restore sasrec\) restores weights from .*enc, which was "
                                          r"trained on another dataset than"):
        run(dataset, tmp_path / "pnp4", f"train.phases={phases}")
    assert not (tmp_path / "pnp4" / "checkpoints").exists()
    digest.write_text(kept)
    run(dataset, tmp_path / "pnp4", f"train.phases={phases}")
    assert (tmp_path / "pnp4" / "results.json").exists()
    # a damaged checkpoint is refused with a message
    for f in (tmp_path / "enc" / "final").rglob("*"):
        if f.is_file() and "sasrec" in str(f) and f.stat().st_size > 0 and "meta" not in str(f):
            f.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="damaged"):
        run(dataset, tmp_path / "pnp3", f"train.phases={phases}")


def test_collab_ablation_masks(dataset, tmp_path):
    """drop: scores ignore the encoder; shuffle: rows get other rows' collaborative tokens."""
    from sasrecllm_jax.assembly import Assembly
    from sasrecllm_jax.data.pipeline import make_batch
    from sasrecllm_jax.evaluate import collab_inputs
    cfg = smoke_config(dataset, *FAST)
    comp = Assembly.build(cfg, needs_llm=True, key=jax.random.key(0))
    params = comp.init_params(jax.random.key(1))
    params = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.3 if "'b'" in str(p) else x, params)
    data = comp.split("test", "hybrid")
    batch = make_batch(data, np.arange(8), 8, 512, True)
    batch = {k: v for k, v in batch.items() if k not in ("row", "weight", "label")}
    model = comp.model("hybrid", True)
    score = lambda p, b: np.asarray(model.apply({"params": p}, b))
    other = {**params, "sasrec": jax.tree_util.tree_map(lambda x: x * 2.0, params["sasrec"])}
    dropped = collab_inputs(batch, "drop", 0)
    np.testing.assert_array_equal(score(params, dropped), score(other, dropped))
    assert not np.allclose(score(params, batch), score(other, batch))
    shuffled = collab_inputs(batch, "shuffle", 0)
    assert not np.array_equal(shuffled["collab_perm"], np.arange(8))
    assert not np.allclose(score(params, shuffled), score(params, batch))


@pytest.mark.parametrize("args,message", [
    (["--set", "train.batch_sise=4"], "unknown key(s) ['batch_sise']"),
    (["--set", "train.batch_size=many"], "train.batch_size must be int, got 'many'"),
    (["--set", "data.max_rows={train: 256 eval: 128}"], "--set 'data.max_rows={train: 256 eval: 128}': the value is not "
     "valid YAML (expected ',' or '}', but got ':'); a mapping is written {train: 256, eval: 128}"),
    (["--set", "model.llm=GPT5"], "model.llm = 'GPT5' is not a preset"),
    (["--set", "train.method=sasrecllm", "--set", 'train.phases=[{name: m, trainable: [mapper], prompt: hybrid, '
      'lr: {mapper: 0.001}, restore: {lora: /nowhere/run}}]'],
     "configs/smoke.yaml --set train.method=sasrecllm --set train.phases=[{name: m, trainable: [mapper], prompt: "
     "hybrid, lr: {mapper: 0.001}, restore: {lora: /nowhere/run}}]: train.phases[0] (m): restore lora from "
     "'/nowhere/run': no finished run there"),
    (["--set", "train.phases=[{name: m, trainable: [mapper], prompt: text}]"], "cannot train on 'text' prompts"),
    (["--config", "configs/nope.yaml"], "config file configs/nope.yaml does not exist"),
    (["--set", "model.llm_overrides={scan_unroll: 0}"], "scan_unroll = 0; use 1"),
    (["--set", "train.phase_overrides={hybird: {epochs: 2}}"], "this run has no phase 'hybird'"),
    (["--set", "train.phase_overrides={hybrid: {lr: {mapper: 0.001, loraa: 0.001}}}"],
     "lr names 'loraa', not a group (did you mean 'lora'?)"),
    (["--set", "train.phase_overrides={hybrid: {lr: {mapper: 0.001}}}"], "no learning rate for group(s) ['lora']"),
    (["--set", "data.answer_yes= Yes"], "quote the text, e.g. --set 'data.answer_yes=\" Yes\"'"),
    (["--set", "train.method=pop"], "method pop and model.encoder: pop go together"),
    (["--set", "model.mapper.item_dropout=0.2"], "needs model.mapper.new_items: unknown or text"),
    (["--set", "model.mapper.llm_gate_init=3.0"], "needs model.mapper.fusion: residual"),
    (["--set", "model.mapper.inject=cross", "--set", "model.mapper.out_init=zeros"], "leaves nothing to train"),
    (["--set", "model.mapper.cross_rank=8"], "needs model.mapper.inject: cross"),
    (["--set", "model.mapper.llm_gates=known_unknown", "--set", "model.mapper.fusion=residual"],
     "needs model.mapper.fusion: residual and model.mapper.new_items: unknown or text"),
    (["--set", "model.mapper.llm_gates=unknown_only", "--set", "model.mapper.fusion=residual", "--set",
      "model.mapper.new_items=unknown"], "no train row is: nothing would train. Set model.mapper.item_dropout"),
    (["--set", "data.prompt_hybrid_unknown_item=configs/prompts/text.txt"], "needs model.mapper.new_items: unknown"),
    (["--set", "model.mapper.inject=last", "--set", "model.mapper.num_tokens=2"], "must be 1 with model.mapper.inject: last"),
    (["--set", "model.mapper.inject=last", "--set", "model.mapper.new_items=unknown", "--set",
      "data.prompt_hybrid_unknown_item=configs/prompts/text.txt"], "with model.mapper.inject: last every row reads"),
    (["--set", "model.mapper.unknown_score_init=2.0"], "needs model.mapper.unknown_id_score: learned"),
    (["--set", "model.mapper.unknown_item_vectors=none", "--set", "model.mapper.new_items=unknown"],
     "needs model.mapper.new_items: unknown and model.mapper.inject: last"),
    (["--set", "model.mapper.unknown_id_score=learned", "--set", "model.mapper.fusion=residual"],
     "needs model.mapper.new_items: unknown and model.mapper.fusion: gate or residual"),
    (["--set", "model.mapper.unknown_id_score=learned", "--set", "model.mapper.new_items=unknown"],
     "needs model.mapper.new_items: unknown and model.mapper.fusion: gate or residual"),
    (["--set", "model.mapper.unknown_id_score=offset", "--set", "model.mapper.fusion=residual"],
     "needs model.mapper.new_items: unknown or text and model.mapper.fusion: gate or residual"),
    (["--set", "model.mapper.unknown_id_score=learned", "--set", "model.mapper.new_items=text", "--set",
      "model.mapper.fusion=residual"], "needs model.mapper.new_items: unknown and model.mapper.fusion"),
    (["--set", "train.phase_overrides={sasrec: {rows: early}}"], "splits the train rows at data.late_rows, which is 0"),
    (["--set", "data.late_rows=1.0"], "data.late_rows = 1.0: must be in [0, 1)"),
    (["--set", "data.late_rows=0.2"], "no phase trains on rows: early or late"),
    (["--set", "model.mapper.fusion=residual", "--set", "model.mapper.llm_gate_init=.nan"], "must be a finite number"),
    (["--set", "model.mapper.new_items=unknown", "--set", "model.mapper.item_dropout=1.0"],
     "model.mapper.item_dropout = 1.0: must be in [0, 1)"),
    (["--set", "train.method=tallrec", "--set", "model.mapper.new_items=unknown"], "which method 'tallrec' does not use"),
    (["--config", "configs/quickstart.yaml", "--set", "train.method=sasrec"],
     "train.method = 'sasrec' trains only phases with prompt: none, but the config's train.phases (with "
     "train.phase_overrides) include 'hybrid' on hybrid prompts; for sasrec's own phases add --set 'train.phases=[]'"),
    (["--set", "train.method=sasrec", "--set", "train.phase_overrides={sasrec: {prompt: hybrid}}"],
     "train.method = 'sasrec' trains only phases with prompt: none"),
    (["--set", "train.method=icl", "--set", "train.phases=[{name: t, trainable: [lora], prompt: text, lr: {lora: 0.001}}]"],
     "train.method = 'icl' trains nothing, but the config's train.phases (with train.phase_overrides) include 't'"),
])
def test_config_errors_are_clear(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = args if args[0] == "--config" else ["--config", "configs/smoke.yaml", *args]
    assert train_main([*argv, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()  # refused before any run folder or compilation


def test_prompts_over_max_tokens_are_refused_before_any_phase_trains(dataset, capsys, tmp_path):
    """A data.max_tokens too small for the longest title's prompt without history is named before the
    SASRec phase trains (encoding the hybrid phase's rows would find it only after that phase)."""
    run = tmp_path / "w"
    assert train_main(["--config", str(ROOT / "configs/smoke.yaml"), "--set", f"data.dataset={dataset}",
                       "--set", "data.max_tokens=24", "--workdir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "data.max_tokens=24 is too small for hybrid prompts" in err and "with no history titles and an " \
        "empty title; raise data.max_tokens" in err
    assert not (run / "checkpoints").exists()


def test_exponent_floats_read_as_floats(tmp_path):
    """YAML 1.1 reads 1e-5 as the string '1e-5'; in a file, in --set and inside a dict it is a float."""
    from sasrecllm_jax.config import load_config
    path = tmp_path / "c.yaml"
    path.write_text("base: %s\ntrain:\n  llm_lr: 2e-4\n" % (ROOT / "configs" / "smoke.yaml"))
    cfg = load_config(path, ["train.enc_lr=1e-5", "train.phases=[{name: p, trainable: [lora], prompt: text, "
                                                   "epochs: 1, lr: {lora: 3E-4}}]"])
    assert (cfg.train.llm_lr, cfg.train.enc_lr, cfg.train.phases[0].lr["lora"]) == (2e-4, 1e-5, 3e-4)
    assert isinstance(cfg.train.phases[0].lr["lora"], float)


def test_hf_folder_weights_train_end_to_end(dataset, tmp_path, monkeypatch):
    """The TinyLlama path at toy size: a random checkpoint that transformers writes, loaded by model.weights.
    Runs sharing a HostCache (the experiment grid) read the weights once and give the same results."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from sasrecllm_jax.config import DEBUG_TINY
    from sasrecllm_jax.data.prompts import byte_tokenizer
    torch.manual_seed(0)
    c = DEBUG_TINY
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=False))
    folder = tmp_path / "tiny-llama"
    hf.save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save(str(folder / "tokenizer.json"))
    results = run(dataset, tmp_path / "run", "train.method=tallrec", f"model.weights={folder}")
    assert results["test"]["all"]["auc"] is not None
    from sasrecllm_jax.host_cache import HostCache
    from sasrecllm_jax.weights import backbone
    reads, real = [], backbone.read_hf_folder
    monkeypatch.setattr(backbone, "read_hf_folder", lambda f: reads.append(f) or real(f))
    cache = HostCache()
    shared = [run(dataset, tmp_path / f"shared{i}", "train.method=tallrec", f"model.weights={folder}", host_cache=cache)
              for i in range(2)]
    assert len(reads) == 1 and {k[0] for k in cache.items} == {"weights", "tokenizer", "split"}
    assert shared[0]["test"] == shared[1]["test"] == results["test"]
    from sasrecllm_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="holds another architecture"):
        run(dataset, tmp_path / "run2", "train.method=tallrec", f"model.weights={folder}",
            'model.llm_overrides={intermediate_size: 96}')


def test_dotted_override_adds_to_a_mapping():
    """The README's GPU command: dotted keys add to quickstart's llm_overrides; a whole mapping replaces it."""
    from sasrecllm_jax.config import llm_config, load_config
    path = ROOT / "configs" / "quickstart.yaml"
    added = llm_config(load_config(path, ["model.llm_overrides.dtype=bfloat16", "model.llm_overrides.attention=cudnn"]).model)
    assert (added.remat, added.dtype, added.attention) == ("cheap", "bfloat16", "cudnn")
    replaced = llm_config(load_config(path, ["model.llm_overrides={attention: cudnn, dtype: bfloat16}"]).model)
    assert (replaced.remat, replaced.attention) == ("none", "cudnn")


def held_out_copy(dataset, out):
    """The synthetic dataset with 30% of its valid/test items held out of training (prepare --cold-items),
    written to out: (out, the held-out item ids)."""
    from data_tools.cold import hold_out_items
    from sasrecllm_jax.data.dataset import load_dataset, write_dataset
    ds = load_dataset(dataset)
    splits, info = hold_out_items(ds.splits, 0.3, seed=1)
    write_dataset(out, splits, ds.items, source="synthetic", recipe="30% of valid/test items held out")
    return out, np.asarray(info["iids"])


def test_held_out_items_get_no_gradient_and_are_reported_apart(dataset, tmp_path):
    """A dataset prepared with held-out items (prepare --cold-items): SASRec's training leaves their
    embedding rows bit-identical (no train row names them; with no weight decay nothing else moves them),
    and results.json reports the rows on new items apart: their n, and their AUC from the kept scores."""
    import pandas as pd

    from sasrecllm_jax.metrics import auc
    from sasrecllm_jax.run_folder.scores import load_scores
    cold, held = held_out_copy(dataset, tmp_path / "cold")
    seen = {}
    res = train_and_evaluate(smoke_config(cold, *FAST, "train.method=sasrec", "train.encoder_weight_decay=0"),
                             tmp_path / "run", on_phase=lambda p, b, a: seen.update(before=b, after=a))
    emb = lambda p: np.asarray(p["sasrec"]["item_emb"]["embedding"])
    np.testing.assert_array_equal(emb(seen["after"])[held], emb(seen["before"])[held])
    trained = np.setdiff1d(np.arange(1, emb(seen["before"]).shape[0]), held)
    assert not np.array_equal(emb(seen["after"])[trained], emb(seen["before"])[trained])
    train, test = (pd.read_parquet(cold / f"{s}.parquet") for s in ("train", "test"))
    new_item = ~test["iid"].isin(train["iid"]).to_numpy()
    assert new_item.sum() == res["test"]["new_item"]["n"] > 0 and np.isin(test["iid"][new_item], held).all()
    kept = load_scores(tmp_path / "run")["test"]
    np.testing.assert_array_equal(kept["new_item"].astype(bool), new_item)
    assert res["test"]["new_item"]["auc"] == auc(test["label"][new_item], kept["score"][new_item])


def test_unknown_item_vector_is_learned_and_shown_for_new_items(dataset, tmp_path):
    """model.mapper.new_items: unknown on a dataset with held-out items: the final model flags exactly the
    train split's items as seen (group counts, never trained), the shared unknown vector moved from zero
    because item_dropout showed it in training, and every new-item row gets it: two new items of one user
    have the same item token and ID score, here (unknown_id_score: learned, in a gate fusion) the learned
    unknown_score, which moved from zero too. The export and results.json describe and carry them, and
    the export README's fused_score computes the run's ID score (SASRec's counted terms included)."""
    import pandas as pd

    cold, held = held_out_copy(dataset, tmp_path / "cold")
    cfg = smoke_config(cold, *FAST, "train.method=sasrecllm", "train.strategy=plug_and_play",
                       "model.mapper.new_items=unknown", "model.mapper.item_dropout=0.3",
                       "model.mapper.fusion=gate", "model.mapper.unknown_id_score=learned", "model.sasrec.bias=counts",
                       f"data.prompt_hybrid_unknown_item={ROOT / 'tests/prompts/user_only.txt'}")
    phases = []
    train_and_evaluate(cfg, tmp_path / "run", on_phase=lambda p, b, a: phases.append((p.name, b, a)))
    final = load_raw(tmp_path / "run" / "final")
    train = pd.read_parquet(cold / "train.parquet")
    seen = np.asarray(final["counts"]["mapper"]["counts"]["item_seen"])
    np.testing.assert_array_equal(np.flatnonzero(seen), np.unique(train["iid"]))
    assert not np.isin(held, np.flatnonzero(seen)).any()
    name, before, after = phases[-1]
    assert name == "mapper" and not np.any(before["mapper"]["unknown_item"])
    assert np.any(after["mapper"]["unknown_item"]) and "unknown_item" in final["mapper"]["mapper"]
    np.testing.assert_array_equal(after["mapper"]["counts"]["item_seen"], seen)

    from sasrecllm_jax.assembly import Assembly
    comp, _ = Assembly.for_run(cfg)
    model = comp.model("hybrid", True)
    batch = {"his": np.array([[0, 0, 0, 1, 2]] * 3, np.int32), "uid": np.array([1, 1, 1], np.int32),
             "iid": np.array([held[0], held[1], int(np.unique(train["iid"])[0])], np.int32)}
    user, item, id_score, _ = model.apply({"params": after}, batch, method=lambda m, b: m.collaborative_inputs(b))
    np.testing.assert_array_equal(item[0], item[1])  # both new items: the one unknown token
    assert not np.allclose(item[0], item[2])         # a train item: its own vector
    np.testing.assert_array_equal(id_score[0], id_score[1])
    assert before["mapper"]["unknown_score"] == 0.0 and id_score[0] == after["mapper"]["unknown_score"] != 0.0
    assert id_score[2] != id_score[0]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["unknown_score"] == float(after["mapper"]["unknown_score"])

    from safetensors.numpy import load_file

    from sasrecllm_jax.export import export_run
    out = export_run(tmp_path / "run", tmp_path / "export")
    collab = json.loads((out / "collaborative" / "collaborative.json").read_text())
    assert "else mapper/unknown_item" in collab["encoder"]["item_vector"]
    weights = load_file(str(out / "collaborative" / "collaborative.safetensors"))
    np.testing.assert_array_equal(weights["mapper/counts/item_seen"], seen)
    np.testing.assert_array_equal(weights["mapper/unknown_item"], after["mapper"]["unknown_item"])
    np.testing.assert_array_equal(weights["mapper/unknown_score"], after["mapper"]["unknown_score"])
    assert collab["fusion"]["unknown_score"] == float(after["mapper"]["unknown_score"])
    assert "id_score = mapper/unknown_score instead" in collab["fusion"]["score"]
    readme = (out / "README.md").read_text()
    assert 'item_vector = w["mapper/unknown_item"]' in readme
    # the README's fused_score gives the run's ID part (SASRec's counted terms, the unknown score) exactly
    import re
    code = next(c for c in re.findall(r"```python\n(.*?)```", readme, re.S) if "def fused_score" in c)
    snippet = {"w": weights}
    exec(compile(code.split("\nprint(")[0], "README.md", "exec"), snippet)
    vectors = model.apply({"params": after}, batch, method=lambda m, b: (
        m.encoder.user_vector(b["his"], b["uid"]), m.mapper.item_input(m.encoder.item_vector(b["iid"]), b["iid"])[0]))
    theirs = [snippet["fused_score"](0.0, np.asarray(u), np.asarray(i), 1, iid)
              for u, i, iid in zip(*vectors, batch["iid"].tolist())]
    np.testing.assert_allclose(theirs, float(after["mapper"]["id_gate"]) * np.asarray(id_score), rtol=1e-5, atol=1e-6)

    # data.prompt_hybrid_unknown_item: the README renders a new item's row with template_unknown_item
    # (<UserID> alone) and scores new and known items' rows as the run does
    from sasrecllm_jax.data.pipeline import SplitData
    from sasrecllm_jax.data.prompts import history_text
    from sasrecllm_jax.score import Recommender
    assert collab["template_unknown_item"] == (ROOT / "tests/prompts/user_only.txt").read_text().rstrip("\n")
    user_code = {}
    # (its examples' print lines left out: the SASRec user vector is left to the user there)
    program = "\n".join(line for line in readme_code(out).splitlines() if not line.startswith("print("))
    exec(compile(program, str(out / "README.md"), "exec"), user_code)
    rec = Recommender(tmp_path / "run")
    test = pd.read_parquet(cold / "test.parquet")
    rows = pd.concat([test[test.iid.isin(held)].head(2), test[~test.iid.isin(held)].head(2)])
    data = SplitData.from_frame("rows", rows, cfg.model.sasrec.max_len)
    vectors = model.apply({"params": rec.params}, {"his": data.his, "uid": data.uid, "iid": data.iid}, method=lambda m, b: (
        m.encoder.user_vector(b["his"], b["uid"]), m.mapper.item_input(m.encoder.item_vector(b["iid"]), b["iid"])[0]))
    titles, theirs = rec.assembly.dataset.titles(), []
    for u, i, h, uv, iv in zip(data.uid.tolist(), data.iid.tolist(), data.histories, *map(np.asarray, vectors)):
        template = collab["template"] if seen[i] else collab["template_unknown_item"]
        text = template.format(history=history_text([titles[x] for x in h[-cfg.data.max_titles:]]), target=titles[i])
        theirs.append(user_code["fused_score"](user_code["score_hybrid"](re.split("<UserID>|<ItemID>", text), uv, iv),
                                               uv, iv, u, i))
    ours = rec.score(data.uid.tolist(), [list(h) for h in data.histories], data.iid.tolist())
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


def fused_start_run(dataset, tmp_path, capsys, new_items: str, unknown_id_score: str, *overrides):
    """A plug-and-play inject-last residual hybrid on held-out items whose start is fitted (fusion_start:
    late_fusion), run in tmp_path/run: (its config, the held-out items, {phase: params it started from},
    the lines it printed)."""
    cold, held = held_out_copy(dataset, tmp_path / "cold")
    cfg = smoke_config(cold, *FAST, "train.method=sasrecllm", "train.strategy=plug_and_play", "train.eval_at_start=true",
                       "model.mapper.inject=last", "model.mapper.out_init=zeros", f"model.mapper.new_items={new_items}",
                       "model.mapper.fusion=residual", f"model.mapper.unknown_id_score={unknown_id_score}",
                       "model.mapper.fusion_start=late_fusion", *overrides)
    starts = {}
    capsys.readouterr()
    train_and_evaluate(cfg, tmp_path / "run", on_phase=lambda p, before, after: starts.setdefault(p.name, before))
    return cfg, held, starts, capsys.readouterr().out.splitlines()


def test_a_cross_attention_hybrid_trains_its_gates_scores_and_is_refused_by_export(dataset, tmp_path, monkeypatch):
    """model.mapper.inject: cross end to end: the plug-and-play mapper phase moves the per-layer gates off 0
    (so the LLM's last position reads the vectors), the run's recorded test scores are the model's, and the
    export, which transformers + PEFT cannot express, is refused with a message that says what to use."""
    from sasrecllm_jax.evaluate import Scorer, evaluate
    from sasrecllm_jax.export import export_run
    from sasrecllm_jax.score import Recommender
    cfg = smoke_config(dataset, *FAST, "train.method=sasrecllm", "train.strategy=plug_and_play",
                       "model.mapper.inject=cross", "model.mapper.cross_rank=8", "train.eval_at_start=false")
    train_and_evaluate(cfg, tmp_path / "run")
    rec = Recommender(tmp_path / "run")
    gates = np.asarray(rec.params["mapper"]["cross"]["gate"])
    assert gates.shape == (rec.assembly.backbone.llm_cfg.num_layers,) and np.all(gates != 0)
    test = rec.assembly.split("test", "hybrid", rec.assembly.row_limit("eval"))
    _, scores = evaluate(Scorer(rec.assembly.model("hybrid", True)), rec.params, test, cfg, "hybrid")
    np.testing.assert_allclose(np.load(tmp_path / "run" / "scores.npz")["test.score"], scores, rtol=1e-5, atol=1e-5)
    # refused from the run's config, before its weights load
    monkeypatch.setattr(Recommender, "__init__", lambda *a: pytest.fail("export loaded the run before refusing it"))
    with pytest.raises(ConfigError, match="inject: cross adds a cross-attention"):
        export_run(tmp_path / "run", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_residual_fusion_starts_at_the_late_fusion_of_its_own_terms(dataset, tmp_path, capsys):
    """model.mapper.fusion_start: late_fusion: the first phase that trains the mapper starts with llm_gate and
    unknown_score fitted to the late fusion of the hybrid's own ID score (abstaining on items shown as unknown)
    and LLM log-odds on valid. Scored apart here (the LLM term as the text model, which the inject-last hybrid
    with zero soft tokens is at its start) and fitted, that fusion has the AUC the phase's step-0 evaluation
    measures, and the values the run printed."""
    from sasrecllm_jax.evaluate import Scorer, evaluate
    from sasrecllm_jax.fusion import fit_late_fusion
    from sasrecllm_jax.models.hybrid import Hybrid
    from sasrecllm_jax.score import Recommender
    cfg, _, starts, out = fused_start_run(dataset, tmp_path, capsys, "unknown", "learned")
    line = next(l for l in out if "residual fusion started at the late fusion" in l)
    assert line.startswith("[mapper]")
    before = starts["mapper"]
    assembly = Recommender(tmp_path / "run").assembly
    valid = assembly.split(cfg.data.eval_split, "hybrid", assembly.row_limit("eval"))
    model = assembly.model("hybrid", True)
    id_score, known = model.apply({"params": before}, {"his": valid.his, "uid": valid.uid, "iid": valid.iid},
                                  method=Hybrid.id_term)
    id_score, known = np.asarray(id_score), np.asarray(known)
    assert 0 < (~known).sum() < len(known)  # rows of both kinds: the stand-in score is fitted
    text = assembly.split(cfg.data.eval_split, "text", assembly.row_limit("eval"))
    _, llm = evaluate(Scorer(assembly.model("text", True)), before, text, cfg, "text")
    f = fit_late_fusion(valid.label, id_score, llm, ~known, weights=np.linspace(0, 1, 21)[1:-1], ref_a=id_score[known])
    assert f"AUC {f['valid_auc']:.4f}" in line
    assert f"model.mapper.llm_gate {f['gate_b']:.4g}" in line and f"unknown_score {f['abstain_score']:.4g}" in line
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "eval" and r["phase"] == "mapper" and r["step"] == 0)
    assert abs(start["all/auc"] - f["valid_auc"]) < 1e-6


@pytest.mark.parametrize("gates", ["known_unknown", "unknown_only"])
def test_known_and_unknown_items_get_their_own_llm_gate(dataset, tmp_path, capsys, monkeypatch, gates):
    """model.mapper.llm_gates: known_unknown: the fitted start sets llm_gate and llm_gate_unknown to
    fit_late_fusion's split gates on the terms scored apart (the step-0 AUC is that fit's); the trained run
    scores a row as its ID score plus llm_gate (item with train rows) or llm_gate_unknown (held-out item) x
    its LLM term, and so does the export's README code; `ablate --masks llm_term` zeroes both gates.
    unknown_only: the same with no llm_gate (0 in the fit and in the export's code) and llm_gate_unknown
    trained from its fitted start by the rows item_dropout shows as unknown; its evaluation runs the LLM on
    the rows of unknown items alone and scores as the whole model does."""
    from sasrecllm_jax.ablate import masked
    from sasrecllm_jax.evaluate import Scorer, evaluate
    from sasrecllm_jax.export import export_run
    from sasrecllm_jax.fusion import fit_late_fusion
    from sasrecllm_jax.models.hybrid import Hybrid
    from sasrecllm_jax.score import Recommender
    from sasrecllm_jax.train import fusion_start
    cfg, held, starts, out = fused_start_run(dataset, tmp_path, capsys, "unknown", "learned",
                                             f"model.mapper.llm_gates={gates}", "model.mapper.item_dropout=0.3")
    line = next(l for l in out if "residual fusion started at the late fusion" in l)
    before = starts["mapper"]
    rec = Recommender(tmp_path / "run")
    assembly = rec.assembly
    valid = assembly.split(cfg.data.eval_split, "hybrid", assembly.row_limit("eval"))
    model = assembly.model("hybrid", True)
    rows = lambda d: {"his": d.his, "uid": d.uid, "iid": d.iid}
    id_score, known = (np.asarray(x) for x in model.apply({"params": before}, rows(valid), method=Hybrid.id_term))
    text = assembly.split(cfg.data.eval_split, "text", assembly.row_limit("eval"))
    _, llm = evaluate(Scorer(assembly.model("text", True)), before, text, cfg, "text")
    f = fit_late_fusion(valid.label, id_score, llm, ~known, weights=np.linspace(0, 1, 21)[1:-1], ref_a=id_score[known],
                        gate_rows=~known, hold_gate=gates == "unknown_only")
    if gates == "unknown_only":
        assert f["gate_b"] == 0 and "model.mapper.llm_gate " not in line and "; rows of known items: the ID score alone" in line
    else:
        assert f"model.mapper.llm_gate {f['gate_b']:.4g}," in line
    assert f"llm_gate_unknown {f['gate_b_rows']:.4g}" in line
    assert f"AUC {f['valid_auc']:.4f}" in line
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step0 = next(r for r in records if r["kind"] == "eval" and r["phase"] == "mapper" and r["step"] == 0)
    assert abs(step0["all/auc"] - f["valid_auc"]) < 1e-6

    # the trained run: ID score + the row's gate x the LLM term, the gates apart
    params, mapper = rec.params, rec.params["mapper"]
    gate, gate_unknown = float(mapper.get("llm_gate", 0.0)), float(mapper["llm_gate_unknown"])
    assert abs(gate - gate_unknown) > 1e-3 and ("llm_gate" in mapper) == (gates == "known_unknown")
    evals = [r["all/auc"] for r in records if r["kind"] == "eval" and r["phase"] == "mapper"]
    assert len(evals) > 1 and len(set(evals)) > 1  # training moved the scores from the fitted start
    import sasrecllm_jax.evaluate as evaluate_lib
    read = []
    whole = evaluate_lib.score_split
    monkeypatch.setattr(evaluate_lib, "score_split", lambda s, p, d, *a: read.append(len(d)) or whole(s, p, d, *a))
    scores = np.asarray(evaluate(Scorer(model), params, valid, cfg, "hybrid")[1])
    monkeypatch.undo()
    assert read == ([int((~known).sum())] if gates == "unknown_only" else [len(valid)]) and 0 < read[0] <= len(valid)
    full = whole(Scorer(model), params, valid, cfg.train.eval_batch_size, cfg.data.pad_multiple, True, "on")
    np.testing.assert_allclose(scores, full, rtol=1e-5, atol=1e-5)
    some = np.concatenate([np.flatnonzero(known)[:3], np.flatnonzero(~known)[:3]])  # score and recommend alike
    asked = rec.score(valid.uid[some], [valid.histories[i] for i in some], valid.iid[some])
    np.testing.assert_allclose(asked, scores[some], rtol=1e-4, atol=1e-4)
    llm_now = np.asarray(evaluate(Scorer(fusion_start.llm_term_model(model)), params, valid, cfg, "hybrid")[1])
    id_now, known_now = (np.asarray(x) for x in model.apply({"params": params}, rows(valid), method=Hybrid.id_term))
    np.testing.assert_array_equal(known_now, known)
    np.testing.assert_allclose(scores, id_now + np.where(known, gate, gate_unknown) * llm_now, rtol=1e-4, atol=1e-4)
    ablated = masked(params, "llm_term", {})["mapper"]
    assert ablated.get("llm_gate", 0) == 0 and ablated["llm_gate_unknown"] == 0

    # the export's fused_score picks the gate by item_seen
    import re
    from safetensors.numpy import load_file
    exported = export_run(tmp_path / "run", tmp_path / "export")
    readme = (exported / "README.md").read_text()
    weights = load_file(str(exported / "collaborative" / "collaborative.safetensors"))
    code = next(c for c in re.findall(r"```python\n(.*?)```", readme, re.S) if "def fused_score" in c)
    snippet = {"w": weights}
    exec(compile(code.split("\nprint(")[0], "README.md", "exec"), snippet)
    user, item = model.apply({"params": params}, rows(valid), method=lambda m, b: (
        m.encoder.user_vector(b["his"], b["uid"]), m.mapper.item_input(m.encoder.item_vector(b["iid"]), b["iid"])[0]))
    theirs = [snippet["fused_score"](l, np.asarray(u), np.asarray(i), uid, iid) for l, u, i, uid, iid
              in zip(llm_now, user, item, valid.uid.tolist(), valid.iid.tolist())]
    np.testing.assert_allclose(theirs, scores, rtol=1e-4, atol=1e-4)


def test_new_items_show_the_vectors_their_titles_predict(dataset, tmp_path, capsys, monkeypatch):
    """model.mapper.new_items: text on held-out items: the hybrid phase's start fits item_text from the encoder
    and the LLM's input embeddings it starts with (the final table is fit_item_vectors of those, the ridge
    the run printed), only the items without train rows show it, and their ID score is the encoder's score
    of it plus the learned offset (unknown_id_score: offset): two held-out items of one user score apart, by
    their titles. The residual's start (fusion_start: late_fusion) is then fitted with that offset: the
    printed numbers and the step-0 AUC are those of fit_late_fusion on the terms scored apart. The export
    carries the table. The same run again takes its phases from the phase cache, the fitted table with them.
    A hybrid phase that trains the encoder is refused before anything loads."""
    from sasrecllm_jax.evaluate import Scorer, evaluate
    from sasrecllm_jax.fusion import fit_late_fusion
    from sasrecllm_jax.item_text import fit_item_vectors, title_features
    from sasrecllm_jax.models.hybrid import Hybrid
    from sasrecllm_jax.score import Recommender
    from sasrecllm_jax.metrics import auc
    from sasrecllm_jax.train import fusion_start
    from sasrecllm_jax.evaluate import id_rows
    from sasrecllm_jax.train.item_text_start import with_table
    monkeypatch.setenv("SASRECLLM_COMMIT", "0123abc")  # the phase cache serves a named, clean code version
    cache = f"train.phase_cache={tmp_path / 'cache'}"
    cfg, held, starts, out = fused_start_run(dataset, tmp_path, capsys, "text", "offset", cache)
    line = next(l for l in out if "item vectors regressed from titles" in l)
    before = starts["mapper"]
    rec = Recommender(tmp_path / "run")
    model = rec.assembly.model("hybrid", True)
    valid = rec.assembly.split(cfg.data.eval_split, "hybrid", rec.assembly.row_limit("eval"))
    seen = np.asarray(before["mapper"]["counts"]["item_seen"]) > 0
    assert not np.any(before["mapper"]["counts"]["item_text"]) and not seen[held].any() and seen.sum() > 10
    users, = model.apply({"params": before}, {"his": valid.his, "uid": valid.uid}, method=Hybrid.user_vectors)
    features = title_features(rec.assembly.backbone.tokenizer, np.asarray(before["llm"]["model"]["embed_tokens"]["embedding"]),
                              rec.assembly.dataset.titles())
    table, found = fit_item_vectors(features, model.apply({"params": before}, method=Hybrid.item_vectors), seen,
                                    users, valid.iid, valid.label)
    final = rec.params["mapper"]["counts"]["item_text"]
    np.testing.assert_allclose(final, table, rtol=1e-5, atol=1e-6)
    assert line.startswith("[mapper]") and f"ridge {found['ridge']:g}" in line and f"AUC {found['valid_auc']:.4f}" in line

    # the residual's start, fitted with the table in place and new-item rows offset
    start = with_table(before, table)
    id_score, known = (np.asarray(x) for x in model.apply(
        {"params": start}, {"his": valid.his, "uid": valid.uid, "iid": valid.iid}, method=Hybrid.id_term))
    assert 0 < (~known).sum() < len(known)
    text = rec.assembly.split(cfg.data.eval_split, "text", rec.assembly.row_limit("eval"))
    _, llm = evaluate(Scorer(rec.assembly.model("text", True)), start, text, cfg, "text")
    f = fit_late_fusion(valid.label, id_score, llm, weights=np.linspace(0, 1, 21)[1:-1], ref_a=id_score[known],
                        offset=~known)
    fusion = next(l for l in out if "residual fusion started at the late fusion" in l)
    assert f"AUC {f['valid_auc']:.4f}" in fusion and "rows offset" in fusion
    assert f"model.mapper.llm_gate {f['gate_b']:.4g}" in fusion and f"unknown_score {f['offset_score']:.4g}" in fusion
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step0 = next(r for r in records if r["kind"] == "eval" and r["phase"] == "mapper" and r["step"] == 0)
    assert abs(step0["all/auc"] - f["valid_auc"]) < 1e-6
    # fitted again from that fitted start (a restored mapper already holds an offset), the offset found is
    # added to the one its ID scores hold: the fusion ranks valid as the first fit did
    fitted = fusion_start.with_values(start, {"llm_gate": f["gate_b"], "unknown_score": f["offset_score"]})
    values, _ = fusion_start.fit_start(cfg, model, fitted, valid, Scorer(fusion_start.llm_term_model(model)))
    again = fusion_start.with_values(fitted, values)
    id_again, _ = model.apply({"params": again}, {"his": valid.his, "uid": valid.uid, "iid": valid.iid},
                              method=Hybrid.id_term)
    assert abs(f["offset_score"]) > 0.5  # an offset worth keeping
    assert abs(auc(valid.label, np.asarray(id_again) + values["llm_gate"] * llm) - f["valid_auc"]) < 1e-6

    his = [0] * (cfg.model.sasrec.max_len - 2) + [1, 2]  # as recommend pads the history [1, 2]
    batch = {"his": np.array([his] * 3, np.int32), "uid": np.array([1, 1, 1], np.int32),
             "iid": np.array([held[0], held[1], int(np.flatnonzero(seen)[0])], np.int32)}
    id_score, known = model.apply({"params": rec.params}, batch, method=Hybrid.id_term)
    (user,) = model.apply({"params": rec.params}, batch, method=Hybrid.user_vectors)
    shown = np.stack([final[held[0]], final[held[1]], model.apply({"params": rec.params}, method=Hybrid.item_vectors)[batch["iid"][2]]])
    offset = float(rec.params["mapper"]["unknown_score"])
    np.testing.assert_array_equal(known, [False, False, True])
    np.testing.assert_allclose(id_score, np.einsum("nd,nd->n", user, shown) + [offset, offset, 0], rtol=1e-5, atol=1e-5)
    assert id_score[0] != id_score[1] and offset != 0
    from sasrecllm_jax.recommend import encoder_scores  # retrieval scores new items by their titles too
    np.testing.assert_allclose(encoder_scores(rec, 1, [1, 2], batch["iid"]), id_score, rtol=1e-5, atol=1e-5)
    assert encoder_scores(rec, 1, [1, 2], batch["iid"][:0]).shape == (0,)  # no candidates left: none scored
    from sasrecllm_jax.ablate import masked  # the encoder mask takes the vectors fitted to it along
    assert not np.any(masked(rec.params, "sasrec", rec.params)["mapper"]["counts"]["item_text"])
    # the llm_term mask: the residual scores by its ID score alone (new items by their titles' vectors)
    test = rec.assembly.split("test", "hybrid", rec.assembly.row_limit("eval"))
    _, alone = evaluate(rec.scorer, masked(rec.params, "llm_term", None), test, cfg, "hybrid")
    np.testing.assert_allclose(alone, id_rows(model, Hybrid.id_term, rec.params, test)[0], rtol=1e-5, atol=1e-5)
    assert float(rec.params["mapper"]["llm_gate"]) != 0
    from safetensors.numpy import load_file

    from sasrecllm_jax.export import export_run
    exported = export_run(tmp_path / "run", tmp_path / "export")
    collab = json.loads((exported / "collaborative" / "collaborative.json").read_text())
    assert "else mapper/counts/item_text[iid]" in collab["encoder"]["item_vector"]
    assert "id_score + mapper/unknown_score when" in collab["fusion"]["score"]
    np.testing.assert_array_equal(load_file(str(exported / "collaborative" / "collaborative.safetensors"))["mapper/counts/item_text"],
                                  final)
    readme = (exported / "README.md").read_text()
    assert 'item_vector = w["mapper/counts/item_text"][7]' in readme and 'id_score += w["mapper/unknown_score"]' in readme
    again = train_and_evaluate(cfg, tmp_path / "again")
    assert set(again["reused_phases"]) == {"sasrec", "text_lora", "mapper"}
    assert "item vectors regressed from titles" not in capsys.readouterr().out  # not fitted again: the cache's
    np.testing.assert_array_equal(Recommender(tmp_path / "again").params["mapper"]["counts"]["item_text"], final)
    assert again["test"] == json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    refused = smoke_config(dataset, *FAST, "train.method=sasrecllm", "train.strategy=hierarchical_freezing",
                           "model.mapper.new_items=text")
    from sasrecllm_jax.train.strategies import resolve_phases
    for refuse in (lambda: resolve_phases(refused), lambda: train_and_evaluate(refused, tmp_path / "refused")):
        with pytest.raises(ConfigError, match=re.escape("phase(s) ['all'] train or restore the encoder from then on")):
            refuse()


def test_fusion_start_needs_a_residual_fusion_and_a_phase_to_fit(dataset, tmp_path):
    """fusion_start: late_fusion is refused, before anything trains, without a residual fusion, beside a given
    start, when no phase trains the mapper on hybrid prompts, with ablated collaborative inputs, or after a
    hybrid phase that would run with llm_gate 0."""
    for sets, says in ((["train.method=sasrecllm", "model.mapper.fusion_start=late_fusion"], "needs model.mapper.fusion: residual"),
                       (["train.method=sasrecllm", "model.mapper.fusion=residual", "model.mapper.fusion_start=late_fusion",
                         "model.mapper.llm_gate_init=2"], "leave model.mapper.llm_gate_init"),
                       (["train.method=sasrecllm", "train.strategy=dual_stage", "model.mapper.fusion=residual",
                         "model.mapper.fusion_start=late_fusion", "train.freeze=[mapper]"], "this run has none"),
                       (["train.method=sasrecllm", "model.mapper.fusion=residual", "model.mapper.fusion_start=late_fusion",
                         "train.collab=shuffle"], "train with train.collab: on"),
                       (["train.method=sasrecllm", "train.strategy=hierarchical_freezing", "model.mapper.fusion=residual",
                         "model.mapper.fusion_start=late_fusion"], "phase(s) ['lora'] read hybrid prompts before it")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            train_and_evaluate(smoke_config(dataset, *FAST, *sets), tmp_path / "refused")


def test_late_rows_split_the_train_rows_between_the_encoder_and_the_hybrid(dataset, tmp_path, capsys):
    """data.late_rows: a phase with rows: early trains exactly as on a dataset whose train split is the
    early rows alone (SASRec's params bit-identical), a phase with rows: late sees the late rows alone, and
    the mapper's item_seen flags count the early rows: an item that only late rows name is new to the
    encoder (its embedding never moves) and shows the unknown vector. The latest quarter by time is late."""
    from sasrecllm_jax.data.dataset import load_dataset, write_dataset
    from sasrecllm_jax.data.encode import late_mask
    ds = load_dataset(dataset)
    train = ds.splits["train"]
    cut = lambda t: late_mask(t["timestamp"].to_numpy(), 0.25)
    late = cut(train)
    assert late.sum() == -(-len(train) // 4) and train["timestamp"][late].min() >= train["timestamp"][~late].max()
    # a copy in which one item of the late rows loses its early rows: only late rows name it (as a target, or
    # in a history, as in a log where an item first appears late)
    for item in train["iid"][late]:
        kept = train[~((train["iid"] == item).to_numpy() & ~late)]
        early = kept[~cut(kept)]
        if (kept["iid"][cut(kept)] == item).any() and not (early["iid"] == item).any() \
                and not any(item in h for h in early["his"]):
            break
    else:
        raise AssertionError("no item of the late rows can be made late-only")
    late_item = tmp_path / "late-item"
    write_dataset(late_item, {**ds.splits, "train": kept}, ds.items, source="synthetic", recipe="late-only item")
    train, late = kept.reset_index(drop=True), cut(kept)
    early_only = tmp_path / "early"
    write_dataset(early_only, {**ds.splits, "train": train[~late]}, ds.items, source="synthetic", recipe="early rows")
    trained = {}
    sasrec = [*FAST, "train.method=sasrec", "train.encoder_weight_decay=0"]
    train_and_evaluate(smoke_config(late_item, *sasrec, "data.late_rows=0.25", "train.phase_overrides={sasrec: {rows: early}}"),
                       tmp_path / "split", on_phase=lambda p, b, a: trained.update(split=(b, a)))
    train_and_evaluate(smoke_config(early_only, *sasrec), tmp_path / "alone", on_phase=lambda p, b, a: trained.update(alone=a))
    jax.tree_util.tree_map(np.testing.assert_array_equal, trained["split"][1], trained["alone"])
    emb = lambda p: np.asarray(p["sasrec"]["item_emb"]["embedding"])
    np.testing.assert_array_equal(emb(trained["split"][1])[item], emb(trained["split"][0])[item])

    capsys.readouterr()
    cfg = smoke_config(late_item, *FAST, "train.method=sasrecllm", "data.late_rows=0.25", "model.mapper.new_items=unknown",
                       "train.phase_overrides={sasrec: {rows: early}, hybrid: {rows: late}}")
    train_and_evaluate(cfg, tmp_path / "hybrid")
    printed = capsys.readouterr().out
    cap = 256  # smoke_sets caps the prompted phases' rows at 256
    assert f"({min(int(late.sum()), cap):,} late rows," in printed and f"({int((~late).sum()):,} early rows," in printed
    assert f"({min(len(train), cap):,} rows," in printed  # the text phase: every row
    seen = np.asarray(load_raw(tmp_path / "hybrid" / "final")["counts"]["mapper"]["counts"]["item_seen"])
    np.testing.assert_array_equal(np.flatnonzero(seen), np.unique(train["iid"][~late]))
    assert not seen[item]


def test_late_mask_takes_the_latest_rows_by_time_then_table_order():
    import pandas as pd

    from sasrecllm_jax.data.encode import late_mask
    from sasrecllm_jax.errors import ConfigError
    ts = np.array([5, 1, 3, 3, 9])
    assert late_mask(ts, 0.4).tolist() == [True, False, False, False, True]
    assert late_mask(ts, 0.5).tolist() == [True, False, False, True, True]   # ceil(2.5): the later of the two 3s
    assert late_mask(ts, 0.8).tolist() == [True, False, True, True, True]
    assert not late_mask(ts, 0.0).any()
    from sasrecllm_jax.data.encode import train_rows
    table = pd.DataFrame({"timestamp": ts})
    assert train_rows(table, "early", 0.4).index.tolist() == [1, 2, 3] and train_rows(table, "all", 0.4) is table
    with pytest.raises(ConfigError, match="leaves no early rows of the 5 train rows"):
        train_rows(table, "early", 0.9)  # ceil(4.5): every row is late


def test_next_steps_name_the_run_folder_as_the_user_would_type_it(tmp_path, monkeypatch):
    """Under the working directory the printed commands use the relative path (runs/quickstart, as in the
    README); elsewhere the path as it is."""
    splits = {"test": pd.DataFrame({"his": [[0, 5, 7, 9]]})}
    assembly = SimpleNamespace(dataset=SimpleNamespace(splits=splits, item_ids=lambda: None))
    monkeypatch.chdir(tmp_path)
    text = next_steps(tmp_path / "runs" / "quickstart", assembly, "hybrid")
    assert "python -m sasrecllm_jax.report runs/quickstart --out runs/quickstart/curves.png" in text
    assert 'recommend --run runs/quickstart --history "5 7 9"' in text
    assert str(tmp_path) not in text
    elsewhere = tmp_path.parent / "other-run"
    assert f"--logdir {elsewhere}/tensorboard" in next_steps(elsewhere, assembly, "text")
    # a dataset that keeps its source's item ids is asked in them
    own = SimpleNamespace(dataset=SimpleNamespace(splits=splits, item_ids=lambda: [f"SKU-{i}" for i in range(10)]))
    assert 'recommend --run runs/quickstart --own-ids --history "SKU-5 SKU-7 SKU-9"' in \
        next_steps(tmp_path / "runs" / "quickstart", own, "hybrid")
    spaced = SimpleNamespace(dataset=SimpleNamespace(splits=splits, item_ids=lambda: [f"SKU {i}" for i in range(10)]))
    assert 'recommend --run runs/quickstart --history "5 7 9"' in next_steps(tmp_path / "runs" / "quickstart", spaced,
                                                                            "hybrid")


def test_unknown_items_get_no_vectors_at_the_last_position(dataset, tmp_path):
    """model.mapper.unknown_item_vectors: none (inject: last, new_items: unknown): a row whose item has no
    train row gets nothing added at its last position, so its LLM term is the text model's exactly, while a
    known item's row gets its vectors; the export's README scores both kinds of rows as the run does."""
    import re

    import pandas as pd
    from safetensors.numpy import load_file

    from sasrecllm_jax.data.pipeline import SplitData
    from sasrecllm_jax.data.prompts import history_text
    from sasrecllm_jax.export import export_run
    from sasrecllm_jax.score import Recommender
    cold, held = held_out_copy(dataset, tmp_path / "cold")
    cfg = smoke_config(cold, *FAST, "train.method=sasrecllm", "train.strategy=plug_and_play",
                       "model.mapper.inject=last", "model.mapper.new_items=unknown", "model.mapper.fusion=residual",
                       "model.mapper.llm_gate_init=0.5", "model.mapper.unknown_id_score=learned",
                       "model.mapper.unknown_item_vectors=none")
    train_and_evaluate(cfg, tmp_path / "run")
    rec = Recommender(tmp_path / "run")
    test = pd.read_parquet(cold / "test.parquet")
    rows = pd.concat([test[test.iid.isin(held)].head(2), test[~test.iid.isin(held)].head(2)])
    data = SplitData.from_frame("rows", rows, cfg.model.sasrec.max_len)
    batch = {"his": data.his, "uid": data.uid, "iid": data.iid}
    model = rec.assembly.model("hybrid", True)
    user, item, *_ = model.apply({"params": rec.params}, batch, method=lambda m, b: m.collaborative_inputs(b))
    assert not np.any(user[:2]) and not np.any(item[:2])     # new items: nothing to add
    assert np.all(np.abs(user[2:] + item[2:]).max(axis=(1, 2)) > 0)

    out = export_run(tmp_path / "run", tmp_path / "export")
    collab = json.loads((out / "collaborative" / "collaborative.json").read_text())
    assert "nothing is added for an item whose mapper/counts/item_seen is 0" in collab["added"]
    assert "nothing is added: `score_hybrid(..., known=False)`" in (out / "README.md").read_text()
    weights = load_file(str(out / "collaborative" / "collaborative.safetensors"))
    user_code = {}
    program = "\n".join(line for line in readme_code(out).splitlines() if not line.startswith("print("))
    exec(compile(program, str(out / "README.md"), "exec"), user_code)
    vectors = model.apply({"params": rec.params}, batch, method=lambda m, b: (
        m.encoder.user_vector(b["his"], b["uid"]), m.mapper.item_input(m.encoder.item_vector(b["iid"]), b["iid"])[0]))
    titles, theirs, text_only = rec.assembly.dataset.titles(), [], []
    for u, i, h, uv, iv in zip(data.uid.tolist(), data.iid.tolist(), data.histories, *map(np.asarray, vectors)):
        text = collab["template"].format(history=history_text([titles[x] for x in h[-cfg.data.max_titles:]]),
                                         target=titles[i])
        known = weights["mapper/counts/item_seen"][i] == 1
        llm = user_code["score_hybrid"](re.split("<UserID>|<ItemID>", text), uv, iv, known=known)
        theirs.append(user_code["fused_score"](llm, uv, iv, u, i))
        text_only.append(user_code["score"](text))
    assert [weights["mapper/counts/item_seen"][i] for i in data.iid.tolist()] == [0, 0, 1, 1]
    ours = rec.score(data.uid.tolist(), [list(h) for h in data.histories], data.iid.tolist())
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    gate, unknown_score = weights["mapper/llm_gate"].item(), weights["mapper/unknown_score"].item()
    np.testing.assert_allclose(ours[:2], unknown_score + gate * np.asarray(text_only[:2]), rtol=1e-4, atol=1e-4)
