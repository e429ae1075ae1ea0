"""One phase of training: `PhaseRunner.run(phase, params) -> PhaseResult`. (Over 300 lines: the runner,
its plan and its step loop share the resume, interrupt and checkpoint rules, kept side by side.)

Split the params into what trains and what is frozen, build the optimizer from the group labels, run
the jitted step over length-bucketed batches, evaluate on the validation split every `eval_every`
steps (keeping the best and latest checkpoints), stop early when patience runs out, and hand on the
best evaluation's params (or the last step's, with `restore_best: false`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sasrecllm_jax import sharding
from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.config import Config, PhaseConfig
from sasrecllm_jax.data import packing
from sasrecllm_jax.data.pipeline import BatchIterator, Padding, SplitData, make_batch
from sasrecllm_jax.errors import ConfigError, TrainingError, check_stop
from sasrecllm_jax.evaluate import CompileTimer, Scorer, collab_inputs, evaluate
from sasrecllm_jax.run_folder.metrics_log import Reporter
from sasrecllm_jax.train import fusion_start, groups, item_text_start
from sasrecllm_jax.train import checkpoint as checkpoint_lib
from sasrecllm_jax.train.checkpoint import PhaseCheckpoints
from sasrecllm_jax.train.early_stopping import EarlyStopping
from sasrecllm_jax.train.optim import make_optimizer
from sasrecllm_jax.train.progress import PhaseProgress, row_bar
from sasrecllm_jax.train.step import TrainState, make_train_step
from sasrecllm_jax.trees import merge


@dataclasses.dataclass
class PhaseResult:
    params: dict                       # every param after the phase: the handed-on ones and the untouched rest
    best_step: int                     # the best evaluation's step (-1: never evaluated)
    handed_on_valid: dict | None       # valid metrics of the handed-on params (None: not evaluated there)
    handed_on_scores: np.ndarray | None  # their per-row valid scores, when made in this process
    timing: dict                       # the phase's time, over every process that ran part of it
    earlier_s: float = 0.0             # the part of timing's wall_s that earlier processes spent


@dataclasses.dataclass
class PhasePlan:
    """What a phase's loop reads, fixed before its first step."""
    phase: PhaseConfig
    train_data: SplitData
    eval_data: SplitData
    batch_size: int
    total: int                         # steps
    eval_every: int
    patience: int
    with_prompts: bool
    train_step: Callable               # train_step(state, batch) -> (state, metrics), pure
    scorer: Scorer
    padding: Padding                   # how its train batches' prompts are padded (fixed: few shapes)
    mesh: object = None
    packs: packing.Packs | None = None  # data.pack_train: the shared-prefix packs its batches hold
    slots: int = 0                     # rows per pack at most: a packed batch's [batch_size, slots]

    def batch(self, idx: np.ndarray) -> tuple[dict, int]:
        """(the train batch of iterator batch idx, its rows): idx are rows, or packs of rows with packs."""
        if self.packs is None:
            return make_batch(self.train_data, idx, self.batch_size, self.padding, self.with_prompts), len(idx)
        batch = packing.make_pack_batch(self.train_data, self.packs, idx, self.batch_size, self.padding,
                                        max_slots=self.slots, labels=True)
        return batch, sum(len(self.packs.rows[k]) for k in idx)


