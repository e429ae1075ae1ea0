"""Splits of a dataset encoded for a prompt kind: SASRec histories and, for LLM phases, tokenized prompts.

`SplitEncoder.split(name, prompt, max_rows)` encodes a split once per process (and once per grid
when a HostCache is shared: the key holds everything the encoding depends on); `encode_rows` does the
same for any table of canonical rows (rows to score). `row_limit` reads the row caps of the config.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from sasrecllm_jax.config import Config
from sasrecllm_jax.data import prompts as prompts_lib
from sasrecllm_jax.data.dataset import Dataset
from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.errors import ConfigError, DataError
from sasrecllm_jax.host_cache import HostCache, memo


def row_limit(cfg: Config, kind: str) -> int:
    """data.max_rows[kind], and data.cpu_max_rows[kind] too when running on the CPU backend: the smaller of
    the caps that are set (0: no cap)."""
    d = cfg.data
    tables = [d.max_rows, *([d.cpu_max_rows] if jax.default_backend() == "cpu" else [])]
    unknown = set().union(*tables) - {"train", "eval"}
    if unknown:
        raise ConfigError(f"data.max_rows / data.cpu_max_rows: unknown key(s) {sorted(unknown)}; use train, eval")
    caps = [int(t[kind]) for t in tables if t.get(kind)]
    return min(caps) if caps else 0


def prompt_templates(cfg: Config, prompt: str) -> list[tuple[str, str]]:
    """(path, prompts.Template kind) of every template the rows of a prompt kind ("text", "hybrid") render:
    the text template, also for hybrid prompts with model.mapper.inject: last or cross (the vectors go to, or
    are read from, its last position); else the hybrid template, then data.prompt_hybrid_unknown_item's when set (rows whose item
    the ID side has no train row for)."""
    d = cfg.data
    if prompt == "text" or cfg.model.mapper.reads_text_template:
        return [(d.prompt_text, "text")]
    return [(d.prompt_hybrid, "hybrid")] + ([(d.prompt_hybrid_unknown_item, "unknown_item")]
                                           if d.prompt_hybrid_unknown_item else [])


def late_mask(timestamps: np.ndarray, share: float) -> np.ndarray:
    """[N] bool: the latest `share` of the rows by timestamp (ceil of share x N; among equal timestamps the
    later rows of the table count as later)."""
    n = len(timestamps)
    late = np.zeros(n, bool)
    n_late = int(np.ceil(share * n))
    if n_late:
        late[np.lexsort((np.arange(n), timestamps))[n - n_late:]] = True
    return late


def train_rows(train: pd.DataFrame, rows: str, late_share: float) -> pd.DataFrame:
    """The train rows a phase sees: all, or with data.late_rows the early or the late ones."""
    if rows == "all" or not late_share:
        return train
    late = late_mask(train["timestamp"].to_numpy(), late_share)
    picked = train[late if rows == "late" else ~late]
    if picked.empty:
        raise ConfigError(f"data.late_rows = {late_share} leaves no {rows} rows of the {len(train):,} train rows; "
                          f"choose a share that leaves some on both sides", key="data.late_rows")
    return picked


@dataclasses.dataclass
class SplitEncoder:
    cfg: Config
    dataset: Dataset
    tokenizer: object = None           # None: encoder-only runs (no prompts)
    tokenizer_source: tuple = ()       # which tokenizer encodes the prompts (part of a shared split's key)
    host_cache: HostCache | None = None
    _splits: dict = dataclasses.field(default_factory=dict)
    _id_rows: pd.DataFrame | None = None
    _seen: np.ndarray | None = None

    def split(self, name: str, prompt: str, max_rows: int = 0, rows: str = "all") -> SplitData:
        """A split of the dataset, encoded for this prompt kind (cached); of the train split, the `rows`
        of a phase (all, early, late: data.late_rows)."""
        if name != "train" or not self.cfg.data.late_rows:
            rows = "all"
        key = (name, prompt, max_rows, rows)
        if key not in self._splits:
            df = self.dataset.splits[name]
            if name == "train":
                df = train_rows(df, rows, self.cfg.data.late_rows)
            make = lambda: self.encode_rows(name, df, prompt, max_rows)
            self._splits[key] = memo(self.host_cache, self._key(name, prompt, max_rows, rows), make)
        return self._splits[key]

    def id_side_rows(self) -> pd.DataFrame:
        """The train rows the ID side learns and counts from (the early rows with data.late_rows): what the
        counted terms and the mapper's item_seen flags (Assembly.init_params) and seen_items read."""
        if self._id_rows is None:
            self._id_rows = train_rows(self.dataset.splits["train"], "early", self.cfg.data.late_rows)
        return self._id_rows

    def seen_items(self) -> np.ndarray:
        """The items the ID side has a train row for: those the item_seen flags mark. Counted once per encoder."""
        if self._seen is None:
            self._seen = np.unique(self.id_side_rows()["iid"])
        return self._seen

    def _key(self, name: str, prompt: str, max_rows: int, rows: str = "all") -> tuple:
        """Everything an encoded split depends on (for sharing it between runs of one process)."""
        d, m = self.cfg.data, self.cfg.model
        base = ("split", str(Path(self.dataset.path).resolve()), name, max_rows, m.sasrec.max_len, prompt,
                d.eval_always if name != "train" else (), (rows, d.late_rows) if rows != "all" else ())
        if prompt == "none":
            return base
        at_last = prompt == "hybrid" and m.mapper.reads_text_template
        texts = tuple(Path(t).read_text() if Path(t).exists() else str(t) for t, _ in prompt_templates(self.cfg, prompt))
        return base + (texts, at_last, self.tokenizer_source, d.max_titles, d.max_tokens, m.mapper.num_tokens,
                       d.late_rows if prompt == "hybrid" and d.prompt_hybrid_unknown_item else None)

    def check_prompts_fit(self, prompt: str) -> None:
        """Refuse a data.max_tokens that no row's prompt can fit (the template with an empty title and no
        history titles is over it), before any phase trains: encoding a split would find it only when that
        phase starts."""
        if prompt == "none":
            return
        d, m = self.cfg.data, self.cfg.model
        for path, kind in prompt_templates(self.cfg, prompt):
            template = prompts_lib.Template.load(path, kind)
            try:  # one row: no history, an empty title
                prompts_lib.encode(template, self.tokenizer, [np.zeros(0, np.int64)], np.array([0]),
                                   np.array([""], dtype=object), max_titles=d.max_titles, max_tokens=d.max_tokens,
                                   num_soft_tokens=m.mapper.num_tokens, where=str(path))
            except prompts_lib.PromptTooLong as e:
                raise DataError(f"data.max_tokens={d.max_tokens} is too small for {prompt} prompts: {path} needs "
                                f"{e.tokens} tokens with no history titles and an empty title; raise "
                                f"data.max_tokens") from None

    def encode_rows(self, name: str, df: pd.DataFrame, prompt: str, max_rows: int = 0) -> SplitData:
        """Any table of canonical rows (a split, or rows to score) -> SplitData with its prompts."""
        d, m = self.cfg.data, self.cfg.model
        always = d.eval_always if name != "train" else ()
        data = SplitData.from_frame(name, df, m.sasrec.max_len, max_rows, train=self.dataset.splits["train"],
                                    always=always)
        if prompt != "none":
            template, *unknown = [prompts_lib.Template.load(path, kind) for path, kind in prompt_templates(self.cfg, prompt)]
            unknown_item = (unknown[0], ~np.isin(data.iid, self.seen_items())) if unknown else None
            data.prompts = prompts_lib.encode(
                template, self.tokenizer, data.histories, data.iid, self.dataset.titles(),
                max_titles=d.max_titles, max_tokens=d.max_tokens, num_soft_tokens=m.mapper.num_tokens,
                where=f"{self.dataset.path}/{name}", unknown_item=unknown_item)
            if prompt == "hybrid" and m.mapper.reads_text_template:  # the text template takes the vectors
                data.prompts = prompts_lib.at_last_position(data.prompts)
            if data.prompts.shortened:
                n = data.prompts.shortened
                print(f"{name}: {n} prompt{'s' if n != 1 else ''} over data.max_tokens={d.max_tokens} "
                      f"show{'s' if n == 1 else ''} fewer history titles")
        return data
