"""Runs of one method that differ only in the seed: grouped, and summarised as mean +- sample sd."""
from __future__ import annotations

import math

from sasrecllm_jax.experiments.markdown import table

SEED_COLUMNS = [("AUC", "all", "auc"), ("UAUC", "all", "uauc"), ("warm AUC", "warm", "auc"),
                ("cold AUC", "cold", "auc")]


def seed_groups(summary: dict) -> dict[str, list[str]]:
    """Runs of one method (and tag) that differ only in the seed, scored on the same number of test rows:
    {name without -seedN: [run names]}, groups of two or more only. A run's seed is its config's."""
    groups: dict[tuple, list[str]] = {}
    for name, r in summary.items():
        seed = r["config"]["train"]["seed"]
        base = name.replace(f"-seed{seed}", "", 1) if seed else name
        groups.setdefault((base, r["test"]["all"]["n"]), []).append(name)
    return {base: names for (base, _), names in groups.items() if len(names) > 1}


def seed_group_of(summary: dict) -> dict[str, list[str]]:
    """{run name: the names of its seed group} for every run in a group of seed_groups."""
    return {n: names for names in seed_groups(summary).values() for n in names}


def seeds_section(summary: dict) -> list[str]:
    """Mean and sample standard deviation over seeds of each method run with several: how much a reseed
    moves a method, which the paired test over test rows cannot say."""
    groups = seed_groups(summary)
    if not groups:
        return []
    rows = []
    for base, names in groups.items():
        cells = [mean_sd([summary[n]["test"][part][field] for n in names]) for _, part, field in SEED_COLUMNS]
        cells.append(mean_sd([summary[n]["valid"]["all"]["auc"] for n in names]))
        seeds = ", ".join(str(summary[n]["config"]["train"]["seed"]) for n in names)
        commits = sorted({summary[n].get("commit", "unknown") for n in names})
        note = f" (commits {', '.join(commits)})" if len(commits) > 1 else ""
        rows.append([f"{base}{note}", seeds, *cells])
    return ["", "Across seeds (mean +- sample standard deviation over the seeds; a method's runs that differ only "
                "in train.seed):", "",
            *table(["method", "seeds", *(c for c, _, _ in SEED_COLUMNS), "valid AUC"], rows)]


def method_points(summary: dict, y_part: str = "cold") -> list[dict]:
    """One point per method for the warm/cold chart: a seed group at its mean (with sample sd), other runs
    as they are. Named like the table's rows (a group by its seed-0 name). The chart's y axis ("cold")
    holds the AUC of `y_part` (cold, or new_item where the dataset has new-item rows)."""
    grouped = {n: base for base, names in seed_groups(summary).items() for n in names}
    points, done = [], set()
    for name, r in summary.items():
        base = grouped.get(name, name)
        if base in done:
            continue
        done.add(base)
        names = [n for n in summary if grouped.get(n, n) == base]
        point = {"name": base, "method": r["method"], "seeds": len(names)}
        for key, part in (("all", "all"), ("warm", "warm"), ("cold", y_part)):
            point[key], point[f"{key}_sd"] = mean_and_sd([summary[n]["test"].get(part, {}).get("auc") for n in names])
        points.append(point)
    return points


def mean_and_sd(values: list) -> tuple:
    """Mean and sample standard deviation (None for one value); (None, None) if any value is None."""
    if any(v is None for v in values):
        return None, None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


def mean_sd(values: list) -> str:
    mean, sd = mean_and_sd(values)
    return "-" if mean is None else f"{mean:.4f}" + (f" +- {sd:.4f}" if sd is not None else "")
