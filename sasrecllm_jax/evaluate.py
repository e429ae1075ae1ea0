"""One evaluate(): score every row of a split and report AUC / UAUC / log-loss for all, warm and cold rows.

Scoring is jitted once per batch shape (`Scorer`); batch b+1 is built on the host while the device
scores batch b. The ablation masks (`collab_inputs`) drop or shuffle the collaborative tokens.
"""
from __future__ import annotations

import threading
import time

import jax
import numpy as np

from sasrecllm_jax import metrics
from sasrecllm_jax.config import Config
from sasrecllm_jax.data import packing
from sasrecllm_jax.data.pipeline import BatchIterator, SplitData, make_batch
from sasrecllm_jax.errors import TrainingError


def collab_inputs(batch: dict, mode: str, seed: int) -> dict:
    """The ablation masks: drop (scale 0) or shuffle (a row permutation) the collaborative tokens."""
    if mode == "on" or "user_pos" not in batch:
        return batch
    B = len(batch["uid"])
    if mode == "drop":
        return {**batch, "collab_scale": np.zeros(B, np.float32)}
    return {**batch, "collab_perm": np.random.default_rng(seed).permutation(B).astype(np.int32)}


def batch_shape(batch: dict) -> str:
    """A batch's size as people read it: rows x tokens for prompts, rows for the ID encoder."""
    return "x".join(map(str, np.shape(batch["tokens"]))) if "tokens" in batch else f"{len(batch['uid'])} rows"


# jax's own timings of tracing, lowering and XLA compilation, summed while a CompileTimer times a first call
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
# the thread whose compilations are being summed, how many of its programs were looked up in the persistent
# compilation cache (requests) and how many were found there (hits)
_compiling = {"thread": None, "s": 0.0, "requests": 0, "hits": 0}


def _on_duration(event: str, duration: float, **_):
    if _compiling["thread"] == threading.get_ident() and event in _COMPILE_EVENTS:
        _compiling["s"] += duration


def _on_event(event: str, **_):
    if _compiling["thread"] == threading.get_ident():
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            _compiling["requests"] += 1
        elif event == "/jax/compilation_cache/cache_hits":
            _compiling["hits"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


class CompileTimer:
    """Times the first call of a jitted function at each batch shape (compilation plus one run) apart
    from the other calls, which stay asynchronous; the notice gives the compilation's share too, and says
    when the programs came from the persistent compilation cache instead (the share is then tracing and
    loading). The batch is the last argument. `notify(text)`, when set, hears of each compilation before
    it starts and when it ends, so a long silence has a reason."""

    def __init__(self, what: str = "step", notify=None):
        self.shapes: set = set()
        self.seconds = 0.0
        self.what, self.notify = what, notify

    def __call__(self, fn, *args):
        shape = tuple(sorted((k, np.shape(v)) for k, v in args[-1].items()))
        if shape in self.shapes:
            return fn(*args)
        jax.block_until_ready(args)  # work already in flight is not this shape's compilation
        size = batch_shape(args[-1])
        if self.notify is not None:
            self.notify(f"compiling the {self.what} for batches of {size} ...")
        t0 = time.perf_counter()
        _compiling.update(thread=threading.get_ident(), s=0.0, requests=0, hits=0)
        try:
            out = jax.block_until_ready(fn(*args))
        finally:
            _compiling["thread"] = None
        took = time.perf_counter() - t0
        self.seconds += took
        self.shapes.add(shape)
        if self.notify is not None:
            loaded = 0 < _compiling["requests"] == _compiling["hits"]  # every program came from the cache
            done = f"{'loaded' if loaded else 'compiled'} the {self.what} for {size}" + \
                (" from the compilation cache" if loaded else "")
            self.notify(f"{done} in {_compiling['s']:.1f} s (with its first batch {took:.1f} s)")
        return out


# On the CPU a scorer runs a batch of prompts this many rows at a time, inside one program: the activations
# of 16 rows stay in the caches where 64 rows' do not (faster per token, bench/RESULTS.md)
CPU_CHUNK_ROWS = 16


def in_chunks(apply, rows: int):
    """apply(params, batch) on a batch of prompts split into chunks of `rows` rows, one after another in one
    program (jax.lax.map); the whole batch at once when it has no more rows or does not divide, or when it
    shuffles the collaborative tokens across its rows (`collab_perm`)."""
    def fn(params, batch):
        B = len(batch["tokens"]) if "tokens" in batch else 0
        if not rows or B <= rows or B % rows or "collab_perm" in batch:
            return apply(params, batch)
        chunks = jax.tree_util.tree_map(lambda x: x.reshape(B // rows, rows, *x.shape[1:]), batch)
        out = jax.lax.map(lambda chunk: apply(params, chunk), chunks)
        return out.reshape(B, *out.shape[2:])
    return fn


class Scorer:
    """A jitted score function for one model; compiled once per batch shape."""

    def __init__(self, model, notify=None, chunk_rows: int | None = None):
        self.model = model
        rows = (CPU_CHUNK_ROWS if jax.default_backend() == "cpu" else 0) if chunk_rows is None else chunk_rows
        self._fn = jax.jit(in_chunks(lambda params, batch: model.apply({"params": params}, batch), rows))
        self.compile = CompileTimer("scorer", notify)

    def dispatch(self, params, batch) -> jax.Array:
        """Start scoring a batch on the device and return at once (JAX dispatches asynchronously)."""
        return self.compile(self._fn, params, batch)


def score_split(scorer: Scorer, params, data: SplitData, batch_size: int, pad_multiple: int,
                with_prompts: bool, collab: str = "on", progress=None, share_prefix: bool = False) -> np.ndarray:
    """Scores of every row. Batch b+1 is built on the host while the device scores batch b: the only
    wait is for results, one batch behind. With `share_prefix` (prompts; collaborative inputs kept or
    dropped, not shuffled), rows that share their prompt's start are scored in packs of batch_size
    sequences (sasrecllm_jax.data.packing)."""
    scores = np.full(len(data), np.nan)
    scored = np.zeros(len(data), bool)
    packs = None
    if share_prefix and with_prompts and collab in ("on", "drop") and len(data):  # shuffling mixes rows: not packed
        packs = packing.pack_split(data, pad_multiple)
    n = len(data) if packs is None else len(packs.rows)
    # a request smaller than a batch (`score`, `recommend` on a few candidates) gets a batch of the next power of
    # two, not batch_size rows of which all but a few are padding: few extra shapes, each compiled once
    batch_size = min(batch_size, 1 << max(n - 1, 0).bit_length())
    it = BatchIterator(data.lengths() if packs is None else packs.lengths, batch_size, seed=0, shuffle=False)
    pending = None

    def collect(job):
        idx, out = job
        out = np.asarray(out)
        if packs is None:
            rows, got = idx, out[: len(idx)]
        else:  # [batch, slots]: pack k's rows are its first slots
            rows = np.concatenate([packs.rows[k] for k in idx])
            got = np.concatenate([out[b, :len(packs.rows[k])] for b, k in enumerate(idx)])
        scores[rows] = got
        scored[rows] = True
        if progress is not None:
            progress.update(len(rows))

    for b in range(it.batches_per_epoch):
        idx = next(it)
        if packs is None:
            batch = collab_inputs(make_batch(data, idx, batch_size, pad_multiple, with_prompts), collab, seed=b)
            batch = {k: v for k, v in batch.items() if k not in ("row", "weight", "label")}
        else:
            batch = packing.make_pack_batch(data, packs, idx, batch_size, pad_multiple)
            if collab == "drop" and "user_pos" in batch:
                batch["collab_scale"] = np.zeros(batch_size, np.float32)
        job = (idx, scorer.dispatch(params, batch))
        if pending is not None:
            collect(pending)
        pending = job
    if pending is not None:
        collect(pending)
    if not scored.all():
        raise TrainingError(f"{data.name}: {int((~scored).sum())} of {len(data)} rows were never scored (batch size "
                            f"{batch_size}); this is a bug, not your data: please report it")
    return scores


ID_ROWS = 4096  # rows per call of id_rows


def id_rows(model, method, params: dict, data: SplitData) -> tuple[np.ndarray, ...]:
    """The outputs of `method` of model (a tuple of per-row arrays) on rows (his, uid, iid) of data, ID_ROWS
    rows per call (the last call padded with the first row, one compiled shape); no prompt is read."""
    fn = jax.jit(lambda p, b: model.apply({"params": p}, b, method=method))
    n = len(data)
    if n == 0:  # no rows: empty outputs of the shapes one row would give
        one = {k: np.zeros((1, *getattr(data, k).shape[1:]), getattr(data, k).dtype) for k in ("his", "uid", "iid")}
        return tuple(np.zeros((0, *o.shape[1:]), o.dtype) for o in jax.eval_shape(fn, params, one))
    rows = min(ID_ROWS, n)
    pad = lambda x: np.concatenate([x, np.repeat(x[:1], -n % rows, axis=0)]) if n % rows else x
    cols = {"his": pad(data.his), "uid": pad(data.uid), "iid": pad(data.iid)}
    parts = [jax.device_get(fn(params, {k: v[i:i + rows] for k, v in cols.items()})) for i in range(0, n, rows)]
    return tuple(np.concatenate([p[j] for p in parts])[:n] for j in range(len(parts[0])))


def id_terms(model, params: dict, data: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """(ID score, known) of every row of data for a hybrid `model`: what its residual fusion adds to the LLM's
    weighted log-odds, and whether each row's item is shown as its own."""
    score, known = id_rows(model, type(model).id_term, params, data)
    return np.asarray(score, np.float64), np.asarray(known, bool)


def id_only_rows(model, params, data: SplitData, prompt: str, collab: str) -> np.ndarray | None:
    """A hybrid whose LLM counts only on rows of unknown items (model.mapper.llm_gates: unknown_only) scores the
    others by its ID score alone: (that score, or NaN on the rows the LLM must read) for every row, or None for
    any other model, prompt or collaborative mode (dropped or shuffled inputs change which rows are known)."""
    mapper = getattr(getattr(model, "cfg", None), "mapper", None)
    if (prompt != "hybrid" or collab != "on" or mapper is None or mapper.fusion != "residual"
            or mapper.llm_gates != "unknown_only" or not hasattr(model, "id_term")):
        return None
    id_score, known = id_terms(model, params, data)
    return np.where(known, id_score, np.nan)


def score_rows(scorer: Scorer, params, data: SplitData, batch_size: int, pad_multiple: int, prompt: str,
               collab: str = "on", progress=None, share_prefix: bool = False) -> np.ndarray:
    """score_split of rows rendered with `prompt`, except that a hybrid whose LLM counts only on rows of unknown
    items runs its LLM on those rows alone (id_only_rows)."""
    score = lambda d: score_split(scorer, params, d, batch_size, pad_multiple, prompt != "none", collab, progress,
                                  share_prefix)
    scores = id_only_rows(scorer.model, params, data, prompt, collab)
    if scores is None:
        return score(data)
    llm = np.isnan(scores)
    if progress is not None:
        progress.update(int((~llm).sum()))
    if llm.any():
        scores[llm] = score(data.take(llm))
    return scores


def evaluate(scorer: Scorer, params, data: SplitData, cfg: Config, prompt: str, collab: str | None = None,
             progress=None) -> tuple[dict, np.ndarray]:
    """(metrics for each of data.parts(), every row's score) of `data` rendered with `prompt` ("none", "text",
    "hybrid"), in batches of train.eval_batch_size padded to data.pad_multiple; collaborative inputs as
    train.collab unless `collab` says otherwise (test-time ablations)."""
    scores = score_rows(scorer, params, data, cfg.train.eval_batch_size, cfg.data.pad_multiple, prompt,
                        collab or cfg.train.collab, progress, cfg.eval.share_prefix)
    return metrics.report(data.uid, data.label, scores, data.parts()), scores
