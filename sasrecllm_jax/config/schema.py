"""What can be configured: frozen dataclasses, one per section, every field with its default and meaning.

A run's configuration is `Config(data, model, train)`. The LLM architectures are presets
(`config/presets.py`); YAML files and `--set` flags override fields (`config/loading.py`), and every
value is checked for type and range when it is read.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional


# --------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3-style rotary scaling (`rope_type: llama3` in a Hugging Face config)."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_layers: int = 22
    num_heads: int = 32
    num_kv_heads: int = 4
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    param_dtype: str = "float32"       # base weights; "bfloat16" on GPU
    dtype: str = "float32"             # activations / matmul inputs
    # the projections' matmul operands when lower than dtype: "bfloat16" with dtype float32 multiplies in
    # bf16 and sums in float32, all else float32 (on a CPU with AMX or AVX-512 BF16, the fast setting; on
    # the CPU the XLA attention's two products too, elsewhere they stay in dtype)
    matmul_dtype: Optional[str] = None
    attention: Literal["xla", "cudnn"] = "xla"  # cudnn: GPU only, right-padded batches
    # per-layer rematerialisation: "full" saves only layer inputs, "dots" saves matmul outputs,
    # "cheap" recomputes elementwise work (fp32 norm and rotary intermediates, silu, LoRA dropout) and,
    # on the XLA attention path, the [B, heads, T, T] scores
    remat: Literal["none", "full", "dots", "cheap"] = "none"
    scan_unroll: int = 1  # layers per iteration of the layer loop: fewer loop trips, longer compiles


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # names of the adapted projections

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    max_len: int = 25                  # history length fed to the encoder (left-padded)
    # per-user and per-item terms added to the score <user, item> (not in the reference SASRec):
    # "learned": biases that start at 0 and train with SASRec; "counts": the train split's counted
    # log-odds (models/pop.py), fixed, so SASRec learns what taste adds to rating tendencies
    bias: Literal["none", "learned", "counts"] = "none"


@dataclasses.dataclass(frozen=True)
class MFConfig:
    dim: int = 256


@dataclasses.dataclass(frozen=True)
class PopConfig:
    prior: float = 5.0                 # pseudo-rows at the global positive rate added to every count


@dataclasses.dataclass(frozen=True)
class MapperConfig:
    @property
    def reads_text_template(self) -> bool:
        """Whether hybrid rows render the text template (the vectors enter at or from its last position)."""
        return self.inject in ("last", "cross")

    hidden: int = 320
    num_tokens: int = 1                # soft tokens per ID placeholder
    # "gate": score = LLM log-odds + g x the encoder's own score, g learned (mapper group), starting at 1;
    # "residual": score = the encoder's score + a x LLM log-odds, a learned, starting at llm_gate_init: at 0
    # the hybrid starts as the ID model exactly; at the weight of a late fusion of the two (`python -m
    # sasrecllm_jax.compare ENCODER_RUN LLM_RUN --fuse` prints it) it starts near that fusion (its LLM term
    # reads hybrid prompts, whose soft tokens start untrained: out_init zeros starts them at zero)
    fusion: Literal["none", "gate", "residual"] = "none"
    llm_gate_init: float = 0.0
    # with fusion: residual and new_items: unknown or text, how many numbers weigh the LLM's log-odds: "one",
    # llm_gate on every row; "known_unknown", llm_gate on rows whose item is shown by its own vector and a
    # second learned number, llm_gate_unknown (starting at llm_gate_init), on the rows whose item is shown as
    # unknown (no train row, or item_dropout): where the ID model knows the item, the LLM's weight can differ
    # from where it knows nothing (fusion_start: late_fusion fits both, the known rows' down to 0);
    # "unknown_only", llm_gate_unknown alone: rows whose item the ID model knows score its ID score exactly,
    # and the LLM's log-odds count only where it knows nothing (training reaches them through the rows
    # shown as unknown: item_dropout, or late rows on items the early ones lack)
    llm_gates: Literal["one", "known_unknown", "unknown_only"] = "one"
    # "zeros": the output layer starts at zero, so the soft tokens start as zero vectors
    out_init: Literal["default", "zeros"] = "default"
    # where the mapped vectors enter the LLM: "tokens", as soft tokens at the hybrid template's placeholders;
    # "last", added (user + item, num_tokens 1) to the input embedding of the last prompt position of the
    # text template (data.prompt_text): no placeholder, so with out_init zeros a hybrid phase starts as the
    # text model reading the text prompt, exactly; "cross", read by a gated cross-attention in every decoder
    # layer, from the text template's last position (the one that answers) to the 2 x num_tokens mapped
    # vectors: h += tanh(g_l) x attention(rms(h) W_q, m W_k, m W_v) W_o, rank cross_rank, one head, its
    # weights and the per-layer gates g_l (starting at 0: the phase starts as the text model, exactly) in the
    # mapper group
    inject: Literal["tokens", "last", "cross"] = "tokens"
    cross_rank: int = 64
    # what the item token shows for a target item with no train row: "id", its encoder vector as is (an
    # untrained initialisation: noise); "unknown", one shared learned vector (mapper group, starting at
    # zero), which training also puts in place of a random `item_dropout` share of the rows' items, so the
    # LLM learns to answer from the title when the ID model knows nothing of the item; "text", the vector
    # the item's title predicts (a ridge regression from the mean LLM input embedding of the title's tokens to
    # the encoder's item vectors of the items with train rows, fitted when the first hybrid phase starts and
    # never trained), so the encoder's score and the item token read the title where the ID knows nothing;
    # item_dropout then shows a row's title vector in place of its ID vector
    new_items: Literal["id", "unknown", "text"] = "id"
    item_dropout: float = 0.0
    # with new_items: unknown and a fusion (gate, residual), the ID score of a row whose item is shown as
    # unknown: "encoder", the encoder's score of the unknown vector (a per-user offset); "learned", one
    # learned number (mapper group, starting at unknown_score_init): the ID model abstains on items it knows
    # nothing of, so among those rows the ranking is the LLM's, and the number places them against the
    # other rows. `python -m sasrecllm_jax.compare ENCODER_RUN LLM_RUN --fuse --abstain` prints the start
    # (with llm_gate_init) at which a residual hybrid ranks like that abstaining fusion. "offset" (with
    # new_items: unknown or text): the encoder's score plus that learned number: with text, the title
    # vectors rank those rows and the number places them against the rows of items with their own vector
    unknown_id_score: Literal["encoder", "learned", "offset"] = "encoder"
    unknown_score_init: float = 0.0
    # with new_items: unknown and inject: last or cross, what a row whose item is shown as unknown gets at its last
    # position: "add", the mapped user and unknown vectors like any row; "none", nothing: the LLM reads it as
    # the text model does, so training the mapper cannot move how the LLM reads new items' titles (with
    # unknown_id_score: learned the mapper then only places those rows, through unknown_score and the gate)
    unknown_item_vectors: Literal["add", "none"] = "add"
    # with fusion: residual, where llm_gate (and, with unknown_id_score: learned or offset, unknown_score)
    # start: "init", at llm_gate_init (unknown_score_init); "late_fusion", fitted when the run's first phase
    # that trains the mapper on hybrid prompts starts: the late fusion of the hybrid's own two terms (its ID
    # score, abstaining on items shown as unknown with unknown_id_score: learned, offset on them with
    # offset, and its LLM's log-odds)
    # picked on that phase's validation rows, so the phase starts at the ranking of that fusion (what
    # `python -m sasrecllm_jax.compare ENCODER_RUN LLM_RUN --fuse [--abstain]` prints, without the runs)
    fusion_start: Literal["init", "late_fusion"] = "init"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    llm: str = "SMOLLM2_135M"          # a preset name (config/presets.py); weights come from `weights`
    llm_overrides: dict = dataclasses.field(default_factory=dict)  # LlamaConfig fields, e.g. {param_dtype: bfloat16}
    weights: str = "smollm2"           # "smollm2" (registry GGUF), "random", a GGUF file or an HF folder
    encoder: Literal["sasrec", "mf", "pop"] = "sasrec"  # pop: counted tendencies, for method pop only
    sasrec: SASRecConfig = SASRecConfig()
    mf: MFConfig = MFConfig()
    pop: PopConfig = PopConfig()
    mapper: MapperConfig = MapperConfig()
    lora: LoraConfig = LoraConfig()
    score_head: Literal["yes_logit", "log_odds"] = "log_odds"  # the Yes logit, or Yes minus No


# --------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "ml100k"            # a prepared folder, or a named dataset (prepared on first use)
    data_dir: str = "data"             # where named datasets are prepared
    prompt_hybrid: str = "configs/prompts/hybrid.txt"
    prompt_text: str = "configs/prompts/text.txt"
    # hybrid prompts of rows whose target item the ID model has no train row for (model.mapper.new_items:
    # unknown; mapper/counts/item_seen 0): "" renders them with prompt_hybrid (the item token shows the
    # unknown vector); a template with <UserID> alone or no marker (e.g. configs/prompts/text.txt) shows such
    # an item by its title alone, so the LLM reads these rows as a text prompt instead of an empty profile
    prompt_hybrid_unknown_item: str = ""
    answer_yes: str = " Yes"
    answer_no: str = " No"
    max_titles: int = 10               # most recent liked titles shown in the prompt
    max_tokens: int = 320              # longest prompt; longer ones show fewer titles, never cut silently
    pad_multiple: int = 16             # pad batch lengths to a multiple (fewer compilations)
    # N > 0: pad a phase's train batches to the shortest of N lengths chosen once from its train prompts'
    # token counts (multiples of 8, the longest holding the longest prompt; they minimise the padding of the
    # rows) instead of multiples of pad_multiple: as many train-step shapes, less padding. Evaluation keeps
    # pad_multiple. `python bench/padding.py --config FILE` prints the padding of each choice
    pad_lengths: int = 0
    # train prompted phases on shared-prefix packs: one user's rows with one history render the same prompt up
    # to the target, so a pack holds that start once and each row's rest after it (the packs scoring uses,
    # eval.share_prefix). The loss and its gradient are the unpacked batch's, up to float rounding, on fewer
    # token slots. A step then holds train.batch_size packs (all rows of one user and history, as many as
    # fit the longest prompt's length): more rows per step and fewer steps per epoch when rows share starts.
    # `python bench/padding.py --config FILE` prints the rows per pack and the token slots saved
    pack_train: bool = False
    # Row caps (a seeded random subset, 0 = all): "train" caps the rows of prompted (LLM) phases,
    # "eval" the rows of every evaluation and of the final test. Encoder phases train on every row.
    max_rows: dict = dataclasses.field(default_factory=dict)
    cpu_max_rows: dict = dataclasses.field(default_factory=dict)  # the same, on the CPU backend only (the smaller wins)
    # parts of the evaluated rows kept whole under an eval cap (the cap then samples the other rows): e.g.
    # [new_item], to test every new-item row and a sample of the rest
    eval_always: tuple[Literal["warm", "cold", "new_user", "new_item"], ...] = ()
    eval_split: Literal["valid_small", "valid"] = "valid_small"
    # the latest share of the train rows (by timestamp) held out of what the ID side learns or counts: a phase
    # with `rows: early` trains on the rest, one with `rows: late` on these alone, and the counted terms and
    # the mapper's item_seen flags come from the early rows. A hybrid phase on the late rows then sees the
    # encoder's scores on rows it never fit (on its own train rows SASRec is near-perfect, which teaches a
    # fusion to ignore the LLM), and items that only the late rows name as new items
    late_rows: float = 0.0


# --------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    name: str = "main"
    trainable: tuple[str, ...] = ("mapper", "lora")   # groups: sasrec | mf | mapper | lora
    prompt: Literal["text", "hybrid", "none"] = "hybrid"  # none: encoder-only (sasrec / mf)
    epochs: float = 1.0
    max_steps: int = 0                 # > 0 caps the phase
    lr: dict = dataclasses.field(default_factory=lambda: {"mapper": 1e-3, "lora": 1e-3})  # per group
    restore: dict = dataclasses.field(default_factory=dict)  # group -> "phase:NAME" or a run folder
    restore_best: bool = True          # end the phase on its best checkpoint (what the next phase starts from)
    eval_every: int = 0                # steps between evaluations; 0: train.eval_every for prompted
                                       # phases, once per epoch for encoder phases
    patience: int = 0                  # evaluations without improvement before stopping; 0: train.patience
    rows: Literal["all", "early", "late"] = "all"  # which train rows: early / late split them at data.late_rows


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: Literal["pop", "mf", "sasrec", "icl", "tallrec", "collm_mf", "sasrecllm"] = "sasrecllm"
    strategy: str = "dual_stage"       # for sasrecllm: dual_stage | hierarchical_freezing | plug_and_play
    phases: tuple[PhaseConfig, ...] = ()  # empty: taken from the method / strategy preset
    # per phase name, fields that replace the preset's (or train.phases'), e.g.
    # {hybrid: {lr: {mapper: 3.0e-4, lora: 3.0e-4}, patience: 2}}
    phase_overrides: dict = dataclasses.field(default_factory=dict)
    batch_size: int = 16               # rows per step of prompted phases
    eval_batch_size: int = 64          # rows per scoring call
    encoder_batch_size: int = 1024     # rows per step of encoder phases
    warmup_steps: int = 20
    weight_decay: float = 1e-3         # on LoRA and mapper matrices
    encoder_weight_decay: float = 1e-4
    clip_norm: float = 1.0             # 0 disables clipping
    eval_every: int = 100              # steps between evaluations in prompted phases (0: once per epoch)
    eval_at_start: bool = False        # prompted phases also evaluate before their first step; a phase whose
                                       # training only hurts then hands on its input
    patience: int = 20                 # evaluations without improvement before stopping
    seed: int = 0
    log_every: int = 10                # steps between training-loss records
    collab: Literal["on", "drop", "shuffle"] = "on"  # ablation of the collaborative tokens
    freeze: tuple[str, ...] = ()       # ablation: groups that never train, in any phase
    sharding: Literal["none", "data", "fsdp"] = "none"  # parameter layout over all devices
    distributed: bool = False          # call jax.distributed.initialize() (several hosts)
    phase_cache: str = ""              # a folder: reuse phases other runs trained on identical inputs
                                       # (train/phase_cache.py); "" trains every phase
    enc_epochs: float = 10.0           # preset phases: encoder pretraining epochs
    enc_lr: float = 1e-2               # preset phases: encoder pretraining learning rate
    llm_lr: float = 1e-3               # preset phases: LoRA / mapper learning rate
    llm_epochs: float = 1.0            # preset phases: epochs of each LLM phase


# --------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # HR@K and NDCG@K on the test split: each test positive ranked among itself and this many items its
    # user never interacted with (seeded); 0 turns ranking off
    ranking_negatives: int = 99
    ranking_ks: tuple[int, ...] = (5, 10)
    ranking_seed: int = 0
    ranking_max_rows: int = 0          # rank a seeded subset of this many test positives (0: all evaluated ones)
    # on the CPU backend, a run that scores with an LLM ranks only when this is true: 100 prompts per test
    # positive take hours on a CPU
    cpu_ranking_llm: bool = False
    # score the rows that share their prompt's start (one user, one history: the target differs) in packs
    # that compute that start once; each row's score is the one it gets alone (float rounding aside)
    share_prefix: bool = True


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
