"""train_and_evaluate(cfg, workdir): the phases of a method in order, then one test evaluation.

Per phase: split the params into what trains and what is frozen, build the optimizer from the
labels, run jitted steps over length-bucketed batches, evaluate on the validation split every
`eval_every` steps, keep the best and latest checkpoints, stop early after `patience` evaluations
without improvement, and hand the best params to the next phase.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm.auto import tqdm

from sasrecllm_jax.components import Components, HostCache, prompt_groups
from sasrecllm_jax.config import Config, ConfigError, PhaseConfig, load_yaml, to_dict
from sasrecllm_jax.data.pipeline import BatchIterator, make_batch
from sasrecllm_jax.evaluate import SCORES_FILE, CompileTimer, Scorer, collab_inputs, evaluate, save_scores
from sasrecllm_jax.report import Reporter, code_version, read_metrics, write_whole
from sasrecllm_jax import sharding
from sasrecllm_jax.train import partition
from sasrecllm_jax.train.checkpoint import Store
from sasrecllm_jax.train.optim import make_optimizer
from sasrecllm_jax.train.phase_cache import PhaseCache, enabled_reason, phase_key
from sasrecllm_jax.train.step import TrainState, make_train_step
from sasrecllm_jax.train.strategies import resolve_phases, scoring_prompt


class TrainingError(RuntimeError):
    pass


def group_trees(params: dict) -> dict[str, dict]:
    """{group: params of that group} for every group present except the frozen LLM base."""
    return {g: partition.split(params, [g])[0] for g in sorted(partition.present_groups(params) - {"frozen"})}


def select(params: dict, modules: set) -> dict:
    """The top-level modules of `params` a prompt kind uses (components.prompt_groups): a phase hands
    the others on untouched."""
    return {k: v for k, v in params.items() if k in modules}


def replace_groups(params: dict, groups: dict[str, dict]) -> dict:
    _, rest = partition.split(params, list(groups))
    for tree in groups.values():
        rest = partition.merge(rest, tree)
    return rest


def phase_salt(name: str) -> int:
    """A phase's randomness (dropout, batch order) comes from (train.seed, its name), not its position: the
    same phase gives the same result in every method that runs it (TALLRec's LoRA phase is dual-stage's
    stage 1), which is what lets the phase cache reuse it."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _state_tree(state: TrainState) -> dict:
    return {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step, "key": state.key}