def phase_salt(name: str) -> int:
    """A phase's randomness (dropout, batch order) comes from (train.seed, its name), not its position: the
    same phase gives the same result in every method that runs it (TALLRec's LoRA phase is dual-stage's
    stage 1), which is what lets the phase cache reuse it."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


def batch_order_seed(train_seed: int, phase_name: str) -> int:
    """The seed of a phase's BatchIterator: its train batches' order (bench/padding.py rebuilds them)."""
    return train_seed * 2**31 + phase_salt(phase_name)


def state_tree(state: TrainState) -> dict:
    """What the latest checkpoint stores of a train state (the frozen params come from their sources)."""
    return {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step, "key": state.key}


class PhaseRunner:
    """Runs the phases of one run folder; keeps one compiled scorer per prompt kind across them."""

    def __init__(self, cfg: Config, assembly: Assembly, workdir: Path, resume: bool, reporter: Reporter,
                 on_step: Callable | None = None):
        self.cfg, self.assembly, self.workdir, self.resume = cfg, assembly, workdir, resume
        self.reporter, self.on_step = reporter, on_step
        self._scorers: dict[str, Scorer] = {}
        self.progress: PhaseProgress | None = None  # the running phase's, closed however the run ends

    def scorer(self, prompt: str) -> Scorer:
        """The compiled scorer of a prompt kind; before each batch it lets a pending interrupt stop the run."""
        if prompt not in self._scorers:
            self._scorers[prompt] = StoppableScorer(Scorer(self.assembly.model(prompt, deterministic=True),
                                                           notify=self._say))
        return self._scorers[prompt]

    def _say(self, text: str) -> None:
        """A line through the running phase's bar (compile notices of the scorers, shared across phases)."""
        if self.progress is not None:
            self.progress.say(text)
        else:
            print(text)

    def run(self, phase: PhaseConfig, params: dict, fit_fusion: bool = False, fit_text: bool = False) -> PhaseResult:
        """Train one phase from params; with `fit_text` (model.mapper.new_items: text, the first hybrid phase)
        its start fits the items' title vectors first; with `fit_fusion` (model.mapper.fusion_start:
        late_fusion, the first phase that trains the mapper) a fresh start then fits the residual fusion's numbers."""
        t = self.cfg.train
        used = groups.prompt_modules(phase.prompt, self.cfg.model.encoder)
        rest = {k: v for k, v in params.items() if k not in used}
        trainable, frozen = groups.split(groups.select(params, used), phase.trainable)
        if not jax.tree_util.tree_leaves(trainable):
            raise ConfigError(f"phase {phase.name}: nothing to train (trainable {list(phase.trainable)}, "
                              f"train.freeze {list(t.freeze)})")
        plan, it, tx = self._plan(phase, trainable)
        key = jax.random.key_data(jax.random.fold_in(jax.random.key(t.seed), phase_salt(phase.name)))
        state = TrainState(jnp.int32(0), trainable, frozen, tx.init(trainable), key)
        stopping = EarlyStopping(plan.patience)
        ckpt = PhaseCheckpoints(self.workdir, phase.name)
        try:
            state, stopping, earlier = self._resume(phase, ckpt, state, it, stopping)
            layout = sharding.param_shardings(state, plan.mesh, t.sharding) if plan.mesh is not None else None

            def place(s):  # without a mesh, commit every leaf: a state mixing an earlier phase's (committed)
                # outputs with new (uncommitted) leaves would compile the step twice
                return sharding.place(s, layout) if layout is not None else jax.device_put(s, jax.devices()[0])
            state = place(state)
            if fit_text:  # fresh or resumed: the table is counted, never checkpointed with the phase's state
                state = place(state.replace(frozen=self.fit_text(phase, merge(state.trainable, state.frozen),
                                                                 state.frozen, plan.eval_data)))
            if fit_fusion and earlier is None and int(state.step) == 0:  # on the placed (sharded) params
                state = place(state.replace(trainable=self._fit_fusion(
                    phase, plan, merge(state.trainable, state.frozen), state.trainable)))
            self.progress = PhaseProgress(phase.name, plan.total, int(state.step))
            loop = PhaseLoop(self, plan, sharding.jit_step(plan.train_step, layout), it, state, stopping, ckpt, earlier)
            loop.run()
            self.progress.close()
            final = merge(loop.state.trainable, loop.state.frozen)
            if phase.restore_best:
                final = self._best(phase, ckpt, stopping, final)
        finally:
            ckpt.close()
        return PhaseResult(params={**rest, **final}, best_step=stopping.best_step,
                           handed_on_valid=stopping.best_metrics if phase.restore_best else None,
                           handed_on_scores=loop.best_scores if phase.restore_best else None,  # None after a resume
                           timing=loop.timing, earlier_s=float((earlier or {}).get("wall_s", 0.0)))

    def fit_text(self, phase: PhaseConfig, params: dict, tree: dict, eval_data: SplitData | None = None) -> dict:
        """tree (params, or the phase's frozen part of them) with the mapper's item_text table fitted from the
        encoder in params (train/item_text_start.py): when the phase starts, fresh or resumed, and when a
        resumed run passes it finished (the table is counted: no checkpoint of the phase holds it)."""
        if eval_data is None:
            eval_data = self.assembly.split(self.cfg.data.eval_split, phase.prompt, self.assembly.row_limit("eval"))
        table, found = item_text_start.fit_table(self.scorer(phase.prompt).model, params, eval_data,
                                                 self.assembly.dataset.titles(), self.assembly.backbone.tokenizer)
        print(f"[{phase.name}] item vectors regressed from titles on {found['items']:,} items with train rows "
              f"(ridge {found['ridge']:g}, picked on {self.cfg.data.eval_split}: AUC {found['valid_auc']:.4f} over "
              f"{found['rows']:,} rows with every item shown by its title); {found['new_items']:,} items without "
              f"train rows show theirs")
        return item_text_start.with_table(tree, table)

    def _fit_fusion(self, phase: PhaseConfig, plan: PhasePlan, params: dict, trainable: dict) -> dict:
        """trainable with the residual fusion's llm_gate (and unknown_score) fitted to the late fusion of the
        hybrid's two terms on the phase's validation rows (train/fusion_start.py)."""
        model = plan.scorer.model  # the phase's own scorer's (deterministic) hybrid
        scorer = StoppableScorer(Scorer(fusion_start.llm_term_model(model), notify=print))
        split = self.cfg.data.eval_split
        with row_bar(len(plan.eval_data), f"{phase.name}: fit the fusion's start on {split}", leave=False) as bar:
            values, found = fusion_start.fit_start(self.cfg, model, params, plan.eval_data, scorer, bar)
        print(f"[{phase.name}] residual fusion started at the late fusion of its ID score and its LLM's log-odds "
              f"on {split} ({found['rows']:,} rows; {'one-weight fit ' if found['split'] else ''}weight "
              f"{found['weight']:.2f}, AUC {found['valid_auc']:.4f}): "
              + ", ".join(f"model.mapper.{k} {v:.4g}" for k, v in values.items())
              + (f" ({found['new_rows']:,} rows {'abstain' if found['kind'] == 'learned' else 'offset'})"
                 if found["new_rows"] else "")
              + ("; rows of known items: the ID score alone" if found["held"] else "")
              + ("; that score is at the end of the fit's grid (5 deviations of the other rows' ID scores), "
                 "so it may be clipped: training moves it on" if found["at_edge"] else ""))
        return fusion_start.with_values(trainable, values)

    def _resume(self, phase: PhaseConfig, ckpt: PhaseCheckpoints, state: TrainState, it: BatchIterator,
                stopping: EarlyStopping) -> tuple[TrainState, EarlyStopping, dict | None]:
        """A resumed run continues the phase from its newest latest checkpoint that verifies (or starts it
        again), first forgetting what it will do again: the checkpoints and metrics records after that step.
        Returns the state, the early-stopping record and the time spent before (None: starting afresh)."""
        if not self.resume:
            return state, stopping, None
        found = ckpt.restore_latest({"state": state_tree(state)})
        step = found[2] if found else -1
        for gone in ckpt.discard_after(step):
            print(f"[{phase.name}] removed {gone}: made after the checkpoint this run continues from")
        self.reporter.forget(phase.name, step)
        if found is None:
            return state, stopping, None
        restored, meta, step = found
        state = state.replace(**restored["state"])
        it.restore(meta["iterator"])
        stopping = EarlyStopping.from_state(meta["book"], stopping.patience)
        print(f"[{phase.name}] resumed at step {step} from {ckpt.latest.where(step)} (verified)")
        return state, stopping, meta.get("timing")

    def _best(self, phase: PhaseConfig, ckpt: PhaseCheckpoints, stopping: EarlyStopping, final: dict) -> dict:
        """The params the phase hands on: its trained groups at the best evaluation."""
        if stopping.best_step < 0:
            raise TrainingError(f"phase {phase.name}: none of its {stopping.evals} evaluations had finite metrics "
                                f"(AUC and log-loss), so it has no params to hand on; lower the learning rates "
                                f"(phase lr) or enable train.clip_norm")
        like = groups.group_trees(groups.split(final, phase.trainable)[0])
        return groups.replace_groups(final, ckpt.restore_best(like, stopping.best_step))

    def _plan(self, phase: PhaseConfig, trainable: dict) -> tuple[PhasePlan, BatchIterator, object]:
        t, a = self.cfg.train, self.assembly
        with_prompts = phase.prompt != "none"
        train_data = a.split("train", phase.prompt, a.row_limit("train") if with_prompts else 0, phase.rows)
        cap = a.row_limit("eval")
        eval_data = a.split(self.cfg.data.eval_split, phase.prompt, cap)
        if len(eval_data) and len(np.unique(eval_data.label)) < 2:
            where = (f"phase {phase.name}: every one of the {len(eval_data):,} {self.cfg.data.eval_split} rows it "
                     f"evaluates on is labelled {int(eval_data.label[0])}, so valid AUC cannot pick its checkpoint")
            whole = a.dataset.splits[self.cfg.data.eval_split]["label"]
            if cap and whole.nunique() > 1:  # the split has both labels: the cap's rows do not
                raise TrainingError(f"{where}; the split's {len(whole):,} rows hold both labels, and a row cap "
                                    f"chose these (data.max_rows / data.cpu_max_rows eval: {cap:,}): raise or drop it")
            raise TrainingError(f"{where}; check the dataset's labels (a 0/1 rating column needs data_tools' "
                                f"--threshold 1) or set data.eval_split")
        bs = t.batch_size if with_prompts else t.encoder_batch_size
        packs = None
        if with_prompts and self.cfg.data.pack_train:
            packs = packing.pack_split(train_data, self.cfg.data.pad_multiple)
        it = BatchIterator(train_data.lengths() if packs is None else packs.lengths, bs,
                           seed=batch_order_seed(t.seed, phase.name))
        total = math.ceil(phase.epochs * it.batches_per_epoch) if phase.epochs > 0 else phase.max_steps
        total = min(total, phase.max_steps) if phase.max_steps > 0 else total
        tx, schedules = make_optimizer(phase, trainable, total, t)
        rows = f"{len(train_data):,} {'' if phase.rows == 'all' else phase.rows + ' '}rows"
        held = f"{bs} rows ({rows}" if packs is None else \
            f"{bs} packs ({rows} in {len(packs.rows):,} shared-prefix packs, {len(train_data) / len(packs.rows):.2f} per pack"
        print(f"[{phase.name}] {phase.prompt} prompts, training {list(phase.trainable)}: "
              f"{groups.count(trainable):,} parameters, {total} steps of {held}, {it.batches_per_epoch} steps/epoch)")
        train_model = a.model(phase.prompt, deterministic=False, frozen=groups.frozen_groups(phase.trainable))
        apply_fn = lambda p, b, rngs: train_model.apply({"params": p}, b, rngs=rngs)
        mesh = None
        if t.sharding != "none":
            mesh = sharding.make_mesh(t.sharding)
            sharding.check_batch(bs, mesh, "train.batch_size" if with_prompts else "train.encoder_batch_size")
        plan = PhasePlan(phase, train_data, eval_data, bs, total,
                         eval_every=phase.eval_every or (t.eval_every if with_prompts else 0) or it.batches_per_epoch,
                         patience=phase.patience or t.patience, with_prompts=with_prompts,
                         train_step=make_train_step(apply_fn, tx, schedules),
                         scorer=self.scorer(phase.prompt),
                         padding=Padding.for_training(train_data, self.cfg.data, None if packs is None else packs.lengths),
                         mesh=mesh, packs=packs, slots=0 if packs is None else max(map(len, packs.rows)))
        return plan, it, tx


class PhaseLoop:
    """The steps of one phase. The device runs step n while the host builds batch n+1: nothing waits on
    the device except the log steps (every train.log_every), the evaluations and the checkpoints."""

    def __init__(self, runner: PhaseRunner, plan: PhasePlan, step_fn: Callable, it: BatchIterator, state: TrainState,
                 stopping: EarlyStopping, ckpt: PhaseCheckpoints, earlier: dict | None = None):
        self.runner, self.plan, self.it, self.state = runner, plan, it, state
        self.step_fn = step_fn         # plan.train_step jitted for the state's layout
        self.stopping, self.ckpt = stopping, ckpt
        self.earlier = earlier or {}   # the time earlier processes spent on this phase (the latest checkpoint's)
        self.start = time.perf_counter()
        self.cfg = runner.cfg
        self.progress = runner.progress
        self.best_scores = None        # the per-row valid scores of the best evaluation made in this process
        # a new batch shape compiles: its first step is timed apart, and a line says so
        self.compile_timer = CompileTimer("train step", notify=self.progress.say)
        self.eval_s = 0.0
        self.steps = 0                 # steps taken in this process
        # prompt tokens in this process's steps: real ones, every slot computed (padding included), and the
        # real ones of the steps that compiled nothing (what the steady rate counts)
        self.tokens = {"real_tokens": 0, "token_slots": 0, "steady_real_tokens": 0, "rows": 0, "steady_rows": 0}
        self.timing: dict = {}

    def evaluate(self, step: int) -> bool:
        """Evaluate, keep the best and latest checkpoints; True when patience is used up. Params that are
        not finite stop the phase; an evaluation whose metrics are not finite is never the best."""
        t0 = time.perf_counter()
        name = self.plan.phase.name
        bad = checkpoint_lib.nonfinite_leaves(self.state.trainable)
        if bad:
            nonfinite(self.plan.phase, step, f"the parameter {bad[0]} holds NaN or infinite values", self.ckpt)
        current = merge(self.state.trainable, self.state.frozen)
        bar = self.progress.evaluation_bar(len(self.plan.eval_data), self.cfg.data.eval_split)
        try:
            result, scores = evaluate(self.plan.scorer, current, self.plan.eval_data, self.cfg,
                                      self.plan.phase.prompt, progress=bar)
        finally:
            bar.close()
        self.runner.reporter.log("eval", name, step, result)
        if self.stopping.update(step, result["all"]["auc"], result):
            self.best_scores = scores
            self.ckpt.save_best(step, groups.group_trees(current), self.stopping.best_auc)
        elif not self.stopping.finite(result):
            self.progress.say(f"step {step}: the evaluation's metrics are not finite (AUC {result['all']['auc']}, "
                              f"log-loss {result['all']['logloss']}): never the best")
        self.eval_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.ckpt.save_latest(step, state_tree(self.state), self.it.state(), self.stopping.state(),
                              self._timing(t0 - self.start, step))
        self.eval_s += time.perf_counter() - t0
        auc = result["all"]["auc"] if result["all"]["auc"] is not None else 0.0
        self.progress.evaluation(step, auc, self.stopping.best_auc, self.stopping.best_step)
        if self.stopping.exhausted:
            self.progress.say(f"early stop: {self.stopping.patience} evaluations without improvement")
            return True
        return False

    def check_finite(self, step: int, losses: list) -> None:
        """Stop at the first non-finite loss among the steps since the last check, naming that step."""
        recent = np.asarray(jnp.stack(losses))
        bad = np.flatnonzero(~np.isfinite(recent))
        if bad.size:
            nonfinite(self.plan.phase, step - len(recent) + 1 + int(bad[0]), f"the loss is {float(recent[bad[0]])}",
                      self.ckpt)

    def run(self) -> None:
        p, t = self.plan, self.cfg.train
        step = int(self.state.step)
        self.start = time.perf_counter()
        if self.stopping.exhausted:  # resumed after its early stop: nothing left to do
            step = p.total
        if t.eval_at_start and p.with_prompts and step == 0:
            self.evaluate(0)  # where the phase starts (step 0 can be its best: then it hands on its input)
        tick, rows_since, tokens_since, slots_since, losses = time.perf_counter(), 0, 0, 0, []
        while step < p.total:
            check_stop()
            idx = next(self.it)
            batch, rows = p.batch(idx)
            batch = collab_inputs(batch, t.collab, seed=step)
            batch.pop("row", None)
            real, slots = token_counts(batch)
            if p.mesh is not None:
                batch = sharding.place_batch(batch, p.mesh)
            shapes = len(self.compile_timer.shapes)
            self.state, m = self.compile_timer(self.step_fn, self.state, batch)
            step += 1
            self.steps += 1
            losses.append(m["loss"])
            rows_since, tokens_since, slots_since = rows_since + rows, tokens_since + real, slots_since + slots
            self.tokens["real_tokens"] += real
            self.tokens["token_slots"] += slots
            self.tokens["rows"] += rows
            if len(self.compile_timer.shapes) == shapes:
                self.tokens["steady_real_tokens"] += real
                self.tokens["steady_rows"] += rows
            is_eval = step % p.eval_every == 0 or step == p.total
            if step % t.log_every == 0 or is_eval:
                self.check_finite(step, losses)
                losses = []
                if step % t.log_every == 0 or step == p.total:
                    now = time.perf_counter()
                    values = {k: float(v) for k, v in m.items()}
                    values["samples_per_s"] = rows_since / max(now - tick, 1e-9)
                    if slots_since:  # prompts: the rate of real tokens, and the share of padding computed
                        values["tokens_per_s"] = tokens_since / max(now - tick, 1e-9)
                        values["padding_share"] = 1.0 - tokens_since / slots_since
                    tick, rows_since, tokens_since, slots_since = now, 0, 0, 0
                    self.runner.reporter.log("train", p.phase.name, step, values)
                    self.progress.train_record(values)
            self.progress.step()
            if self.runner.on_step is not None:
                self.runner.on_step(p.phase.name, step)
            if is_eval:
                stop = self.evaluate(step)
                # the rates count training only: the next record's, from the steps after this evaluation
                tick, rows_since, tokens_since, slots_since = time.perf_counter(), 0, 0, 0
                if stop:
                    break
        jax.block_until_ready(self.state.step)
        self.timing = self._timing(time.perf_counter() - self.start, int(self.state.step))
        self.runner.reporter.log("timing", p.phase.name, int(self.state.step), self.timing)

    def _timing(self, wall: float, step: int) -> dict:
        """The phase's time so far, this process's added to what earlier processes spent (a resumed phase
        counts every process that ran part of it; time after the last checkpoint of a killed one is lost)."""
        e = self.earlier
        steps = self.steps + e.get("steps", 0)
        shapes = len(self.compile_timer.shapes) + e.get("batch_shapes", 0)
        wall += e.get("wall_s", 0.0)
        compile_s = self.compile_timer.seconds + e.get("compile_s", 0.0)
        eval_s = self.eval_s + e.get("eval_and_checkpoint_s", 0.0)
        steady_steps = steps - shapes
        steady_s = wall - compile_s - eval_s
        tokens = {k: v + e.get(k, 0) for k, v in self.tokens.items()}
        return {
            "steps": steps, "wall_s": round(wall, 2), "batch_shapes": shapes,
            "compile_s": round(compile_s, 2),  # first step at each shape, compilation included
            "eval_and_checkpoint_s": round(eval_s, 2),
            # the step whose params the phase hands on (0 with eval_at_start: no step beat its start on valid;
            # a phase with restore_best off hands on its last step)
            "best_step": self.stopping.best_step if self.plan.phase.restore_best else step,
            # the other steps: what an epoch costs once every shape is compiled
            "steady_s_per_step": round(steady_s / steady_steps, 5) if steady_steps > 0 else None,
            # prompt phases: the rows trained, real (non-padding) tokens and rows per second of those steps,
            # and padding's share of all the token slots the steps computed
            **({**tokens, "steady_real_tokens_per_s": round(tokens["steady_real_tokens"] / steady_s, 1)
                if steady_steps > 0 and steady_s > 0 else None,
                "steady_rows_per_s": round(tokens["steady_rows"] / steady_s, 2)
                if steady_steps > 0 and steady_s > 0 else None,
                "padding_share": round(1.0 - tokens["real_tokens"] / tokens["token_slots"], 4)}
               if tokens["token_slots"] else {}),
            **({"processes": e.get("processes", 1) + 1} if e else {})}


