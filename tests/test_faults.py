"""Runs that cannot be silently wrong: killed, corrupted and misconfigured runs of configs/smoke.yaml on the
synthetic dataset. Each fault ends in one line and a non-zero exit, or in the right result, and nothing
that was saved is lost. Most runs are a two-phase SASRec method (seconds each); the interrupt is sent to
a real process in an LLM phase, and the disk limit is a real resource limit on a process."""
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import yaml

from helpers import ONE_SHAPE, ROOT, smoke_sets, synthetic_dataset
from sasrecllm_jax.cli import train_main
from sasrecllm_jax.config import load_config
from sasrecllm_jax.errors import TrainingError
from sasrecllm_jax.run_folder.files import RunLock
from sasrecllm_jax.run_folder.metrics_log import read_metrics
from sasrecllm_jax.score import main as score_main
from sasrecllm_jax.train import phase as phase_lib
from sasrecllm_jax.train import run as run_lib
from sasrecllm_jax.train.checkpoint import Store, load_raw
from sasrecllm_jax.train.run import train_and_evaluate

SMOKE = ROOT / "configs" / "smoke.yaml"
FAST = [ONE_SHAPE, "data.max_rows={train: 64, eval: 64}", "train.log_every=2"]
# two short SASRec phases (5 steps per epoch): a evaluates once, at its last step; b every 2 steps
PHASES = json.dumps([
    {"name": "a", "trainable": ["sasrec"], "prompt": "none", "epochs": 10, "max_steps": 4, "eval_every": 4,
     "lr": {"sasrec": 0.01}},
    {"name": "b", "trainable": ["sasrec"], "prompt": "none", "epochs": 10, "max_steps": 6, "eval_every": 2,
     "patience": 100, "lr": {"sasrec": 0.01}}])
TWO_PHASES = ["train.method=sasrec", f"train.phases={PHASES}"]


REAL_EVALUATE = phase_lib.evaluate


class Kill(Exception):
    """Stands in for a SIGKILL at a chosen point of a run."""


def sets(dataset, *extra) -> list[str]:
    return [*smoke_sets(dataset), *FAST, *extra]


def cfg_of(dataset, *extra):
    return load_config(SMOKE, sets(dataset, *extra))


def argv(dataset, workdir, *extra, flags=()) -> list[str]:
    out = ["--config", str(SMOKE), "--workdir", str(workdir), *flags]
    for s in sets(dataset, *extra):
        out += ["--set", s]
    return out


