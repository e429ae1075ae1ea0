"""From a canonical split to device-ready batches.

`SplitData` holds one split's arrays (ids, labels, left-padded SASRec histories and, when the phase
uses prompts, the tokenized prompts). `BatchIterator` yields index batches: shuffled by (seed, epoch),
grouped by prompt length so padding stays small, resumable from `state()`. `make_batch` pads a
batch to a fixed row count (filler rows have weight 0) and right-pads its prompts to one of a few
lengths (`Padding`: multiples of data.pad_multiple or, for training with data.pad_lengths, lengths chosen
from the phase's prompts), so only a few shapes are ever compiled.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from sasrecllm_jax.data.prompts import EncodedPrompts

WINDOW_BATCHES = 32  # length-sort within windows of this many batches: keeps order random across windows


@dataclasses.dataclass
class SplitData:
    name: str
    uid: np.ndarray
    iid: np.ndarray
    label: np.ndarray
    not_cold: np.ndarray
    his: np.ndarray                    # [N, max_len] left-padded (0 = pad)
    histories: list[np.ndarray]        # full positive histories (prompt titles)
    new_user: np.ndarray | None = None  # [N] bool: the row's user has no train row
    new_item: np.ndarray | None = None  # [N] bool: the row's item has no train row
    prompts: EncodedPrompts | None = None

    def __len__(self) -> int:
        return len(self.uid)

    @staticmethod
    def from_frame(name: str, df: pd.DataFrame, max_len: int, max_rows: int = 0,
                   train: pd.DataFrame | None = None, always: tuple[str, ...] = ()) -> "SplitData":
        """The rows of `df` (a seeded subset of max_rows of them when set, plus every row of the parts named in
        `always`); with `train`, each row's cause of coldness (new user, new item) against it."""
        if max_rows and len(df) > max_rows:  # a seeded subset: capped runs always see the same rows
            keep = np.zeros(len(df), bool)
            for part in always:
                keep |= row_parts(df, train)[part]
            rest = df[~keep]
            df = pd.concat([df[keep], rest.sample(n=min(max_rows, len(rest)), random_state=0)]).sort_index() \
                if always else df.sample(n=max_rows, random_state=0).sort_index()
        his = np.zeros((len(df), max_len), np.int32)
        for r, h in enumerate(df["his"]):
            h = h[-max_len:]
            if len(h):
                his[r, max_len - len(h):] = h
        new_user = new_item = None
        if train is not None:
            new_user = ~df["uid"].isin(train["uid"]).to_numpy()
            new_item = ~df["iid"].isin(train["iid"]).to_numpy()
        return SplitData(name, df["uid"].to_numpy(np.int32), df["iid"].to_numpy(np.int32),
                         df["label"].to_numpy(np.float32), df["not_cold"].to_numpy(np.int8), his,
                         list(df["his"]), new_user, new_item)

    def take(self, rows: np.ndarray) -> "SplitData":
        """The split's rows `rows` (a boolean mask or indices), prompts included, in that order."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        pick = lambda a: None if a is None else a[idx]
        prompts = None if self.prompts is None else dataclasses.replace(
            self.prompts, tokens=[self.prompts.tokens[i] for i in idx], user_pos=self.prompts.user_pos[idx],
            item_pos=self.prompts.item_pos[idx])
        return dataclasses.replace(self, uid=self.uid[idx], iid=self.iid[idx], label=self.label[idx],
                                   not_cold=self.not_cold[idx], his=self.his[idx],
                                   histories=[self.histories[i] for i in idx], new_user=pick(self.new_user),
                                   new_item=pick(self.new_item), prompts=prompts)

    def parts(self) -> dict[str, np.ndarray]:
        """The row sets metrics are reported on (metrics.PARTS): all, warm, cold and, when the causes are
        known, new_user (the user has no train row) and new_item (the item has no train row)."""
        warm = self.not_cold.astype(bool)
        out = {"all": np.ones(len(self), bool), "warm": warm, "cold": ~warm}
        if self.new_user is not None:
            out.update(new_user=self.new_user, new_item=self.new_item)
        return out

    def lengths(self) -> np.ndarray:
        return self.prompts.lengths if self.prompts is not None else np.ones(len(self), np.int64)


def row_parts(df: pd.DataFrame, train: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """The row masks of a canonical table by part: warm, cold (not_cold), new_user, new_item (against train)."""
    warm = df["not_cold"].to_numpy().astype(bool)
    out = {"warm": warm, "cold": ~warm}
    if train is not None:
        out.update(new_user=~df["uid"].isin(train["uid"]).to_numpy(), new_item=~df["iid"].isin(train["iid"]).to_numpy())
    return out


class BatchIterator:
    """Index batches over one split; the order is a pure function of (seed, epoch)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, *, shuffle: bool = True):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_batches(0)

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:  # evaluation: sorted by length, every row exactly once
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + bs] for i in range(0, n, bs)]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n)
        batches = []
        window = bs * WINDOW_BATCHES
        for w in range(0, n, window):
            chunk = perm[w:w + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + bs] for i in range(0, len(chunk), bs)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._epoch_batches(self.epoch)
        batch = self._order[self.position]
        self.position += 1
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def restore(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"iterator state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_batches(self.epoch)


def padded_length(n: int, multiple: int) -> int:
    """n tokens rounded up to a multiple of data.pad_multiple: the length a batch is padded to."""
    return -(-int(n) // multiple) * multiple


BUCKET_ALIGN = 8  # data.pad_lengths chooses multiples of this


def length_buckets(lengths: np.ndarray, count: int, align: int = BUCKET_ALIGN) -> tuple[int, ...]:
    """At most `count` lengths (multiples of align, the longest holding max(lengths)) that minimise the token
    slots of padding every row, its length rounded up to align, to the shortest of them that holds it: an
    exact dynamic programme. (A batch pads to its longest row; batches are grouped by length, so the rows'
    padding is what a batch's comes to, up to that spread.)"""
    rounded = -(-np.asarray(lengths, np.int64) // align) * align
    if not len(rounded):
        return ()
    cand, counts = np.unique(rounded, return_counts=True)
    below = np.concatenate([[0], np.cumsum(counts)])  # below[j]: rows whose rounded length is < cand[j]
    m, k_max = len(cand), max(1, min(count, len(cand)))
    # cost[k, j]: fewest slots for the rows up to cand[j] with k + 1 lengths, the longest cand[j]
    cost = np.full((k_max, m), np.inf)
    back = np.zeros((k_max, m), np.int64)
    cost[0] = below[1:] * cand
    for k in range(1, k_max):
        for j in range(k, m):
            options = cost[k - 1, :j] + (below[j + 1] - below[1:j + 1]) * cand[j]
            back[k, j] = int(np.argmin(options))
            cost[k, j] = options[back[k, j]]
    k = int(np.argmin(cost[:, m - 1]))
    out, j = [], m - 1
    while True:
        out.append(int(cand[j]))
        if k == 0:
            break
        j, k = int(back[k, j]), k - 1
    return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class Padding:
    """The length a batch's prompts are padded to: the shortest of `lengths` that holds its longest row, else
    (no lengths, or a longer row) the next multiple of `multiple` (data.pad_multiple)."""
    multiple: int
    lengths: tuple[int, ...] = ()

    @staticmethod
    def for_training(data: SplitData, data_cfg, lengths: np.ndarray | None = None) -> "Padding":
        """A phase's: with data.pad_lengths N, N lengths chosen once from its train rows' prompts (or from
        `lengths`, its packs' when it trains on packs)."""
        if not data_cfg.pad_lengths or data.prompts is None:
            return Padding(data_cfg.pad_multiple)
        return Padding(data_cfg.pad_multiple,
                       length_buckets(data.lengths() if lengths is None else lengths, data_cfg.pad_lengths))

    def length(self, n: int) -> int:
        fits = [b for b in self.lengths if b >= n]
        return fits[0] if fits else padded_length(n, self.multiple)


def make_batch(data: SplitData, idx: np.ndarray, batch_size: int, pad: Padding | int,
               with_prompts: bool, pad_id: int = 0) -> dict[str, np.ndarray]:
    """A fixed-size batch: rows idx (filler rows repeat row idx[0] with weight 0), its prompts padded as
    `pad` says (a Padding; an int is data.pad_multiple)."""
    n = len(idx)
    full = np.concatenate([idx, np.full(batch_size - n, idx[0], idx.dtype)]) if n < batch_size else idx
    batch = {"uid": data.uid[full], "iid": data.iid[full], "his": data.his[full], "label": data.label[full],
             "weight": (np.arange(batch_size) < n).astype(np.float32), "row": full.astype(np.int32)}
    if with_prompts:
        p = data.prompts
        T = max(len(p.tokens[i]) for i in full)
        T = (pad if isinstance(pad, Padding) else Padding(pad)).length(T)
        tokens = np.full((batch_size, T), pad_id, np.int32)
        mask = np.zeros((batch_size, T), np.int32)
        for r, i in enumerate(full):
            tokens[r, :len(p.tokens[i])] = p.tokens[i]
            mask[r, :len(p.tokens[i])] = 1
        batch.update(tokens=tokens, mask=mask)
        if p.num_soft_tokens:  # hybrid prompts; a row without a placeholder gets position T: nothing is written
            batch.update(user_pos=placeholder_starts(p.user_pos[full], T), item_pos=placeholder_starts(p.item_pos[full], T))
    return batch


def placeholder_starts(pos: np.ndarray, T: int) -> np.ndarray:
    """Placeholder positions for a batch of T tokens: a row without the placeholder (-1) gets T."""
    return np.where(pos >= 0, pos, T).astype(np.int32)
