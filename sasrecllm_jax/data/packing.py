"""Shared-prefix packing for scoring: rows whose prompts agree up to the target are scored in one sequence.

The rows of one user with one history render the same prompt up to the target: a split has about 1.5-2
rows per (user, history), a ranking 100 (one positive and its 99 candidates). Scored one row per
sequence, that common start is computed once per row. A pack holds it once, then each row's rest (its
suffix) one after another; the model lets each suffix attend to the prefix and to itself only, at the
positions its tokens have in its own prompt, so every row's score is the one it gets alone, up to float
rounding (`eval.share_prefix`).

A pack's length never exceeds the longest row of the split (rounded up to data.pad_multiple), so packing
compiles no batch shape that unpacked scoring would not. Training packs the same way (data.pack_train): a
pack's rows carry their labels, and the loss over its slots is the unpacked rows' loss.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sasrecllm_jax.data.pipeline import Padding, SplitData, padded_length, placeholder_starts

MAX_SLOTS = 16  # rows per pack (the scorer's output is [batch, MAX_SLOTS])


@dataclasses.dataclass
class Packs:
    rows: list[np.ndarray]             # per pack: the split's rows it scores, in slot order
    prefix: np.ndarray                 # [P] tokens shared by the pack's rows
    lengths: np.ndarray                # [P] the pack's tokens: prefix + every suffix


def common_prefix(tokens: list[np.ndarray]) -> int:
    """The number of leading tokens all of `tokens` share."""
    n = min(len(t) for t in tokens)
    first = tokens[0][:n]
    same = np.ones(n, bool)
    for t in tokens[1:]:
        same &= t[:n] == first
    return int(np.argmin(same)) if not same.all() else n


def pack_rows(data: SplitData, cap: int, max_slots: int = MAX_SLOTS) -> Packs:
    """Group the rows of `data` by (user, history) and pack each group into sequences of at most `cap` tokens.
    A group's prefix stops before any row's last token (each row keeps a logit position of its own) and
    before its target's placeholder; it must contain the user's placeholder, or its rows go alone."""
    p = data.prompts
    lengths = p.lengths
    hybrid = p.num_soft_tokens > 0
    # a row whose item shows no placeholder (data.prompt_hybrid_unknown_item) renders another template: its own group
    keys = np.concatenate([data.uid[:, None].astype(np.int64), data.his.astype(np.int64),
                           (p.item_pos < 0)[:, None].astype(np.int64)], axis=1)
    item_end = np.where(p.item_pos >= 0, p.item_pos, lengths - 1)  # where a row's own tokens start at the latest
    _, group = np.unique(keys, axis=0, return_inverse=True)
    order = np.argsort(group.reshape(-1), kind="stable")
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], group.reshape(-1)[order]])))
    rows_out, prefix_out, length_out = [], [], []

    def emit(rows: list[int], prefix: int):
        rows_out.append(np.asarray(rows, np.int64))
        prefix_out.append(prefix)
        length_out.append(prefix + int(sum(lengths[r] - prefix for r in rows)))

    for members in np.split(order, starts[1:]):
        members = [int(r) for r in members]
        prefix = min(common_prefix([p.tokens[r] for r in members]), int(lengths[members].min()) - 1)
        if hybrid:
            prefix = min(prefix, int(item_end[members].min()))
            user_pos = p.user_pos[members]
            if (user_pos != user_pos[0]).any() or (user_pos[0] >= 0 and prefix < user_pos[0] + p.num_soft_tokens):
                # the user's placeholder is not in a common start: e.g. histories cut to different lengths
                for r in members:
                    emit([r], min(int(lengths[r]) - 1, int(item_end[r])))
                continue
        pack, used = [], prefix
        for r in members:
            suffix = int(lengths[r]) - prefix
            if pack and (used + suffix > cap or len(pack) == max_slots):
                emit(pack, prefix)
                pack, used = [], prefix
            pack.append(r)
            used += suffix
        emit(pack, prefix)
    return Packs(rows_out, np.asarray(prefix_out, np.int64), np.asarray(length_out, np.int64))


def pack_split(data: SplitData, pad_multiple: int) -> Packs:
    """pack_rows of data with packs no longer than its longest row rounded up to pad_multiple: no batch shape
    that its rows unpacked would not have."""
    return pack_rows(data, padded_length(data.lengths().max(), pad_multiple))


def make_pack_batch(data: SplitData, packs: Packs, idx: np.ndarray, batch_size: int, pad: Padding | int,
                    max_slots: int = MAX_SLOTS, pad_id: int = 0, labels: bool = False) -> dict[str, np.ndarray]:
    """A fixed-size batch of packs idx (filler packs repeat idx[0]), padded as `pad` says (a Padding; an int
    is data.pad_multiple). Per token: `tokens`, `positions` (in the token's own row), `segment` (0 prefix,
    j + 1 the suffix of slot j, -1 padding). Per pack: `uid`, `his` and `user_pos` (hybrid prompts). Per slot
    [batch, max_slots]: `iid`, `last` (the position whose logits score the slot's row), `item_pos` (hybrid;
    T for empty slots, so nothing is written) and, with `labels` (training), `label` and `weight` (1 for
    the rows of the real packs, 0 for empty slots and filler packs)."""
    p = data.prompts
    full = np.concatenate([idx, np.full(batch_size - len(idx), idx[0], idx.dtype)]) if len(idx) < batch_size else idx
    T = (pad if isinstance(pad, Padding) else Padding(pad)).length(packs.lengths[full].max())
    tokens = np.full((batch_size, T), pad_id, np.int32)
    positions = np.zeros((batch_size, T), np.int32)
    segment = np.full((batch_size, T), -1, np.int32)
    iid = np.zeros((batch_size, max_slots), np.int32)
    last = np.zeros((batch_size, max_slots), np.int32)
    item_pos = np.full((batch_size, max_slots), T, np.int32)
    heads = np.array([packs.rows[k][0] for k in full])
    for b, k in enumerate(full):
        rows, pre = packs.rows[k], int(packs.prefix[k])
        tokens[b, :pre] = p.tokens[rows[0]][:pre]
        positions[b, :pre] = np.arange(pre)
        segment[b, :pre] = 0
        at = pre
        for j, r in enumerate(rows):
            suffix = p.tokens[r][pre:]
            n = len(suffix)
            tokens[b, at:at + n] = suffix
            positions[b, at:at + n] = np.arange(pre, pre + n)
            segment[b, at:at + n] = j + 1
            last[b, j] = at + n - 1
            iid[b, j] = data.iid[r]
            if p.item_pos[r] >= 0:
                item_pos[b, j] = at + p.item_pos[r] - pre
            at += n
    batch = {"tokens": tokens, "positions": positions, "segment": segment, "last": last, "iid": iid,
             "uid": data.uid[heads], "his": data.his[heads]}
    if labels:
        label = np.zeros((batch_size, max_slots), np.float32)
        weight = np.zeros((batch_size, max_slots), np.float32)
        for b, k in enumerate(idx):  # the real packs only: filler packs weigh nothing
            rows = packs.rows[k]
            label[b, :len(rows)] = data.label[rows]
            weight[b, :len(rows)] = 1.0
        batch.update(label=label, weight=weight)
    if p.num_soft_tokens:
        batch.update(user_pos=placeholder_starts(p.user_pos[heads], T), item_pos=item_pos)
    return batch