class Run:
    def __init__(self, cfg: Config, workdir: Path, resume: bool, on_step: Callable | None = None,
                 config_path: str = "config", on_phase: Callable | None = None, host_cache: HostCache | None = None):
        self.cfg = cfg
        code_version()  # read the checkout now, while it is the code this process loaded
        self.host_cache = host_cache  # weights and encoded splits shared with other runs of this process
        self.workdir = Path(workdir).absolute()
        self.resume = resume
        self.on_step = on_step      # (phase name, step): observers, tests
        self.on_phase = on_phase    # (phase, params before, params after), host copies
        self.phases = resolve_phases(cfg, config_path)
        self.state_path = self.workdir / "run_state.json"
        self.handed_on_valid = None
        self.handed_on_scores = None  # per-row scores behind handed_on_valid, when this process made them
        self.timing: dict[str, dict] = {}  # per phase, and the final evaluation per split
        self._scorers: dict[str, Scorer] = {}  # one compiled evaluation function per prompt kind
        self.reused: dict[str, dict] = {}  # phases taken from the phase cache: {name: their meta}
        self._bar = None  # the running phase's progress bar, closed however the run ends
        why_not = enabled_reason(cfg)
        self.cache = PhaseCache(cfg.train.phase_cache) if why_not is None else None
        if cfg.train.phase_cache and why_not:
            print(f"phase cache off: {why_not}")

    def scorer(self, comp: Components, prompt: str) -> Scorer:
        if prompt not in self._scorers:
            self._scorers[prompt] = Scorer(comp.model(prompt, deterministic=True))
        return self._scorers[prompt]

    # ------------------------------------------------------------------ bookkeeping
    def _prepare_workdir(self) -> dict:
        saved_cfg = self.workdir / "config.yaml"
        if self.state_path.exists() and not self.resume:
            raise TrainingError(f"{self.workdir} already holds a run; pass --resume to continue it, or choose "
                                f"another --workdir")
        if self.resume and saved_cfg.exists():
            before = load_yaml(saved_cfg.read_text())
            now = to_dict(self.cfg)
            if before != json.loads(json.dumps(now)):
                diff = [k for k in now if before.get(k) != json.loads(json.dumps(now[k]))]
                raise TrainingError(f"--resume with a different config (sections {diff} differ from "
                                    f"{saved_cfg}); resume with the same config or start a new --workdir")
        self.workdir.mkdir(parents=True, exist_ok=True)
        saved_cfg.write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(self.cfg))), sort_keys=False))
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {"completed": []}

    def _restore(self, params: dict, phase: PhaseConfig) -> dict:
        for group, source in phase.restore.items():
            if group not in partition.present_groups(params):
                raise ConfigError(f"phase {phase.name}: restore {group!r}, but this model has no such group")
            store = (Store(self.workdir / "checkpoints" / source[6:] / "best") if source.startswith("phase:")
                     else Store(Path(source).absolute() / "final"))
            like = {group: partition.split(params, [group])[0]}
            restored, _ = store.restore(like)
            params = replace_groups(params, restored)
            print(f"[{phase.name}] {group} restored from {source}")
        return params

    @staticmethod
    def _nonfinite(phase: PhaseConfig, step: int, loss: float, latest: Store):
        good = latest.latest_step()
        raise TrainingError(
            f"phase {phase.name}, step {step}: the loss is {loss}. Training stopped; the last good checkpoint "
            f"is {latest.directory}/{good} (step {good}) and is intact" if good is not None else
            f"phase {phase.name}, step {step}: the loss is {loss}. Training stopped before any checkpoint; "
            f"lower the learning rates (phase lr) or enable train.clip_norm")

    # ------------------------------------------------------------------ one phase
    def run_phase(self, comp: Components, phase: PhaseConfig, params: dict, reporter: Reporter) -> dict:
        cfg, t, d = self.cfg, self.cfg.train, self.cfg.data
        used = prompt_groups(phase.prompt, cfg.model.encoder)
        phase_params = select(params, used)
        rest = {k: v for k, v in params.items() if k not in used}
        trainable, frozen = partition.split(phase_params, phase.trainable)
        with_prompts = phase.prompt != "none"
        if not jax.tree_util.tree_leaves(trainable):
            raise ConfigError(f"phase {phase.name}: nothing to train (trainable {list(phase.trainable)}, "
                              f"train.freeze {list(t.freeze)})")
        train_data = comp.split("train", phase.prompt, comp.row_limit("train") if with_prompts else 0)
        eval_data = comp.split(d.eval_split, phase.prompt, comp.row_limit("eval"))
        bs = t.batch_size if with_prompts else t.encoder_batch_size
        salt = phase_salt(phase.name)
        it = BatchIterator(train_data.lengths(), bs, seed=t.seed * 2**31 + salt)
        total = math.ceil(phase.epochs * it.batches_per_epoch) if phase.epochs > 0 else phase.max_steps
        total = min(total, phase.max_steps) if phase.max_steps > 0 else total
        tx, schedules = make_optimizer(phase, trainable, total, t)
        n_train = partition.count(trainable)
        print(f"[{phase.name}] {phase.prompt} prompts, training {list(phase.trainable)}: {n_train:,} parameters, "
              f"{total} steps of {bs} rows ({len(train_data):,} rows, {it.batches_per_epoch} steps/epoch)")

        frozen_groups = tuple(g for g in ("sasrec", "mf", "mapper", "lora") if g not in phase.trainable)
        train_model = comp.model(phase.prompt, deterministic=False, frozen=frozen_groups)
        apply_fn = lambda p, b, rngs: train_model.apply({"params": p}, b, rngs=rngs)
        step_fn = jax.jit(make_train_step(apply_fn, tx, schedules), donate_argnums=0)
        key = jax.random.key_data(jax.random.fold_in(jax.random.key(t.seed), salt))
        state = TrainState(jnp.int32(0), trainable, frozen, tx.init(trainable), key)
        mesh = None
        if t.sharding != "none":
            mesh = sharding.make_mesh(t.sharding)
            sharding.check_batch(bs, mesh, "train.batch_size" if with_prompts else "train.encoder_batch_size")
        book = {"best_auc": -1.0, "best_step": -1, "bad_evals": 0, "evals": 0}
        ck = self.workdir / "checkpoints" / phase.name
        latest, best = Store(ck / "latest"), Store(ck / "best")
        if self.resume and latest.latest_step() is not None:
            restored, meta = latest.restore({"state": _state_tree(state)})
            state = state.replace(**restored["state"])
            it.restore(meta["iterator"])
            book = meta["book"]
            print(f"[{phase.name}] resumed at step {int(state.step)} from {latest.directory}")
        if mesh is not None:
            state = sharding.place(state, sharding.param_shardings(state, mesh, t.sharding))

        scorer = self.scorer(comp, phase.prompt)
        eval_every = phase.eval_every or (t.eval_every if with_prompts else 0) or it.batches_per_epoch
        patience = phase.patience or t.patience
        step = int(state.step)
        bar = self._bar = tqdm(total=total, initial=step, desc=phase.name, unit="step", dynamic_ncols=True)
        # The device runs step n while the host builds batch n+1: nothing waits on the device except the
        # log steps (every train.log_every), the evaluations and the checkpoints.
        tick, rows_since, losses = time.perf_counter(), 0, []
        clock = {"eval_s": 0.0, "steps": 0}
        compile_timer = CompileTimer()  # a new batch shape compiles: its first step is timed apart
        best_scores = None  # the per-row valid scores of the best evaluation made in this process

        def evaluate_now(step: int) -> bool:
            """Evaluate, keep the best and latest checkpoints; True when patience is used up."""
            nonlocal best_scores
            t_eval = time.perf_counter()
            current = partition.merge(state.trainable, state.frozen)
            result, scores = evaluate(scorer, current, eval_data, cfg, phase.prompt)
            auc = result["all"]["auc"] if result["all"]["auc"] is not None else 0.0
            book["evals"] += 1
            reporter.log("eval", phase.name, step, result)
            if auc > book["best_auc"]:
                book.update(best_auc=auc, best_step=step, bad_evals=0, best_metrics=result)
                best_scores = scores
                best.save(step, group_trees(current), {"auc": auc, "phase": phase.name})
            else:
                book["bad_evals"] += 1
            latest.save(step, {"state": _state_tree(state)}, {"iterator": it.state(), "book": book})
            bar.write(f"[{phase.name}] step {step}: valid AUC {auc:.4f} (best {book['best_auc']:.4f} at "
                      f"step {book['best_step']})")
            clock["eval_s"] += time.perf_counter() - t_eval
            if book["bad_evals"] >= patience:
                bar.write(f"[{phase.name}] early stop: {patience} evaluations without improvement")
                return True
            return False

        phase_start = time.perf_counter()
        if t.eval_at_start and with_prompts and step == 0:
            evaluate_now(0)  # where the phase starts (step 0 can be its best: then it hands on its input)
        tick = time.perf_counter()
        while step < total:
            idx = next(it)
            batch = collab_inputs(make_batch(train_data, idx, bs, d.pad_multiple, with_prompts), t.collab, seed=step)
            batch.pop("row")
            if mesh is not None:
                batch = sharding.place_batch(batch, mesh)
            state, m = compile_timer(step_fn, state, batch)
            step += 1
            clock["steps"] += 1
            losses.append(m["loss"])
            rows_since += len(idx)
            is_eval = step % eval_every == 0 or step == total
            if step % t.log_every == 0 or is_eval:
                recent = np.asarray(jnp.stack(losses))
                bad = np.flatnonzero(~np.isfinite(recent))
                if bad.size:
                    self._nonfinite(phase, step - len(recent) + 1 + int(bad[0]), float(recent[bad[0]]), latest)
                losses = []
                if step % t.log_every == 0 or step == total:
                    now = time.perf_counter()
                    values = {k: float(v) for k, v in m.items()}
                    values["samples_per_s"] = rows_since / max(now - tick, 1e-9)
                    tick, rows_since = now, 0
                    reporter.log("train", phase.name, step, values)
                    lr = max(v for k, v in values.items() if k.startswith("lr/"))
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{values['samples_per_s']:.0f}")
            bar.update(1)
            if self.on_step is not None:
                self.on_step(phase.name, step)
            if is_eval:
                stop = evaluate_now(step)
                tick = time.perf_counter()  # samples/s counts training only
                if stop:
                    break
        jax.block_until_ready(state.step)
        wall = time.perf_counter() - phase_start
        steady_steps = clock["steps"] - len(compile_timer.shapes)
        self.timing[phase.name] = {
            "steps": clock["steps"], "wall_s": round(wall, 2), "batch_shapes": len(compile_timer.shapes),
            "compile_s": round(compile_timer.seconds, 2),  # first step at each batch shape, compilation included
            "eval_and_checkpoint_s": round(clock["eval_s"], 2),
            # the step whose params the phase hands on (0 with eval_at_start: no step beat its start on valid;
            # a phase with restore_best off hands on its last step)
            "best_step": book["best_step"] if phase.restore_best else step,
            # the other steps: what an epoch costs once every shape is compiled
            "steady_s_per_step": round((wall - compile_timer.seconds - clock["eval_s"]) / steady_steps, 5)
            if steady_steps > 0 else None}
        reporter.log("timing", phase.name, step, self.timing[phase.name])
        bar.close()
        final = partition.merge(state.trainable, state.frozen)
        # the validation metrics of the params this phase hands on (None: not evaluated at that point)
        self.handed_on_valid = book.get("best_metrics") if phase.restore_best else None
        self.handed_on_scores = best_scores if phase.restore_best else None  # None after a resume
        self.best_step = book["best_step"]
        if phase.restore_best and best.latest_step() is not None:
            restored, _ = best.restore(group_trees(final))
            final = replace_groups(final, restored)
        return {**rest, **final}

    # ------------------------------------------------------------------ the phase cache
    def store_phase(self, phase: PhaseConfig, key: str, used_params: dict) -> None:
        records = [r for r in read_metrics(self.workdir) if r.get("phase") == phase.name
                   and r.get("kind") in ("train", "eval", "timing")]
        self.cache.put(key, group_trees(used_params), self.best_step, {
            "phase": phase.name, "run": str(self.workdir), "best_step": self.best_step,
            "handed_on_valid": self.handed_on_valid, "timing": self.timing[phase.name], "records": records})

    def reuse_phase(self, phase: PhaseConfig, key: str, meta: dict, params: dict, used: set, reporter) -> dict:
        like = group_trees(select(params, used))
        restored = self.cache.restore(key, like)
        params = replace_groups(params, restored)
        # this run's own best checkpoint of the phase: later phases restore "phase:NAME" from it
        Store(self.workdir / "checkpoints" / phase.name / "best").save(
            meta["best_step"], restored, {"phase": phase.name, "reused_from": meta["run"], "cache_key": key})
        for r in meta["records"]:
            reporter.log(r["kind"], phase.name, r["step"],
                         {k: v for k, v in r.items() if k not in ("time", "kind", "phase", "step")})
        self.handed_on_valid, self.handed_on_scores = meta["handed_on_valid"], None
        self.timing[phase.name] = {**meta["timing"], "reused_from": meta["run"]}
        self.reused[phase.name] = meta
        print(f"[{phase.name}] reused: trained on identical inputs by {meta['run']} (phase cache "
              f"{self.cache.directory / key}); {meta['timing'].get('wall_s')} s saved")
        return params

    # ------------------------------------------------------------------ the whole run
    def __call__(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.resume and (self.workdir / "results.json").exists():
            print(f"{self.workdir} is complete; results.json is unchanged")
            return json.loads((self.workdir / "results.json").read_text())
        sharding.init_distributed(t.distributed)
        run_state = self._prepare_workdir()
        start = time.time()
        comp, params = Components.for_run(cfg, self.host_cache)
        reporter = Reporter(self.workdir)
        try:
            for phase in self.phases:
                params = self._restore(params, phase)
                used = prompt_groups(phase.prompt, cfg.model.encoder)
                if phase.name in run_state["completed"]:
                    best = Store(self.workdir / "checkpoints" / phase.name / "best")
                    restored, _ = best.restore(group_trees(select(params, used)))
                    params = replace_groups(params, restored)
                    print(f"[{phase.name}] already done: best checkpoint restored")
                    continue
                before = jax.device_get(params) if self.on_phase else None  # the step donates its inputs
                key = None
                if self.cache is not None and phase.restore_best:  # (a phase ending on its last step: not cached)
                    key = phase_key(cfg, phase, group_trees(select(params, used)), comp.dataset.path)
                hit = self.cache.lookup(key) if key else None
                if hit:
                    params = self.reuse_phase(phase, key, hit, params, used, reporter)
                else:
                    params = self.run_phase(comp, phase, params, reporter)
                    if key and self.best_step >= 0:
                        self.store_phase(phase, key, select(params, used))
                if self.on_phase:
                    self.on_phase(phase, before, jax.device_get(params))
                run_state["completed"].append(phase.name)
                self.state_path.write_text(json.dumps(run_state))
            Store(self.workdir / "final").save(0, group_trees(params), {"method": t.method})
            prompt = scoring_prompt(t.method, self.phases)
            reused_s = sum(m["timing"].get("wall_s", 0.0) for m in self.reused.values())
            results = self.final_evaluation(comp, params, prompt, time.time() - start + reused_s, reporter)
        finally:
            if self._bar is not None:
                self._bar.close()  # a run stopped by an error leaves no half-drawn bar behind its message
            reporter.close()
        return results

    def final_evaluation(self, comp: Components, params: dict, prompt: str, train_time: float, reporter) -> dict:
        cfg, t, d = self.cfg, self.cfg.train, self.cfg.data
        used = prompt_groups(prompt, cfg.model.encoder)
        params = select(params, used)
        scorer = self.scorer(comp, prompt)
        out, row_scores = {}, {}  # {split: metrics}, {split: (rows, their scores)}
        if self.handed_on_valid is not None and self.handed_on_scores is not None:
            # the final params are the last phase's best: already evaluated
            out[d.eval_split] = self.handed_on_valid
            row_scores[d.eval_split] = (comp.split(d.eval_split, prompt, comp.row_limit("eval")), self.handed_on_scores)
        for split in [s for s in (d.eval_split, "test") if s not in out]:
            data = comp.split(split, prompt, comp.row_limit("eval"))
            t0, compiled = time.perf_counter(), scorer.compile.seconds
            with tqdm(total=len(data), desc=f"evaluate {split}", unit="row", dynamic_ncols=True) as bar:
                out[split], scores = evaluate(scorer, params, data, cfg, prompt, progress=bar)
            row_scores[split] = (data, scores)
            self.timing[f"evaluate {split}"] = {"rows": len(data), "wall_s": round(time.perf_counter() - t0, 2),
                                                "compile_s": round(scorer.compile.seconds - compiled, 2)}
            reporter.log("final", split, 0, out[split])
        # every row's score, for paired comparisons between runs (python -m sasrecllm_jax.compare)
        save_scores(self.workdir / SCORES_FILE, row_scores)
        results = {"method": t.method, "strategy": t.strategy if t.method == "sasrecllm" else None,
                   "config": json.loads(json.dumps(to_dict(cfg))), "phases": [p.name for p in self.phases],
                   "valid": out[d.eval_split], "test": out["test"],
                   "train_time_s": round(train_time, 1),  # reused phases count at what they cost their run
                   "reused_phases": {n: m["run"] for n, m in self.reused.items()},
                   "timing": self.timing,
                   # the fusion's learned weight (model.mapper.fusion): on the ID model's score (gate:
                   # id_gate) or on the LLM's (residual: llm_gate), how much of the final score is whose
                   **{g: float(params["mapper"][g]) for g in ("id_gate", "llm_gate") if g in params.get("mapper", {})},
                   "device": jax.devices()[0].device_kind, "dataset": comp.dataset.card.get("source"),
                   "commit": code_version(), "date": time.strftime("%Y-%m-%d")}
        write_whole(self.workdir / "results.json", json.dumps(results, indent=2))
        print(format_table(results))
        return results


def format_table(results: dict) -> str:
    name = results["method"] + (f" ({results['strategy']})" if results.get("strategy") else "")
    lines = [f"{name}: test split ({results['train_time_s']} s, {results['device']})",
             f"{'rows':<6}{'AUC':>8}{'UAUC':>8}{'logloss':>9}{'n':>8}"]
    fmt = lambda v: f"{v:8.4f}" if v is not None else f"{'-':>8}"
    for part in ("all", "warm", "cold"):
        r = results["test"][part]
        lines.append(f"{part:<6}{fmt(r['auc'])}{fmt(r['uauc'])}{fmt(r['logloss'])[-9:]:>9}{r['n']:>8}")
    return "\n".join(lines)


def train_and_evaluate(cfg: Config, workdir: str | Path, resume: bool = False, on_step: Callable | None = None,
                       config_path: str = "config", on_phase: Callable | None = None,
                       host_cache: HostCache | None = None) -> dict:
    return Run(cfg, Path(workdir), resume, on_step, config_path, on_phase, host_cache)()
