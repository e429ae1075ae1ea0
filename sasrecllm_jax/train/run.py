"""train_and_evaluate(cfg, workdir): the phases of a method in order, then one test evaluation.

The run folder records which phases are done (`run_state.json`), so a resumed run skips them and
continues the interrupted one from its latest checkpoint. A phase that another run trained on
identical inputs is taken from the phase cache instead (train/phase_cache.py).
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
from sasrecllm_jax.config import Config, PhaseConfig, load_yaml, to_dict
from sasrecllm_jax.errors import ConfigError, TrainingError
from sasrecllm_jax.host_cache import HostCache
from sasrecllm_jax.run_folder.files import code_version
from sasrecllm_jax.run_folder.metrics_log import Reporter, read_metrics
from sasrecllm_jax.train import groups
from sasrecllm_jax.train.checkpoint import Store
from sasrecllm_jax.train.final import final_evaluation
from sasrecllm_jax.train.phase import PhaseResult, PhaseRunner
from sasrecllm_jax.train.phase_cache import PhaseCache, enabled_reason, phase_key
from sasrecllm_jax.train.strategies import resolve_phases, scoring_prompt
from sasrecllm_jax.weights.peft_adapter import load_peft_lora


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
        why_not = enabled_reason(cfg)
        self.cache = PhaseCache(cfg.train.phase_cache) if why_not is None else None
        if cfg.train.phase_cache and why_not:
            print(f"phase cache off: {why_not}")

    # ------------------------------------------------------------------ the run folder
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
        """The groups a phase restores before it starts: from an earlier phase's best checkpoint
        ("phase:NAME"), a PEFT adapter folder ("peft:DIR", LoRA only) or another run's final model."""
        for group, source in phase.restore.items():
            if group not in groups.present_groups(params):
                raise ConfigError(f"phase {phase.name}: restore {group!r}, but this model has no such group")
            if source.startswith("peft:"):
                restored = {"lora": {"llm": load_peft_lora(source[5:], params["llm"], self.cfg.model.lora)}}
            else:
                store = (Store(self.workdir / "checkpoints" / source[6:] / "best") if source.startswith("phase:")
                         else Store(Path(source).absolute() / "final"))
                restored, _ = store.restore({group: groups.split(params, [group])[0]})
            params = groups.replace_groups(params, restored)
            print(f"[{phase.name}] {group} restored from {source}")
        return params

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
        Store(self.workdir / "checkpoints" / phase.name / "best").save(
            meta["best_step"], restored, {"phase": phase.name, "reused_from": meta["run"], "cache_key": key})
        for r in meta["records"]:
            reporter.log(r["kind"], phase.name, r["step"],
                         {k: v for k, v in r.items() if k not in ("time", "kind", "phase", "step")})
        print(f"[{phase.name}] reused: trained on identical inputs by {meta['run']} (phase cache "
              f"{self.cache.directory / key}); {meta['timing'].get('wall_s')} s saved")
        timing = {**meta["timing"], "reused_from": meta["run"]}
        return params, PhaseResult(params, meta["best_step"], meta["handed_on_valid"], None, timing)

    # ------------------------------------------------------------------ the whole run
    def __call__(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.resume and (self.workdir / "results.json").exists():
            print(f"{self.workdir} is complete; results.json is unchanged")
            return json.loads((self.workdir / "results.json").read_text())
        sharding.init_distributed(t.distributed)
        run_state = self._prepare_workdir()
        start = time.time()
        assembly, params = Assembly.for_run(cfg, self.host_cache)
        reporter = Reporter(self.workdir)
        runner = PhaseRunner(cfg, assembly, self.workdir, self.resume, reporter, self.on_step)
        timing: dict[str, dict] = {}
        reused: dict[str, str] = {}
        last: PhaseResult | None = None
        try:
            for phase in self.phases:
                params = self._restore(params, phase)
                used = groups.prompt_modules(phase.prompt, cfg.model.encoder)
                if phase.name in run_state["completed"]:
                    best = Store(self.workdir / "checkpoints" / phase.name / "best")
                    restored, _ = best.restore(groups.group_trees(groups.select(params, used)))
                    params = groups.replace_groups(params, restored)
                    print(f"[{phase.name}] already done: best checkpoint restored")
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
                    last = runner.run(phase, params)
                    params = last.params
                    if key and last.best_step >= 0:
                        self._store_phase(phase, key, groups.select(params, used), last)
                timing[phase.name] = last.timing
                if self.on_phase:
                    self.on_phase(phase, before, jax.device_get(params))
                run_state["completed"].append(phase.name)
                self.state_path.write_text(json.dumps(run_state))
            Store(self.workdir / "final").save(0, groups.group_trees(params), {"method": t.method})
            prompt = scoring_prompt(t.method, self.phases)
            reused_s = sum(timing[name].get("wall_s", 0.0) for name in reused)
            return final_evaluation(cfg, assembly, runner.scorer(prompt), params, prompt, self.workdir, reporter,
                                    phases=[p.name for p in self.phases], train_time=time.time() - start + reused_s,
                                    timing=timing, reused=reused, handed_on=last)
        finally:
            if runner.progress is not None:
                runner.progress.close()  # a run stopped by an error leaves no half-drawn bar behind its message
            reporter.close()


def train_and_evaluate(cfg: Config, workdir: str | Path, resume: bool = False, on_step: Callable | None = None,
                       config_path: str = "config", on_phase: Callable | None = None,
                       host_cache: HostCache | None = None) -> dict:
    return Run(cfg, Path(workdir), resume, on_step, config_path, on_phase, host_cache)()
