"""The experiment grid: every method of a dataset's recipe, seeds, and the test-time ablations of the hybrids.

Each method's config is configs/experiments/DATASET/METHOD.yaml. Runs go to OUT/runs/NAME (NAME =
METHOD, METHOD-seedN for seeds other than 0, then -TAG); a run whose results.json exists is skipped
(refused when its config.yaml differs from the one the grid would train) and a cut one resumes, so a
stopped grid continues where it stopped. Phases shared by several methods are trained once: runs share
OUT/phase_cache (train.phase_cache).
"""
from __future__ import annotations

import json
from pathlib import Path

from sasrecllm_jax.ablate import ablate as run_ablation
from sasrecllm_jax.config import load_config
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.host_cache import HostCache
from sasrecllm_jax.run_folder.files import paired_tests, read_ablations
from sasrecllm_jax.train.run import RESULT_NEUTRAL_KEYS, saved_config_changes, shown_changes, train_and_evaluate
from sasrecllm_jax.train.strategies import phase_source, resolve_phases

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["pop", "mf", "sasrec", "icl", "tallrec", "collm_mf", "sasrecllm_dual_stage",
           "sasrecllm_hierarchical_freezing", "sasrecllm_plug_and_play"]
HYBRID_METHODS = ("sasrecllm", "collm_mf")  # the methods with collaborative tokens to ablate


def config_path(dataset: str, method: str) -> Path:
    return ROOT / "configs" / "experiments" / dataset / f"{method}.yaml"


def run_grid(dataset: str, methods: list[str], seeds: list[int], out: Path, overrides: list[str], tag: str = "",
             ablate: bool = False, phase_cache: bool = True) -> None:
    host_cache = HostCache()  # the backbone is read and each split encoded once for the whole grid
    runs = []
    for method in methods:
        cfg_path = config_path(dataset, method)
        for seed in seeds if method not in ("icl", "pop") else [0]:  # nothing of theirs is random
            name = (method if seed == 0 else f"{method}-seed{seed}") + (f"-{tag}" if tag else "")
            cache = [f"train.phase_cache={out / 'phase_cache'}"] if phase_cache else []
            runs.append((name, out / "runs" / name, cfg_path, load_config(cfg_path, [f"train.seed={seed}", *cache,
                                                                                    *overrides])))
    # every run's phases checked (a phase may restore from a run the grid trains before it), and a finished run
    # of another config (it holds another config's numbers, never summarised as this one's) or an unfinished
    # one (it would not resume) refused: all at once, before the grid trains anything
    for i, (_, workdir, cfg_path, cfg) in enumerate(runs):
        if not (workdir / "results.json").exists():  # (a finished run is skipped)
            resolve_phases(cfg, phase_source(cfg_path, overrides), pending=[w for _, w, _, _ in runs[:i]])
    clashes = []
    for _, workdir, _, cfg in runs:
        if not (workdir / "config.yaml").exists():
            continue
        finished = (workdir / "results.json").exists()
        changed = [c for c in saved_config_changes(workdir, cfg) if not finished or c[0] not in RESULT_NEUTRAL_KEYS]
        if changed:
            clashes.append(f"{workdir} ({'finished' if finished else 'unfinished'}: {shown_changes(changed)})")
    if clashes:
        more = f"; and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise ConfigError(f"{len(clashes)} run(s) of another config: {'; '.join(clashes[:5])}{more}; give this grid "
                          f"its own folders with --tag or --out, or delete those runs to train them again")
    for name, workdir, cfg_path, cfg in runs:
        if (workdir / "results.json").exists():
            print(f"{name}: done, skipped")
        else:
            print(f"=== {name} ({cfg_path.relative_to(ROOT)}{''.join(' --set ' + o for o in overrides)})")
            train_and_evaluate(cfg, workdir, resume=workdir.exists(), config_path=phase_source(cfg_path, overrides),
                               host_cache=host_cache)
        done = read_ablations(workdir)
        # a stopped grid resumes them; an ablation made before its paired test was kept is made again
        missing = [mode for mode in ("drop", "shuffle")
                   if mode not in done.get("test", {}) or mode not in paired_tests(done, "test")]
        if ablate and missing and (workdir / "results.json").exists() and json.loads(
                (workdir / "results.json").read_text())["config"]["train"]["method"] in HYBRID_METHODS:
            run_ablation(workdir, tuple(missing), "test")
