"""A Config assembled into what a run reads: the dataset, the LLM backbone, encoded splits, models and
initial parameters. Training, scoring and the ablations all start here, so they cannot drift apart."""
from __future__ import annotations

import dataclasses

import jax

from sasrecllm_jax.config import Config
from sasrecllm_jax.data.dataset import Dataset
from sasrecllm_jax.data.encode import SplitEncoder, row_limit
from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.data.registry import resolve_dataset
from sasrecllm_jax.host_cache import HostCache
from sasrecllm_jax.models.factory import ModelFactory
from sasrecllm_jax.weights.backbone import Backbone, load_backbone

LLM_METHODS = ("icl", "tallrec", "collm_mf", "sasrecllm")  # the methods that load an LLM


@dataclasses.dataclass
class Assembly:
    cfg: Config
    dataset: Dataset
    backbone: Backbone | None
    encoder: SplitEncoder
    models: ModelFactory

    @staticmethod
    def build(cfg: Config, needs_llm: bool, key=None, host_cache: HostCache | None = None,
              dataset: Dataset | None = None) -> "Assembly":
        """dataset: cfg.data's, when the caller has loaded it already (to check it before the model loads)."""
        dataset = dataset if dataset is not None else resolve_dataset(cfg.data)
        backbone = (load_backbone(cfg, key if key is not None else jax.random.key(0), host_cache)
                    if needs_llm else None)
        encoder = SplitEncoder(cfg, dataset, backbone.tokenizer if backbone else None,
                               backbone.source if backbone else (), host_cache)
        models = ModelFactory(cfg.model, dataset.num_users, dataset.num_items, backbone)
        return Assembly(cfg, dataset, backbone, encoder, models)

    @staticmethod
    def for_run(cfg: Config, host_cache: HostCache | None = None,
                dataset: Dataset | None = None) -> tuple["Assembly", dict]:
        """The assembly and initial parameters of a run, from train.seed alone. Training and every later
        reader of the run (scoring, ablations) call this, so a randomly initialised LLM base, which no
        checkpoint stores, is the same base for all of them."""
        key = jax.random.key(cfg.train.seed)
        built = Assembly.build(cfg, cfg.train.method in LLM_METHODS, jax.random.fold_in(key, 0), host_cache, dataset)
        return built, built.init_params(jax.random.fold_in(key, 1))

    def init_params(self, key) -> dict:
        """Counted terms from the train rows the ID side learns from (the early rows with data.late_rows)."""
        return self.models.init_params(key, self.encoder.id_side_rows(), f"{self.dataset.path}/train.parquet")

    def model(self, prompt: str, deterministic: bool, frozen=()):
        return self.models.build(prompt, deterministic, frozen)

    def split(self, name: str, prompt: str, max_rows: int = 0, rows: str = "all") -> SplitData:
        return self.encoder.split(name, prompt, max_rows, rows)

    def row_limit(self, kind: str) -> int:
        return row_limit(self.cfg, kind)