def one_error_line(err: str) -> str:
    """The single `error:` line of a command's stderr (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def flip_bit(checkpoint) -> None:
    """Flip one bit in the middle of the largest array file of a checkpoint step."""
    data = max((f for f in checkpoint.rglob("*") if f.is_file() and "/d/" in str(f)), key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x08
    data.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The two-phase run, uninterrupted."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    train_and_evaluate(cfg_of(dataset, *TWO_PHASES), workdir)
    return workdir


@pytest.fixture(scope="module")
def resumed(dataset, tmp_path_factory):
    """The same run killed in phase b at step 5 (after its evaluations at 2 and 4), a bit flipped in the
    newest checkpoint of each kind, resumed and killed again in the final evaluation, resumed again.
    Returns (run folder, what the two resumes printed)."""
    workdir = tmp_path_factory.mktemp("resumed") / "run"
    cfg = cfg_of(dataset, *TWO_PHASES)

    def kill(phase, step):
        if (phase, step) == ("b", 5):
            raise Kill()

    with pytest.raises(Kill):
        train_and_evaluate(cfg, workdir, on_step=kill)
    assert Store(workdir / "checkpoints" / "b" / "latest").steps() == [2, 4]
    flip_bit(workdir / "checkpoints" / "b" / "latest" / "4")   # b resumes from step 2 instead
    flip_bit(workdir / "checkpoints" / "a" / "best" / "4")     # a's params come from its latest step 4

    def killed_final_evaluation(*args, **kw):
        args[6].log("final", "test", 0, {"all": {"auc": 0.5}})  # (the reporter) half an evaluation
        raise Kill()

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_lib, "final_evaluation", killed_final_evaluation)
        with pytest.raises(Kill):
            train_and_evaluate(cfg, workdir, resume=True)
    assert not (workdir / "results.json").exists() and (workdir / "final").exists()
    with contextlib.redirect_stdout(printed):
        train_and_evaluate(cfg, workdir, resume=True)
    return workdir, printed.getvalue()


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("flag,message", [
    ("train.batch_size=-4", "--set train.batch_size=-4: train.batch_size = -4: must be > 0"),
    ("train.eval_batch_size=-1", "--set train.eval_batch_size=-1: train.eval_batch_size = -1: must be > 0"),
    ("train.encoder_batch_size=0", "train.encoder_batch_size = 0: must be > 0"),
    ("train.llm_lr=.nan", "train.llm_lr = nan: must be a finite number > 0"),
    ("train.enc_epochs=-1", "train.enc_epochs = -1.0: must be >= 0"),
    ("train.log_every=0", "train.log_every = 0: must be > 0"),
    ("model.lora.dropout=1.0", "model.lora.dropout = 1.0: must be in [0, 1)"),
    ("model.lora.rank=0", "model.lora.rank = 0: must be > 0"),
    ("data.pad_lengths=-2", "data.pad_lengths = -2: must be >= 0"),
    ("model.mapper.num_tokens=0", "model.mapper.num_tokens = 0: must be >= 1"),
    ("model.sasrec.num_heads=3", "model.sasrec.num_heads = 3: must divide model.sasrec.hidden (64)"),
    ("data.max_rows={train:64}", "data.max_rows: unknown key 'train:64'"),
    ("train.freeze=[lroa]", "unknown group(s) ['lroa']"),
    ("train.phase_overrides={hybrid: {lr: {mapper: 0}}}", "train.phase_overrides.hybrid.lr.mapper = 0"),
    ("train.batch_sise=4", "--set train.batch_sise=4: train: unknown key(s) ['batch_sise']; did you mean 'batch_size'?"),
])
def test_config_values_are_range_checked_naming_the_flag(flag, message, tmp_path, capsys):
    assert train_main(["--config", str(SMOKE), "--set", flag, "--workdir", str(tmp_path / "w")]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "w").exists()  # refused before any run folder


def test_a_bad_value_in_a_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {SMOKE}\ntrain:\n  warmup_steps: -2\n")
    assert train_main(["--config", str(path), "--workdir", str(tmp_path / "w")]) == 2
    assert f"{path}: train.warmup_steps = -2: must be >= 0" in one_error_line(capsys.readouterr().err)


def test_config_groups_match_the_partition():
    from sasrecllm_jax.config.checks import TRAINABLE_GROUPS
    from sasrecllm_jax.train.groups import TRAINABLE
    assert TRAINABLE_GROUPS == TRAINABLE


# ---------------------------------------------------------------------------------------------- resume
def test_damaged_checkpoints_are_refused_and_a_verified_one_used(resumed, reference):
    workdir, printed = resumed
    assert f"not resuming from a damaged checkpoint: {workdir}/checkpoints/b/latest/4 is damaged" in printed
    assert f"resuming from the older checkpoint {workdir}/checkpoints/b/latest/2, which verifies" in printed
    assert f"{workdir}/checkpoints/a/best/4 is damaged" in printed
    assert f"using {workdir}/checkpoints/a/latest/4 instead, which verifies and holds the same step" in printed
    # the result is the uninterrupted run's, bit for bit
    jax.tree_util.tree_map(np.testing.assert_array_equal, load_raw(reference / "final"), load_raw(workdir / "final"))
    ours, theirs = (json.loads((w / "results.json").read_text()) for w in (workdir, reference))
    assert ours["test"] == theirs["test"]


def test_a_kill_in_the_final_evaluation_resumes(resumed):
    workdir, _ = resumed
    results = json.loads((workdir / "results.json").read_text())
    assert results["test"]["all"]["n"] == 64
    assert Store(workdir / "final").steps() == [0]


def test_metrics_hold_each_record_once_after_resumes(resumed, reference):
    workdir, _ = resumed
    records = read_metrics(workdir)
    keys = [(r["kind"], r["phase"], r["step"]) for r in records]
    assert len(keys) == len(set(keys))
    evals = lambda run: [(r["phase"], r["step"], r["all/auc"]) for r in read_metrics(run) if r["kind"] == "eval"]
    assert evals(workdir) == evals(reference)
    assert [s for p, s, _ in evals(workdir)] == [4, 2, 4, 6]
    assert [(r["phase"], r["all/auc"]) for r in records if r["kind"] == "final" and r["phase"] == "test"] == \
           [("test", json.loads((workdir / "results.json").read_text())["test"]["all"]["auc"])]


def test_timing_counts_every_phase_of_every_process(resumed, reference):
    workdir, _ = resumed
    timing = json.loads((workdir / "results.json").read_text())["timing"]
    assert {"a", "b"} <= set(timing)
    # b: the 2 steps of the checkpoint it fell back to, and the 4 after it (the steps after the lost one are lost)
    assert (timing["a"]["steps"], timing["b"]["steps"]) == (4, 6)
    assert timing["b"]["processes"] == 2 and "processes" not in timing["a"]
    reference_timing = json.loads((reference / "results.json").read_text())["timing"]
    assert timing["b"]["best_step"] == reference_timing["b"]["best_step"]


def whole_and_killed_at_step_3(cfg, tmp_path) -> None:
    """The run of cfg in tmp_path/whole, and in tmp_path/killed killed at step 3 and resumed."""
    train_and_evaluate(cfg, tmp_path / "whole")

    def kill(phase, step):
        if step == 3:
            raise Kill()

    with pytest.raises(Kill):
        train_and_evaluate(cfg, tmp_path / "killed", on_step=kill)
    train_and_evaluate(cfg, tmp_path / "killed", resume=True)


def test_a_resumed_prompt_phase_counts_the_tokens_of_every_step_it_kept(dataset, tmp_path):
    """A hybrid phase killed at step 3 resumes from its step-2 checkpoint: its timing counts the tokens of
    steps 1-2 (saved with that checkpoint) and 3-4 (the resumed process), as the run that was not killed."""
    hybrid = ["train.method=sasrecllm", "train.phases=[{name: h, trainable: [mapper], prompt: hybrid, max_steps: 4, "
              "eval_every: 2, lr: {mapper: 0.001}}]"]
    whole_and_killed_at_step_3(cfg_of(dataset, *hybrid), tmp_path)
    whole, killed = (json.loads((tmp_path / r / "results.json").read_text())["timing"]["h"] for r in ("whole", "killed"))
    assert killed["processes"] == 2 and killed["steps"] == 4
    assert killed["token_slots"] == whole["token_slots"] == 4 * 16 * 128  # 4 steps of 16 rows padded to 128
    assert killed["real_tokens"] == whole["real_tokens"] and killed["rows"] == whole["rows"] == 4 * 16
    # each process's first step compiles: the steady count leaves out steps 1 and 3, the whole run's step 1
    assert killed["steady_real_tokens"] < whole["steady_real_tokens"] < whole["real_tokens"]


def test_packed_training_refuses_shuffled_collaborative_tokens(tmp_path, capsys):
    argv = ["--config", str(SMOKE), "--set", "data.pack_train=true", "--set", "train.collab=shuffle",
            "--workdir", str(tmp_path / "w")]
    assert train_main(argv) == 2
    assert "data.pack_train = True: keeps a pack's rows together" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "w").exists()


def test_a_packed_phase_resumes_as_the_run_that_was_not_killed(dataset, tmp_path, capsys):
    """data.pack_train: a hybrid phase trained on shared-prefix packs, killed at step 3, resumes from its
    step-2 checkpoint to the params and test scores of the run that was not killed; a step holds 16 packs
    of one or more rows each."""
    hybrid = ["data.pack_train=true", "train.method=sasrecllm", "train.phases=[{name: h, trainable: [mapper, lora], "
              "prompt: hybrid, epochs: 4, max_steps: 4, eval_every: 2, lr: {mapper: 0.001, lora: 0.001}}]"]
    whole_and_killed_at_step_3(cfg_of(dataset, *hybrid), tmp_path)
    scores = [np.load(tmp_path / r / "scores.npz") for r in ("whole", "killed")]
    for name in scores[0].files:
        np.testing.assert_array_equal(scores[1][name], scores[0][name])
    whole, killed = (json.loads((tmp_path / r / "results.json").read_text())["timing"]["h"] for r in ("whole", "killed"))
    assert killed["processes"] == 2 and killed["steps"] == whole["steps"] == 4
    assert killed["real_tokens"] == whole["real_tokens"] and whole["token_slots"] == 4 * 16 * 128
    assert killed["rows"] == whole["rows"] > 4 * 16  # 16 packs a step, of one row or more
    said = re.search(r"4 steps of 16 packs \((\d+) rows in (\d+) shared-prefix packs", capsys.readouterr().out)
    assert said and int(said.group(2)) < int(said.group(1))  # rows shared their prompts' starts


def test_a_resumed_hybrid_phase_fits_its_title_vectors_again(dataset, tmp_path):
    """model.mapper.new_items: text with item_dropout (rows show their item's title vector in training): the
    table is counted, not in the phase's checkpoints, so a phase killed at step 3 fits it again when it
    resumes, and a run killed after the phase (in its final evaluation) fits it again when it passes the
    finished phase: the final table and the mapper trained equal those of the run that was not killed."""
    hybrid = ["train.method=sasrecllm", "model.mapper.new_items=text", "model.mapper.item_dropout=0.5",
              "train.phases=[{name: h, trainable: [mapper], prompt: hybrid, max_steps: 4, eval_every: 2, "
              "lr: {mapper: 0.001}}]"]
    cfg = cfg_of(dataset, *hybrid)
    whole_and_killed_at_step_3(cfg, tmp_path)

    def killed_final_evaluation(*args, **kw):
        raise Kill()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_lib, "final_evaluation", killed_final_evaluation)
        with pytest.raises(Kill):
            train_and_evaluate(cfg, tmp_path / "late")
    train_and_evaluate(cfg, tmp_path / "late", resume=True)
    whole = load_raw(tmp_path / "whole" / "final")
    table = whole["counts"]["mapper"]["counts"]["item_text"]
    assert np.abs(table).max() > 0
    for run in ("killed", "late"):
        other = load_raw(tmp_path / run / "final")
        np.testing.assert_array_equal(other["counts"]["mapper"]["counts"]["item_text"], table)
        for name in ("fc1", "fc2"):
            np.testing.assert_allclose(other["mapper"]["mapper"][name]["kernel"], whole["mapper"]["mapper"][name]["kernel"],
                                       rtol=1e-6, atol=1e-7)


def test_a_run_folder_is_only_continued_or_restarted(reference, dataset, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(reference, folder)
    finished = (folder / "results.json").read_text()
    # a run made before the schema grew a key (its config.yaml lacks it) resumes: the key reads as its default
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    del saved["model"]["mapper"]["item_dropout"], saved["train"]["eval_at_start"]
    (folder / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert train_main(argv(dataset, folder, *TWO_PHASES, flags=["--resume"])) == 0
    assert (folder / "results.json").read_text() == finished
    # a finished run: --resume with a different --set is refused, naming the key
    assert train_main(argv(dataset, folder, *TWO_PHASES, "train.batch_size=32", flags=["--resume"])) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--resume with a changed config: train.batch_size: 16 -> 32" in line and "--restart" in line
    assert train_main(argv(dataset, folder, *TWO_PHASES, "train.log_every=3",
                           flags=["--resume", "--allow-config-change"])) == 0
    assert "these keys cannot change the results" in capsys.readouterr().out
    assert (folder / "results.json").read_text() == finished
    # an unfinished run is not trained over
    (folder / "results.json").unlink()
    assert train_main(argv(dataset, folder, *TWO_PHASES)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "holds an unfinished run (checkpoints of a, b); pass --resume to continue it, --restart" in line
    assert Store(folder / "checkpoints" / "b" / "latest").steps() == [4, 6]
    # --resume without --config continues with the run's own config.yaml, to the same results (and a
    # --workdir without one is refused, not resumed with the default config)
    assert train_main(["--workdir", str(tmp_path / "typo"), "--resume"]) == 2
    assert "holds no run to continue; check --workdir, or give the run's --config" in \
        one_error_line(capsys.readouterr().err)
    assert train_main(["--workdir", str(folder), "--resume"]) == 0
    assert f"resuming with {folder / 'config.yaml'}, the run's own config" in capsys.readouterr().out
    assert json.loads((folder / "results.json").read_text())["test"] == json.loads(finished)["test"]
    # --restart says what it removes, then trains afresh (and --restart with --resume is refused)
    assert train_main(argv(dataset, folder, *TWO_PHASES, flags=["--resume", "--restart"])) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert train_main(argv(dataset, folder, *TWO_PHASES, flags=["--restart"])) == 0
    assert "--restart: removed run_state.json, metrics.jsonl, tensorboard/, checkpoints/, final/, results.json, " \
           "scores.npz, dataset.sha256, config.yaml from" in capsys.readouterr().out
    assert json.loads((folder / "results.json").read_text())["test"] == json.loads(finished)["test"]
    # a folder train.py did not write (no config.yaml) is never cleared, with --restart or without
    other = tmp_path / "project"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "mine.pt").write_text("keep")
    for flags in ([], ["--restart"]):
        assert train_main(argv(dataset, other, *TWO_PHASES, flags=flags)) == 2
        assert "holds checkpoints but no config.yaml, so it is not a run folder" in one_error_line(capsys.readouterr().err)
    assert (other / "checkpoints" / "mine.pt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------- evaluations
def scripted(monkeypatch, script: dict):
    """phase.evaluate with the AUC and log-loss of each evaluation replaced by script[n] = (auc, logloss)."""
    real, seen = REAL_EVALUATE, []

    def fake(scorer, params, data, cfg, prompt, *args, **kw):
        result, scores = real(scorer, params, data, cfg, prompt, *args, **kw)
        seen.append(1)
        auc, logloss = script[len(seen)]
        return {**result, "all": {**result["all"], "auc": auc, "logloss": logloss}}, scores
    monkeypatch.setattr(phase_lib, "evaluate", fake)


ONE_PHASE = json.dumps([{"name": "s", "trainable": ["sasrec"], "prompt": "none", "max_steps": 3, "epochs": 10,
                         "eval_every": 1, "patience": 100, "lr": {"sasrec": 0.01}}])


def test_a_nonfinite_evaluation_is_never_the_best(dataset, tmp_path, monkeypatch, capsys):
    scripted(monkeypatch, {1: (0.6, 0.7), 2: (0.9, float("nan")), 3: (0.7, 0.69)})
    results = train_and_evaluate(cfg_of(dataset, "train.method=sasrec", f"train.phases={ONE_PHASE}"), tmp_path)
    assert results["timing"]["s"]["best_step"] == 3
    best = Store(tmp_path / "checkpoints" / "s" / "best")
    assert best.steps() == [1, 3] and best.meta()["auc"] == 0.7
    printed = capsys.readouterr()
    assert "step 2: the evaluation's metrics are not finite (AUC 0.9, log-loss nan): never the best" in \
           printed.out + printed.err
    scripted(monkeypatch, {n: (0.8, float("inf")) for n in (1, 2, 3)})
    with pytest.raises(TrainingError, match="none of its 3 evaluations had finite metrics"):
        train_and_evaluate(cfg_of(dataset, "train.method=sasrec", f"train.phases={ONE_PHASE}"), tmp_path / "inf")


# ---------------------------------------------------------------------------------------------- the lock
def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(dataset, tmp_path, capsys):
    workdir = tmp_path / "run"
    with RunLock(workdir):
        assert train_main(argv(dataset, workdir, *TWO_PHASES)) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{workdir} is in use by pid {os.getpid()} on " in line and "choose another --workdir" in line
    assert not (workdir / "lock").exists() and not (workdir / "config.yaml").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sasrecllm_jax.run_folder.files import "
                               f"RunLock; RunLock({str(workdir)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert json.loads((workdir / "lock").read_text())["pid"] == holder.pid  # left behind by a SIGKILL
    assert train_main(argv(dataset, workdir, *TWO_PHASES)) == 0
    assert f"note: {workdir / 'lock'} was left by pid {holder.pid}" in capsys.readouterr().out
    assert not (workdir / "lock").exists()


# ---------------------------------------------------------------------------------------------- the system
def test_os_errors_are_one_line(dataset, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert train_main(argv(dataset, tmp_path / "file", *TWO_PHASES)) == 2
    assert f"cannot use {tmp_path / 'file'}: File exists; a file or folder is in the way" in \
           one_error_line(capsys.readouterr().err)
    assert train_main(argv(dataset, tmp_path / "file" / "run", *TWO_PHASES)) == 2
    assert f"cannot use {tmp_path / 'file' / 'run'}: Not a directory" in one_error_line(capsys.readouterr().err)
    if os.geteuid() != 0:  # (root writes anywhere)
        (tmp_path / "ro").mkdir(mode=0o555)
        assert train_main(argv(dataset, tmp_path / "ro" / "run", *TWO_PHASES)) == 2
        assert "Permission denied; it is not writable" in one_error_line(capsys.readouterr().err)


def limited(limit: int, *command: str) -> list[str]:
    """`python command...` under a file-size limit of `limit` bytes: a write past it fails with EFBIG (the
    SIGXFSZ it would send is ignored), as on a full disk. (A launcher that execs, not a preexec_fn: this
    process runs JAX's threads, and fork with threads may deadlock.)"""
    launcher = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    return [sys.executable, "-c", launcher, *command]


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(dataset, tmp_path):
    # an Orbax save past the limit: an OSError naming the checkpoint folder
    script = (f"import numpy as np\n"
              f"from sasrecllm_jax.errors import run_command\n"
              f"from sasrecllm_jax.train.checkpoint import Store\n"
              f"def body():\n"
              f"    Store({str(tmp_path / 'store')!r}, writer=True).save(1, {{'a': {{'x': np.random.rand(10 ** 6)}}}}, {{}})\n"
              f"raise SystemExit(run_command(body))\n")
    proc = subprocess.run(limited(100_000, "-c", script), capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot use {tmp_path / 'store'}: File too large; the disk is full" in one_error_line(proc.stderr)
    # a run whose records outgrow the limit after some checkpoints (MF: small checkpoints), resumed after it
    workdir = tmp_path / "run"
    mf = ["train.method=mf", "model.encoder=mf", "model.mf.dim=4", "train.enc_epochs=10", "train.log_every=1"]
    args = argv(dataset, workdir, *mf)
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}  # (cache files would meet the limit too)
    proc = subprocess.run(limited(16 * 1024, str(ROOT / "train.py"), *args), capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert f"cannot use {workdir}" in line and "File too large; the disk is full or a file-size limit was reached" in line
    assert "The checkpoints saved before are kept: once fixed, add --resume to continue" in line
    latest = Store(workdir / "checkpoints" / "mf" / "latest")
    assert latest.steps() and latest.check(latest.steps()[-1]) is None and not (workdir / "lock").exists()
    assert train_main(argv(dataset, workdir, *mf, flags=["--resume"])) == 0


# ---------------------------------------------------------------------------------------------- signals
HYBRID = ["train.method=sasrecllm", "train.phases=[{name: h, trainable: [mapper, lora], prompt: hybrid, max_steps: 4, "
          "lr: {mapper: 0.001, lora: 0.001}}]"]


def _interrupt(dataset, workdir, signals: int, delay: float, train_py=ROOT / "train.py",
               env=None) -> subprocess.CompletedProcess:
    """train.py of a one-phase hybrid run in a process of its own, sent SIGINT `signals` times, `delay` s
    after its phase's progress bar appears (so the first lands while the first step compiles and runs:
    there an interrupt used to end in a segmentation fault)."""
    args = [sys.executable, str(train_py), *argv(dataset, workdir, *HYBRID)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    streams = {"out": b"", "err": b""}

    def drain(name, pipe):
        for chunk in iter(lambda: os.read(pipe.fileno(), 4096), b""):
            streams[name] += chunk
    readers = [threading.Thread(target=drain, args=(n, p), daemon=True) for n, p in (("out", proc.stdout),
                                                                                     ("err", proc.stderr))]
    for r in readers:
        r.start()
    deadline = time.time() + 300
    while b"h:   0%" not in streams["err"] and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    proc.wait(timeout=300)
    for r in readers:
        r.join(timeout=10)
    return subprocess.CompletedProcess(args, proc.returncode, streams["out"].decode(), streams["err"].decode())


@pytest.mark.parametrize("signals,delay", [(1, 1.0), (2, 0.5)], ids=["once", "twice"])
def test_sigint_in_an_llm_phase_stops_cleanly(dataset, tmp_path, signals, delay):
    proc = _interrupt(dataset, tmp_path / "run", signals, delay)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Segmentation fault" not in proc.stderr
    assert "SIGINT: stopping at the next step" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("stopped: interrupted. Checkpoints up to the last")
    if signals == 1:  # (the second interrupt stops the process at once: its lock is freed, the file stays)
        assert not (tmp_path / "run" / "lock").exists()


# ---------------------------------------------------------------------------------------------- score
@pytest.mark.parametrize("args,message", [
    (["--user", "999", "--candidates", "1 2"], "user id 999 is not in the dataset (ids run 1..40; 0 is a new user)"),
    (["--user", "-1", "--candidates", "1 2"], "user id -1 is not in the dataset"),
    (["--user", "abc", "--candidates", "1 2"], "--user: 'abc' is not an id"),
    (["--user", "1", "--candidates", "1 x"], "--candidates: 'x' is not an id"),
    (["--user", "1", "--history", "3 99", "--candidates", "1"], "item id 99 is not in the dataset (ids run 1..30)"),
    (["--rows", "{tmp}/missing.csv"], "missing.csv: no such file"),
    (["--rows", "{tmp}/empty.csv"], "empty.csv is empty"),
    (["--rows", "{tmp}/header.csv"], "header.csv holds a header but no rows"),
    (["--rows", "{tmp}/words.csv"], "words.csv row 1, column uid: 'me' is not an id"),
    (["--rows", "{tmp}/range.csv"], "range.csv row 2: user id 41 is not in the dataset"),
])
def test_score_refuses_bad_ids_and_files(reference, tmp_path, capsys, args, message):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("uid,history,iid\n")
    (tmp_path / "words.csv").write_text("uid,history,iid\nme,1 2,3\n")
    (tmp_path / "range.csv").write_text("uid,history,iid\n1,1 2,3\n41,1,2\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert score_main(["--run", str(reference), *args]) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_score_shows_the_titles_of_the_history_and_candidates(reference, dataset, capsys):
    from sasrecllm_jax.data.dataset import load_dataset
    ds = load_dataset(dataset)
    titles, own, user = ds.titles(), ds.item_ids(), ds.users.set_index("uid")["user"][1]
    assert score_main(["--run", str(reference), "--user", "1", "--history", "4 5", "--candidates", "7 8"]) == 0
    out = capsys.readouterr().out
    assert f"user 1 ({user}), history (oldest first):" in out  # with the user's and the items' own ids
    for iid in (4, 5):
        assert f"  {iid:>6}  {own[iid]}  {titles[iid]}" in out
    for iid in (7, 8):
        assert titles[iid] in out and own[iid] in out


def test_a_dataset_folder_is_not_a_workdir(dataset, tmp_path, capsys):
    """--workdir naming a dataset folder is refused, and nothing is written into it."""
    import shutil
    shutil.copytree(dataset, tmp_path / "data")
    before = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert train_main(argv(dataset, tmp_path / "data", *TWO_PHASES)) == 2
    assert "is a dataset folder (it holds dataset.json); give the run its own --workdir, e.g. runs/data" in \
        one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == before


def test_one_label_eval_split_refused(dataset, tmp_path, capsys):
    """An evaluation split with one label cannot pick a checkpoint: refused before training, naming the
    split, the label and (when a row cap chose the rows) the cap."""
    from sasrecllm_jax.data.dataset import load_dataset, write_dataset
    ds = load_dataset(dataset)
    splits = {k: (v.assign(label=1) if k.startswith("valid") else v) for k, v in ds.splits.items()}
    write_dataset(tmp_path / "liked", splits, ds.items, source="test", recipe="every valid label set to 1")
    n = len(ds.splits[load_config(SMOKE, sets(dataset)).data.eval_split])
    assert train_main(argv(tmp_path / "liked", tmp_path / "w", "train.method=sasrec", "data.max_rows={}")) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"every one of the {n:,} valid_small rows it evaluates on is labelled 1" in err
    assert "check the dataset's labels" in err and "row cap" not in err and not (tmp_path / "w" / "checkpoints").exists()
    # a cap that leaves no choice of rows (7 of 48 all labelled 1) is not blamed
    assert train_main(argv(tmp_path / "liked", tmp_path / "w2", "train.method=sasrec", "data.max_rows={eval: 7}")) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "every one of the 7 valid_small rows" in err and "row cap" not in err
    # a split that holds both labels, capped to one row: the cap is named, not the labels
    assert train_main(argv(dataset, tmp_path / "w3", "train.method=sasrec", "data.max_rows={eval: 1}")) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"the split's {n:,} rows hold both labels, and a row cap chose these (data.max_rows / " \
           f"data.cpu_max_rows eval: 1): raise or drop it" in err and "check the dataset's labels" not in err