def token_counts(batch: dict) -> tuple[int, int]:
    """(real tokens, token slots) of a batch of prompts: the tokens of its real rows ([B, T] mask, 1 = token;
    filler rows, weight 0, repeat a real one) or real packs (segment >= 0; a pack's weights [B, slots]) and all
    B x T; (0, 0) without prompts."""
    if "segment" in batch:
        real = np.asarray(batch["weight"]).max(axis=1) > 0
        return int(np.sum((np.asarray(batch["segment"]) >= 0) & real[:, None])), int(np.size(batch["segment"]))
    mask = batch.get("mask")
    if mask is None:
        return 0, 0
    return int(np.sum(np.asarray(mask) * (np.asarray(batch["weight"])[:, None] > 0))), int(np.size(mask))


class StoppableScorer:
    """A Scorer that checks for a pending interrupt (errors.check_stop) before it dispatches each batch, so
    that Ctrl-C stops an evaluation, a phase's or the final one, between two batches."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def __getattr__(self, name):
        return getattr(self.scorer, name)

    def dispatch(self, params, batch) -> jax.Array:
        check_stop()
        return self.scorer.dispatch(params, batch)


def nonfinite(phase: PhaseConfig, step: int, what: str, ckpt: PhaseCheckpoints):
    """Stop the phase: `what` went non-finite at `step`. The message names the newest latest checkpoint that
    verifies (checked now) as the one to continue from."""
    for good in reversed(ckpt.latest.steps()):
        if ckpt.latest.check(good) is None:
            raise TrainingError(
                f"phase {phase.name}, step {step}: {what}. Training stopped; the last good checkpoint is "
                f"{ckpt.latest.where(good)} (step {good}) and is intact (verified just now); lower the learning "
                f"rates (phase lr) or enable train.clip_norm, then start again (--restart)")
    raise TrainingError(
        f"phase {phase.name}, step {step}: {what}. Training stopped before any checkpoint that verifies; "
        f"lower the learning rates (phase lr) or enable train.clip_norm")
