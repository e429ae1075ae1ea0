"""Shared test fixtures: a small synthetic dataset with learnable structure, and config helpers."""
import re
from pathlib import Path

import numpy as np
import pandas as pd

from sasrecllm_jax.config import load_config


def synthetic_dataset(out: Path, users: int = 40, items: int = 30, per_user: int = 12, seed: int = 0) -> Path:
    """Users like items of their own 'genre' (item % 3 == user % 3): SASRec and MF can learn it."""
    from data_tools.log import prepare_log
    from sasrecllm_jax.data.dataset import write_dataset
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for k, i in enumerate(rng.choice(items, per_user, replace=False)):
            rows.append({"user": f"u{u}", "item": f"i{i}", "timestamp": 1000 * k + u,
                         "rating": 5 if i % 3 == u % 3 else 1})
    inter, item_file = out.parent / f"{out.name}-log.csv", out.parent / f"{out.name}-items.csv"
    pd.DataFrame(rows).to_csv(inter, index=False)
    pd.DataFrame({"item": [f"i{i}" for i in range(items)],
                  "title": [f"Film {i} ({1990 + i})" for i in range(items)]}).to_csv(item_file, index=False)
    splits, items_df, source, recipe, extra = prepare_log(inter, item_file, threshold=4, negatives=0, seed=0,
                                                          valid_frac=0.2, test_frac=0.2)
    write_dataset(out, splits, items_df, source=source, recipe=recipe, extra=extra)
    return out


ROOT = Path(__file__).resolve().parents[1]


# Short templates for the runs of the tests (test_pipeline checks the repository's own): with the byte
# tokenizer every character is a token, so the synthetic prompts are 40-88 tokens long and one padded
# length, ONE_SHAPE, holds them all (one batch shape, one compilation per phase)
TEST_PROMPTS = [f"data.prompt_hybrid={ROOT / 'tests/prompts/hybrid.txt'}",
                f"data.prompt_text={ROOT / 'tests/prompts/text.txt'}"]
ONE_SHAPE = "data.pad_multiple=128"


def smoke_sets(dataset: Path) -> list[str]:
    """The overrides that put configs/smoke.yaml on the synthetic dataset with the tests' short prompt
    templates (as `--set` values; later overrides win)."""
    return [f"data.dataset={dataset}", *TEST_PROMPTS, "data.max_rows={train: 256}"]


def smoke_config(dataset: Path, *overrides: str):
    """configs/smoke.yaml on the synthetic dataset, with the tests' short prompt templates."""
    return load_config(ROOT / "configs" / "smoke.yaml", [*smoke_sets(dataset), *overrides])


def run_ok(*argv):
    """`python -m data_tools ARGV` succeeds."""
    from data_tools.__main__ import main
    assert main(list(map(str, argv))) == 0


def run_fails(capsys, out, *argv, match, out_was_there=False):
    """`python -m data_tools ARGV` exits 2 with one line on stderr that contains `match`, and leaves no --out
    (unless it was there before) nor a temporary folder."""
    from data_tools.__main__ import main
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert out_was_there or not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a temporary folder was left behind"
    return err


def readme_code(out: Path) -> str:
    """The python blocks of an export's README.md, as one program (as a user would run them)."""
    return "\n".join(re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S))
