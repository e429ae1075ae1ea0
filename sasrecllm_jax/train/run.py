"""train_and_evaluate(cfg, workdir): the phases of a method in order, then one test evaluation.

The run folder records which phases are done and what they cost (`run_state.json`), so a resumed run
skips them and continues the interrupted one from its latest checkpoint. A phase that another run
trained on identical inputs is taken from the phase cache instead (train/phase_cache.py).

One process writes a run folder at a time (RUN/lock). A folder that holds a run's saved work
(checkpoints, final model, results) is only continued (`resume`, with the config it was made with;
`allow_config_change` admits changes to the keys in RESULT_NEUTRAL_KEYS) or deleted (`restart`, which
names what it removes): never trained over.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import jax
import yaml

from sasrecllm_jax import sharding
from sasrecllm_jax.assembly import Assembly
from sasrecllm_jax.config import Config, PhaseConfig, from_dict, load_yaml, to_dict
from sasrecllm_jax.data.registry import resolve_dataset
from sasrecllm_jax.errors import ConfigError, DamagedCheckpointError, TrainingError, check_stop
from sasrecllm_jax.host_cache import HostCache
from sasrecllm_jax.run_folder.files import (RUN_FILES, RunLock, check_dataset, code_version, phases_with_checkpoints,
                                           remove_run_files, saved_work, write_whole)
from sasrecllm_jax.run_folder.metrics_log import Reporter, read_metrics
from sasrecllm_jax.train import groups
from sasrecllm_jax.train.checkpoint import PhaseCheckpoints, Store
from sasrecllm_jax.train.final import final_evaluation
from sasrecllm_jax.train.phase import PhaseResult, PhaseRunner
from sasrecllm_jax.train.phase_cache import PhaseCache, enabled_reason, phase_key
from sasrecllm_jax.train.strategies import fusion_fitting_phase, resolve_phases, scoring_prompt, text_fitting_phase
from sasrecllm_jax.weights.peft_adapter import load_peft_lora

# keys whose change cannot change a run's results: where records are logged, where identical phases are
# found, where named datasets are prepared. `--resume --allow-config-change` accepts changes to these only.
RESULT_NEUTRAL_KEYS = ("train.log_every", "train.phase_cache", "data.data_dir")


def saved_config_changes(workdir: Path, cfg: Config) -> list[tuple[str, object, object]]:
    """[(dotted key, the run's value, cfg's value)] where cfg differs from the config.yaml a run folder was
    made with ([] without one). Keys added to the schema since the run started read as their defaults (the
    behaviour it ran with); a key the schema no longer has is compared as it is."""
    saved_cfg = Path(workdir) / "config.yaml"
    if not saved_cfg.exists():
        return []
    saved = load_yaml(saved_cfg.read_text()) or {}
    try:
        saved = to_dict(from_dict(Config, saved, str(saved_cfg)))
    except ConfigError:
        pass
    return config_changes(json.loads(json.dumps(saved)), json.loads(json.dumps(to_dict(cfg))))


def shown_changes(changes: list[tuple[str, object, object]]) -> str:
    """saved_config_changes as one line: `train.batch_size: 16 -> 32; ...`."""
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)


def flat_config(tree, prefix: str = "") -> dict:
    """A config as plain data, flattened to dotted keys (train.batch_size, train.phases[0].lr.mapper)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flat_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(flat_config(v, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def config_changes(before: dict, now: dict) -> list[tuple[str, object, object]]:
    """(dotted key, value before, value now) for every key that differs ("(absent)" where one has none)."""
    a, b = flat_config(before), flat_config(now)
    return [(k, a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(set(a) | set(b)) if a.get(k, "(absent)")
            != b.get(k, "(absent)")]


class Run:
    def __init__(self, cfg: Config, workdir: Path, resume: bool, on_step: Callable | None = None,
                 config_path: str = "config", on_phase: Callable | None = None, host_cache: HostCache | None = None,
                 restart: bool = False, allow_config_change: bool = False):
        if resume and restart:
            raise ConfigError("--resume continues the run in --workdir and --restart deletes it: pass one of them")
        self.cfg = cfg
        code_version()  # read the checkout now, while it is the code this process loaded
        self.host_cache = host_cache  # weights and encoded splits shared with other runs of this process
        self.workdir = Path(workdir).absolute()
        self.resume, self.restart, self.allow_config_change = resume, restart, allow_config_change
        self.on_step = on_step      # (phase name, step): observers, tests
        self.on_phase = on_phase    # (phase, params before, params after), host copies
        self.phases = resolve_phases(cfg, config_path)
        self.state_path = self.workdir / "run_state.json"
        why_not = enabled_reason(cfg)
        self.cache = PhaseCache(cfg.train.phase_cache) if why_not is None else None
        if cfg.train.phase_cache and why_not:
            print(f"phase cache off: {why_not}")

    # ------------------------------------------------------------------ the run folder
    def _prepare_workdir(self) -> dict | None:
        """Check what the folder holds against resume / restart, write config.yaml, and return the run's
        record: {completed: [phase], timing: {phase: ...}, reused: {phase: run}} (None: a finished run,
        resumed with its own config, left as it is)."""
        if (self.workdir / "dataset.json").exists():  # a run's files would sit among the dataset's
            raise TrainingError(f"{self.workdir} is a dataset folder (it holds dataset.json); give the run its own "
                                f"--workdir, e.g. runs/{self.workdir.name}")
        saved = saved_work(self.workdir)
        ours = [n for n in RUN_FILES if (self.workdir / n).exists()]
        if ours and not (self.workdir / "config.yaml").exists():  # never delete what train.py did not write
            raise TrainingError(f"{self.workdir} holds {', '.join(ours)} but no config.yaml, so it is not a run "
                                f"folder train.py wrote; choose another --workdir")
        if self.restart:
            removed = remove_run_files(self.workdir)
            if removed:
                print(f"--restart: removed {', '.join(removed)} from {self.workdir}")
        elif self.resume:
            self._check_config()
            if (self.workdir / "results.json").exists():
                return None
        elif saved:
            phases = ", ".join(phases_with_checkpoints(self.workdir)) or "no phase"
            what = "a finished run" if "results.json" in saved else f"an unfinished run (checkpoints of {phases})"
            raise TrainingError(f"{self.workdir} holds {what}; pass --resume to continue it, --restart to delete it "
                                f"and start again, or choose another --workdir")
        else:
            removed = remove_run_files(self.workdir)  # a start stopped before its first checkpoint
            if removed:
                print(f"note: {self.workdir} held no checkpoint of an earlier start; removed {', '.join(removed)}")
        write_whole(self.workdir / "config.yaml",
                    yaml.safe_dump(json.loads(json.dumps(to_dict(self.cfg))), sort_keys=False))
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        return {"completed": state.get("completed", []), "timing": state.get("timing", {}),
                "reused": state.get("reused", {})}

    def _check_config(self) -> None:
        """--resume continues a run with the config it was made with: a change is refused, naming each
        differing key, unless every change is to a RESULT_NEUTRAL_KEYS key and allow_config_change is set."""
        saved_cfg = self.workdir / "config.yaml"
        changes = saved_config_changes(self.workdir, self.cfg)
        if not changes:
            return
        shown = shown_changes(changes)
        neutral = [k for k, _, _ in changes if k in RESULT_NEUTRAL_KEYS]
        if self.allow_config_change and len(neutral) == len(changes):
            print(f"note: resuming with a changed config ({shown}); these keys cannot change the results")
            return
        hint = (f" (--allow-config-change accepts changes to {', '.join(RESULT_NEUTRAL_KEYS)} only)"
                if neutral or self.allow_config_change else "")
        raise TrainingError(f"--resume with a changed config: {shown}; {saved_cfg} holds the run's own. Resume "
                            f"with the same config, start again with --restart, or choose another --workdir{hint}")

    def _save_state(self, run_state: dict) -> None:
        write_whole(self.state_path, json.dumps(run_state))

    def _restore(self, params: dict, phase: PhaseConfig) -> dict:
        """The groups a phase restores before it starts: from an earlier phase's best checkpoint
        ("phase:NAME"), a PEFT adapter folder ("peft:DIR", LoRA only) or another run's final model."""
        for group, source in phase.restore.items():
            if group not in groups.present_groups(params):
                raise ConfigError(f"phase {phase.name}: restore {group!r}, but this model has no such group")
            like = {group: groups.split(params, [group])[0]}
            if source.startswith("peft:"):
                restored = {"lora": {"llm": load_peft_lora(source[5:], params["llm"], self.cfg.model.lora)}}
            elif source.startswith("phase:"):
                ckpt = PhaseCheckpoints(self.workdir, source[6:])
                try:
                    restored = ckpt.restore_best(like)
                finally:
                    ckpt.close()
            else:
                store = Store(Path(source).absolute() / "final")
                try:
                    restored, _ = store.restore(like)
                except DamagedCheckpointError as e:
                    raise DamagedCheckpointError(f"{e}; train that run again (train.py --restart --workdir "
                                                 f"{source}) or restore {group} from another") from None
                finally:
                    store.close()
            params = groups.replace_groups(params, restored)
            print(f"[{phase.name}] {group} restored from {source}")
        return params

    def _done_phase(self, params: dict, phase: PhaseConfig, used: set, timing: dict) -> dict:
        """params with what a phase finished by an earlier process handed on: its trained groups at its best
        evaluation (the step its timing names; or at its last step, with restore_best off), from its
        verified checkpoints."""
        like = groups.group_trees(groups.split(groups.select(params, used), phase.trainable)[0])
        ckpt = PhaseCheckpoints(self.workdir, phase.name)
        try:
            restored = (ckpt.restore_best(like, timing.get("best_step")) if phase.restore_best
                        else ckpt.restore_last(like))
        finally:
            ckpt.close()
        print(f"[{phase.name}] already done: its {'best' if phase.restore_best else 'last'} checkpoint restored")
        return groups.replace_groups(params, restored)

    # ------------------------------------------------------------------ the phase cache
    def _store_phase(self, phase: PhaseConfig, key: str, used_params: dict, result: PhaseResult) -> None:
        records = [r for r in read_metrics(self.workdir) if r.get("phase") == phase.name
                   and r.get("kind") in ("train", "eval", "timing")]
        self.cache.put(key, groups.group_trees(used_params), result.best_step, {
            "phase": phase.name, "run": str(self.workdir), "best_step": result.best_step,
            "handed_on_valid": result.handed_on_valid, "timing": result.timing, "records": records})

    def _reuse_phase(self, phase: PhaseConfig, key: str, meta: dict, params: dict, used: set,
                     reporter: Reporter) -> tuple[dict, PhaseResult]:
        restored = self.cache.restore(key, groups.group_trees(groups.select(params, used)))
        params = groups.replace_groups(params, restored)
        # this run's own best checkpoint of the phase: later phases restore "phase:NAME" from it
        reporter.forget(phase.name)
        ckpt = PhaseCheckpoints(self.workdir, phase.name)
        try:
            for gone in ckpt.discard_after(-1):
                print(f"[{phase.name}] removed {gone}: an earlier start of the phase, now reused")
            ckpt.best.save(meta["best_step"], restored,
                           {"phase": phase.name, "reused_from": meta["run"], "cache_key": key})
        finally:
            ckpt.close()
        for r in meta["records"]:
            reporter.log(r["kind"], phase.name, r["step"],
                         {k: v for k, v in r.items() if k not in ("time", "kind", "phase", "step")})
        print(f"[{phase.name}] reused: trained on identical inputs by {meta['run']} (phase cache "
              f"{self.cache.directory / key}); {meta['timing'].get('wall_s')} s saved")
        timing = {**meta["timing"], "reused_from": meta["run"]}
        return params, PhaseResult(params, meta["best_step"], meta["handed_on_valid"], None, timing)

    # ------------------------------------------------------------------ the whole run
    def __call__(self) -> dict:
        sharding.init_distributed(self.cfg.train.distributed)
        lock = RunLock(self.workdir) if jax.process_index() == 0 else None  # (several hosts: the first one's)
        if lock is not None:
            lock.acquire()
        try:
            run_state = self._prepare_workdir()
            if run_state is None:
                print(f"{self.workdir} is complete; results.json is unchanged")
                return json.loads((self.workdir / "results.json").read_text())
            return self._train(run_state)
        finally:
            if lock is not None:
                lock.release()

    def _train(self, run_state: dict) -> dict:
        cfg, t = self.cfg, self.cfg.train
        start = time.time()
        timing: dict[str, dict] = dict(run_state["timing"])
        reused: dict[str, str] = dict(run_state["reused"])
        # the time earlier processes of this run spent on the phases they finished (reused ones count below)
        earlier_s = sum(timing.get(name, {}).get("wall_s", 0.0) for name in run_state["completed"] if name not in reused)
        dataset = resolve_dataset(cfg.data)  # checked before the model loads
        digest = dataset.digest()
        # every process compares (one that refused alone would leave the others waiting); the first records
        check_dataset(self.workdir, dataset.path, digest, record=jax.process_index() == 0)
        for phase in self.phases:  # weights indexed by ids must come from this dataset (before any phase trains)
            for group, source in phase.restore.items():
                if group in groups.ID_GROUPS and not source.startswith(("phase:", "peft:")):
                    check_dataset(Path(source), dataset.path, digest,
                                  restored_by=f"phase {phase.name} (restore {group})")
        assembly, params = Assembly.for_run(cfg, self.host_cache, dataset)
        for prompt in sorted({ph.prompt for ph in self.phases} | {scoring_prompt(t.method, self.phases)}):
            assembly.encoder.check_prompts_fit(prompt)  # before any phase trains
        check_stop()
        reporter = Reporter(self.workdir)
        reporter.forget_final()  # a final evaluation cut short is made again
        runner = PhaseRunner(cfg, assembly, self.workdir, self.resume, reporter, self.on_step)
        fit_phase = fusion_fitting_phase(cfg, self.phases)
        text_phase = text_fitting_phase(cfg, self.phases)
        last: PhaseResult | None = None
        try:
            for phase in self.phases:
                check_stop()
                params = self._restore(params, phase)
                used = groups.prompt_modules(phase.prompt, cfg.model.encoder)
                if phase.name in run_state["completed"]:
                    params = self._done_phase(params, phase, used, timing.get(phase.name, {}))
                    if phase.name == text_phase:
                        params = runner.fit_text(phase, params, params)
                    last = None
                    continue
                before = jax.device_get(params) if self.on_phase else None  # the step donates its inputs
                key = None
                if self.cache is not None and phase.restore_best:  # (a phase ending on its last step: not cached)
                    key = phase_key(cfg, phase, groups.group_trees(groups.select(params, used)), assembly.dataset.path)
                hit = self.cache.lookup(key) if key else None
                if hit:
                    params, last = self._reuse_phase(phase, key, hit, params, used, reporter)
                    reused[phase.name] = hit["run"]
                else:
                    last = runner.run(phase, params, fit_fusion=phase.name == fit_phase,
                                      fit_text=phase.name == text_phase)
                    params = last.params
                    earlier_s += last.earlier_s
                    if key and last.best_step >= 0:
                        self._store_phase(phase, key, groups.select(params, used), last)
                timing[phase.name] = last.timing
                if self.on_phase:
                    self.on_phase(phase, before, jax.device_get(params))
                run_state["completed"].append(phase.name)
                self._save_state({**run_state, "timing": timing, "reused": reused})
            check_stop()
            final = Store(self.workdir / "final", writer=True)
            try:
                final.save(0, groups.group_trees(params), {"method": t.method})
            finally:
                final.close()
            prompt = scoring_prompt(t.method, self.phases)
            reused_s = sum(timing[name].get("wall_s", 0.0) for name in reused)
            return final_evaluation(cfg, assembly, runner.scorer(prompt), params, prompt, self.workdir, reporter,
                                    phases=[p.name for p in self.phases],
                                    train_time=time.time() - start + earlier_s + reused_s,
                                    timing=timing, reused=reused, handed_on=last)
        finally:
            if runner.progress is not None:
                runner.progress.close()  # a run stopped by an error leaves no half-drawn bar behind its message
            reporter.close()


def train_and_evaluate(cfg: Config, workdir: str | Path, resume: bool = False, on_step: Callable | None = None,
                       config_path: str = "config", on_phase: Callable | None = None,
                       host_cache: HostCache | None = None, restart: bool = False,
                       allow_config_change: bool = False) -> dict:
    return Run(cfg, Path(workdir), resume, on_step, config_path, on_phase, host_cache, restart, allow_config_change)()
