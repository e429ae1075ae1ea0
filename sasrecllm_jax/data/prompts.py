"""Prompt templates and their tokenization.

A template is a text file with `{history}` (the most recent liked titles, quoted, oldest first),
`{target}` (the target title) and, for hybrid prompts, the markers `<UserID>` and `<ItemID>`, each of
which becomes k placeholder positions whose embeddings the model replaces with mapped vectors. Rows whose
target item the ID model knows nothing of may use a second hybrid template (`<UserID>` alone, or none).
Text segments are tokenized separately, so a marker never merges with its neighbours.
"""
from __future__ import annotations

import dataclasses
import re
import string
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from sasrecllm_jax.errors import DataError

MARKERS = ("<UserID>", "<ItemID>")
_SPLIT = re.compile("(" + "|".join(map(re.escape, MARKERS)) + ")")
NO_HISTORY = "(none yet)"


class PromptTooLong(DataError):
    """A row whose prompt is over data.max_tokens even without history titles; `tokens`: what it needs."""

    def __init__(self, message: str, tokens: int):
        super().__init__(message)
        self.tokens = tokens


@dataclasses.dataclass(frozen=True)
class Template:
    segments: tuple[str, ...]          # text pieces between markers
    markers: tuple[str, ...]           # the markers in order (empty for text prompts)

    @staticmethod
    def load(path: str | Path, kind: str) -> "Template":
        path = Path(path)
        if not path.exists() and not path.is_absolute():  # configs/... also works outside the repo root
            path = Path(__file__).resolve().parents[2] / path
        if not path.exists():
            raise DataError(f"prompt template {path} does not exist; see configs/prompts/ for examples")
        text = path.read_text().rstrip("\n")
        parts = _SPLIT.split(text)
        segments, markers = tuple(parts[0::2]), tuple(parts[1::2])
        fields = []
        for seg in segments:
            try:
                fields += [f for _, f, _, _ in string.Formatter().parse(seg) if f is not None]
            except ValueError as e:
                raise DataError(f"{path}: {e} in the template; write a literal brace as {{{{ or }}}}") from None
        other = [f for f in fields if f not in ("history", "target")]
        if other:
            raise DataError(f"{path}: the template has a field {{{other[0]}}}; it may hold {{history}} and "
                            f"{{target}} only (write a literal brace as {{{{ or }}}})")
        for field in ("history", "target"):
            if field not in fields:
                raise DataError(f"{path}: the template has no {{{field}}} field")
        if kind == "unknown_item":  # data.prompt_hybrid_unknown_item: the item is shown by its title alone
            if markers not in ((), MARKERS[:1]):
                raise DataError(f"{path}: a template for rows whose item is unknown (data.prompt_hybrid_unknown_item) "
                                f"holds {MARKERS[0]} or no marker, found {list(markers)}")
            return Template(segments, markers)
        want = MARKERS if kind == "hybrid" else ()
        if markers != want:
            raise DataError(f"{path}: a {kind} template needs the markers {list(want)} in this order, "
                            f"found {list(markers)}")
        return Template(segments, markers)


def history_text(titles: list[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles) if titles else NO_HISTORY


@dataclasses.dataclass
class EncodedPrompts:
    """Token ids of every row's prompt, ragged, plus where the placeholders start."""
    tokens: list[np.ndarray]
    user_pos: np.ndarray               # [N] first position of the user placeholder (-1: the row has none)
    item_pos: np.ndarray
    shortened: int                     # rows whose oldest titles were dropped to fit max_tokens
    num_soft_tokens: int = 0           # positions per placeholder (0: text prompts; 1 and no placeholder
                                       # tokens: text prompts whose last position takes the vectors)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])


def encode(template: Template, tokenizer, histories: list[np.ndarray], targets: np.ndarray, titles: np.ndarray,
           *, max_titles: int, max_tokens: int, num_soft_tokens: int, placeholder_id: int = 0,
           where: str = "prompts", unknown_item: tuple[Template, np.ndarray] | None = None) -> EncodedPrompts:
    """Render and tokenize every row. A row over max_tokens drops its oldest titles until it fits. With
    `unknown_item` = (template, rows [N] bool), those rows are rendered with that template instead (a row
    without a marker has position -1 for it)."""
    n = len(targets)
    shown = [min(len(h), max_titles) for h in histories]
    out: list[np.ndarray | None] = [None] * n
    user_pos = np.full(n, -1, np.int64)
    item_pos = np.full(n, -1, np.int64)
    shortened: set[int] = set()
    groups = [(template, np.arange(n))]
    if unknown_item is not None:
        other, rows = unknown_item
        groups = [(template, np.flatnonzero(~rows)), (other, np.flatnonzero(rows))]
    for tmpl, todo in groups:
        _render(tmpl, tokenizer, histories, targets, titles, todo, shown, out, user_pos, item_pos, shortened,
                max_tokens=max_tokens, num_soft_tokens=num_soft_tokens, placeholder_id=placeholder_id, where=where)
    return EncodedPrompts(out, user_pos, item_pos, len(shortened),  # type: ignore[arg-type]
                          num_soft_tokens if template.markers else 0)


def at_last_position(prompts: EncodedPrompts) -> EncodedPrompts:
    """Text prompts marked for model.mapper.inject: last: the collaborative vectors are added at each row's
    last position (item_pos; no user position, no placeholder token)."""
    return dataclasses.replace(prompts, user_pos=np.full(len(prompts.tokens), -1, np.int64),
                               item_pos=prompts.lengths - 1, num_soft_tokens=1)


def _render(template: Template, tokenizer, histories, targets, titles, todo: np.ndarray, shown: list[int],
            out: list, user_pos: np.ndarray, item_pos: np.ndarray, shortened: set[int], *, max_tokens: int,
            num_soft_tokens: int, placeholder_id: int, where: str) -> None:
    """Render and tokenize rows `todo` with one template into out / user_pos / item_pos (in place)."""
    while len(todo):
        rendered = [[seg.format(history=history_text([titles[i] for i in histories[r][len(histories[r]) - shown[r]:]]),
                                target=titles[targets[r]]) if "{" in seg or "}" in seg else seg
                     for seg in template.segments] for r in todo]
        encoded = [tokenizer.encode_batch([row[s] for row in rendered], add_special_tokens=(s == 0))
                   for s in range(len(template.segments))]
        retry = []
        for j, r in enumerate(todo):
            pieces, pos = [], 0
            for s in range(len(template.segments)):
                ids = encoded[s][j].ids
                pieces.append(np.asarray(ids, np.int32))
                pos += len(ids)
                if s < len(template.markers):
                    (user_pos if template.markers[s] == "<UserID>" else item_pos)[r] = pos
                    pieces.append(np.full(num_soft_tokens, placeholder_id, np.int32))
                    pos += num_soft_tokens
            if pos > max_tokens:
                if shown[r] == 0:
                    raise PromptTooLong(f"{where}: row {r} needs {pos} tokens even without history titles, "
                                        f"over data.max_tokens={max_tokens}; raise data.max_tokens", pos)
                shown[r] -= 1
                shortened.add(int(r))
                retry.append(r)
            else:
                out[r] = np.concatenate(pieces)
        todo = np.asarray(retry, dtype=np.int64)


def byte_tokenizer():
    """A 256-token byte-level tokenizer for DEBUG_TINY models with random weights (tests, smoke runs)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok
