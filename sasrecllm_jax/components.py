"""Everything a run needs, built from a Config: dataset, backbone, tokenizer, models, initial params.

Only what trains is initialised; the LLM base is loaded (`jax.eval_shape` gives the tree to check
against, so a 1B model is never initialised just to be overwritten).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from sasrecllm_jax.config import Config, ConfigError, LlamaConfig
from sasrecllm_jax.data import prompts as prompts_lib
from sasrecllm_jax.data.dataset import DataError, Dataset, load_dataset, write_dataset
from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.models.hybrid import EncoderScorer, Hybrid, make_encoder
from sasrecllm_jax.models.lora import init_adapters
from sasrecllm_jax.models.llama import LlamaForCausalLM
from sasrecllm_jax.models.mapper import Mapper
from sasrecllm_jax.models.pop import counted_params
from sasrecllm_jax.train import partition
from sasrecllm_jax.weights.tokenizer import answer_token

LLM_METHODS = ("icl", "tallrec", "collm_mf", "sasrecllm")  # the methods that load an LLM
SHARED_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m-collm" / "ml-1m.zip"
RUNTIME_FIELDS = ("param_dtype", "dtype", "attention", "remat", "scan_unroll")  # may differ from the loaded weights


def resolve_dataset(cfg: Config) -> Dataset:
    """A prepared folder, or a named dataset prepared on first use under data.data_dir."""
    d = cfg.data
    path = Path(d.dataset)
    if (path / "dataset.json").exists():
        return load_dataset(path)
    out = Path(d.data_dir) / d.dataset
    if (out / "dataset.json").exists():
        return load_dataset(out)
    from data_tools import collm, movielens
    if d.dataset == "ml100k":
        built = movielens.prepare_ml100k(None, 0.1, 0.1)
    elif d.dataset == "ml1m-collm" and SHARED_ML1M.exists():
        built = collm.prepare_collm(SHARED_ML1M, trust_pickle=True)  # the project's own shared copy
    else:
        raise DataError(f"data.dataset = {d.dataset!r} is neither a prepared folder nor a dataset that can be "
                        f"prepared automatically (ml100k, ml1m-collm); run `python -m data_tools prepare ...` first")
    splits, items, source, recipe = built
    print(f"preparing {d.dataset} into {out} ...")
    write_dataset(out, splits, items, source=source, recipe=recipe)
    return load_dataset(out)


@dataclasses.dataclass
class HostCache:
    """Host-side inputs that runs in one process share (the experiment grid runs every method in one):
    dequantized backbone weights, tokenizers and encoded splits, keyed by everything that shapes them.
    Host arrays only: the device copies are made per run, because the train step donates its inputs."""
    items: dict = dataclasses.field(default_factory=dict)

    def get(self, key: tuple, make):
        if key not in self.items:
            self.items[key] = make()
        return self.items[key]


def _memo(cache: HostCache | None, key: tuple, make):
    return cache.get(key, make) if cache is not None else make()


def weights_source(path: Path) -> tuple:
    """A weights file or folder by path, sizes and modification times: what a cached copy is keyed by."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return str(path.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


def load_backbone(cfg: Config, key, cache: HostCache | None = None) -> tuple[LlamaConfig, dict, object, tuple]:
    """(llm config, base params, tokenizer, the weights' identity) from model.weights."""
    m = cfg.model
    preset = m.llama()
    runtime = {k: getattr(preset, k) for k in RUNTIME_FIELDS}
    w = m.weights
    if w == "random":
        if preset.vocab_size != 256:
            raise ConfigError(f"model.weights: random is for DEBUG_TINY-sized models with the byte tokenizer "
                              f"(vocab 256); {m.llm} has vocab {preset.vocab_size}: point model.weights at real weights")
        params = jax.jit(LlamaForCausalLM(preset).init)(key, jnp.zeros((1, 4), jnp.int32))["params"]
        return preset, params, prompts_lib.byte_tokenizer(), ("byte",)
    from sasrecllm_jax.weights.convert import hf_to_params
    from sasrecllm_jax.weights.gguf import read_gguf
    from sasrecllm_jax.weights.hf_folder import read_hf_folder
    from sasrecllm_jax.weights.tokenizer import load_tokenizer
    if w == "smollm2":
        from data_tools import fetch
        path = fetch.smollm2_gguf()
    else:
        path = Path(w)
        if not path.exists():
            raise ConfigError(f"model.weights = {w!r}: no such file or folder; use smollm2, random, a .gguf file "
                              f"or a Hugging Face folder (python -c 'from sasrecllm_jax.weights import hub; hub.download()')")
    source = weights_source(path)
    file_cfg, tensors = _memo(cache, ("weights", source),
                              lambda: read_hf_folder(path) if path.is_dir() else read_gguf(path)[:2])
    llm_cfg = dataclasses.replace(file_cfg, **runtime)
    arch = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in RUNTIME_FIELDS + ("max_position_embeddings",)}
    if arch(llm_cfg) != arch(preset):
        diff = {k: (v, arch(llm_cfg)[k]) for k, v in arch(preset).items() if arch(llm_cfg)[k] != v}
        raise ConfigError(f"model.llm = {m.llm} but {path} holds another architecture {diff} (preset, weights); "
                          f"set model.llm to the matching preset")
    tokenizer = _memo(cache, ("tokenizer", source), lambda: load_tokenizer(path))
    return llm_cfg, hf_to_params(tensors, llm_cfg, str(path)), tokenizer, source


@dataclasses.dataclass
class Components:
    cfg: Config
    dataset: Dataset
    llm_cfg: LlamaConfig | None = None
    base_llm: dict | None = None
    tokenizer: object = None
    answer_ids: tuple[int, int] = (0, 0)
    host_cache: HostCache | None = None
    tokenizer_source: tuple = ()       # which tokenizer encoded the prompts (part of a shared split's key)
    _splits: dict = dataclasses.field(default_factory=dict)

    @staticmethod
    def build(cfg: Config, needs_llm: bool, key=None, host_cache: HostCache | None = None) -> "Components":
        comp = Components(cfg, resolve_dataset(cfg), host_cache=host_cache)
        if needs_llm:
            comp.llm_cfg, comp.base_llm, comp.tokenizer, comp.tokenizer_source = load_backbone(
                cfg, key if key is not None else jax.random.key(0), host_cache)
            comp.answer_ids = (answer_token(comp.tokenizer, cfg.data.answer_yes),
                               answer_token(comp.tokenizer, cfg.data.answer_no))
        return comp

    @staticmethod
    def for_run(cfg: Config, host_cache: HostCache | None = None) -> tuple["Components", dict]:
        """The components and initial parameters of a run, from train.seed alone. Training and every later
        reader of the run (scoring, ablations) call this, so a randomly initialised LLM base, which no
        checkpoint stores, is the same base for all of them."""
        key = jax.random.key(cfg.train.seed)
        comp = Components.build(cfg, cfg.train.method in LLM_METHODS, jax.random.fold_in(key, 0), host_cache)
        return comp, comp.init_params(jax.random.fold_in(key, 1))

    @property
    def num_users(self) -> int:
        return self.dataset.num_users

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    def row_limit(self, kind: str) -> int:
        """data.max_rows[kind], with data.cpu_max_rows on top when running on the CPU backend."""
        d = self.cfg.data
        limits = {**d.max_rows, **(d.cpu_max_rows if jax.default_backend() == "cpu" else {})}
        unknown = set(limits) - {"train", "eval"}
        if unknown:
            raise ConfigError(f"data.max_rows / data.cpu_max_rows: unknown key(s) {sorted(unknown)}; use train, eval")
        return int(limits.get(kind, 0))

    def split(self, name: str, prompt: str, max_rows: int = 0) -> SplitData:
        """A split of the dataset, encoded for this prompt kind (cached)."""
        key = (name, prompt, max_rows)
        if key not in self._splits:
            make = lambda: self.encode_rows(name, self.dataset.splits[name], prompt, max_rows)
            self._splits[key] = _memo(self.host_cache, self._split_key(name, prompt, max_rows), make)
        return self._splits[key]

    def _split_key(self, name: str, prompt: str, max_rows: int) -> tuple:
        """Everything an encoded split depends on (for sharing it between runs of one process)."""
        d, m = self.cfg.data, self.cfg.model
        base = ("split", str(Path(self.dataset.path).resolve()), name, max_rows, m.sasrec.max_len, prompt)
        if prompt == "none":
            return base
        template = Path(d.prompt_hybrid if prompt == "hybrid" else d.prompt_text)
        return base + (template.read_text() if template.exists() else str(template), self.tokenizer_source,
                       d.max_titles, d.max_tokens, m.mapper.num_tokens)

    def encode_rows(self, name: str, df, prompt: str, max_rows: int = 0) -> SplitData:
        """Any table of canonical rows (a split, or rows to score) -> SplitData with its prompts."""
        d, m = self.cfg.data, self.cfg.model
        data = SplitData.from_frame(name, df, m.sasrec.max_len, max_rows)
        if prompt != "none":
            template = prompts_lib.Template.load(d.prompt_hybrid if prompt == "hybrid" else d.prompt_text, prompt)
            data.prompts = prompts_lib.encode(
                template, self.tokenizer, data.histories, data.iid, self.dataset.titles(),
                max_titles=d.max_titles, max_tokens=d.max_tokens, num_soft_tokens=m.mapper.num_tokens,
                where=f"{self.dataset.path}/{name}")
            if data.prompts.shortened:
                print(f"{name}: {data.prompts.shortened} prompts over data.max_tokens={d.max_tokens} "
                      f"show fewer history titles")
        return data

    def model(self, prompt: str, deterministic: bool, frozen=()):
        m = self.cfg.model
        if prompt == "none":
            return EncoderScorer(m, self.num_users, self.num_items, deterministic)
        return Hybrid(m, self.llm_cfg, self.num_users, self.num_items, self.answer_ids, m.lora,
                      deterministic, tuple(frozen))

    def init_params(self, key) -> dict:
        """Fresh encoder, mapper and LoRA parameters around the loaded LLM base."""
        m = self.cfg.model
        k_enc, k_map, k_lora = jax.random.split(key, 3)
        L = m.sasrec.max_len
        dummy = (jnp.zeros((1, L), jnp.int32), jnp.ones((1,), jnp.int32), jnp.ones((1,), jnp.int32))
        # jitted: one compilation, instead of one per operation of an eager init (seconds per run)
        encoder = make_encoder(m, self.num_users, self.num_items, True)
        params = {m.encoder: jax.jit(encoder.init)(k_enc, *dummy)["params"]}
        counted = counted_params(m, self.dataset.splits["train"], self.num_users, self.num_items,
                                 f"{self.dataset.path}/train.parquet")
        params[m.encoder] = {**params[m.encoder], **jax.tree_util.tree_map(jnp.asarray, counted)}
        if self.llm_cfg is None:
            return params
        d_enc = m.sasrec.hidden if m.encoder == "sasrec" else m.mf.dim
        params["mapper"] = jax.jit(Mapper(m.mapper, self.llm_cfg.hidden_size).init)(k_map, jnp.zeros((1, d_enc)))["params"]
        batch = {"tokens": jnp.zeros((1, 8), jnp.int32), "mask": jnp.ones((1, 8), jnp.int32),
                 "user_pos": jnp.zeros((1,), jnp.int32), "item_pos": jnp.full((1,), 2, jnp.int32),
                 "his": dummy[0], "uid": dummy[1], "iid": dummy[2]}
        abstract = jax.eval_shape(self.model("hybrid", True).init, key, batch)["params"]
        params["llm"] = partition.merge(self.base_llm, init_adapters(abstract["llm"], k_lora, m.lora))
        want = jax.tree_util.tree_map(lambda x: (x.shape, jnp.dtype(x.dtype)), abstract)
        have = jax.tree_util.tree_map(lambda x: (x.shape, jnp.dtype(x.dtype)), params)
        if want != have:
            raise ConfigError("the loaded weights do not fit the model built from the config; check model.llm "
                              "and model.llm_overrides against the checkpoint")
        return params


def prompt_groups(prompt: str, encoder: str) -> set[str]:
    """Top-level param keys a model of this prompt kind reads."""
    return {"none": {encoder}, "text": {"llm"}, "hybrid": {encoder, "mapper", "llm"}}[prompt]

