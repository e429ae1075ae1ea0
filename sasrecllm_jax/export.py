"""Export a finished run for transformers + PEFT.

    python -m sasrecllm_jax.export RUN --out DIR

    DIR/base/           the backbone as a Hugging Face Llama folder (config.json, model.safetensors in
                        float32, tokenizer.json): a GGUF backbone dequantized, a random one as drawn
    DIR/adapter/        the run's LoRA as a PEFT adapter (adapter_config.json, adapter_model.safetensors)
    DIR/collaborative/  collaborative.json: how the run scores (prompt template, placeholders, answer
                        tokens, score head) and, for hybrid prompts, the ID encoder and the mapper;
                        collaborative.safetensors: their params, keyed by '/'-joined Flax paths
    DIR/README.md       the lines of transformers + peft that score a prompt with it

Only runs with an LLM export (methods icl, tallrec, collm_mf, sasrecllm). The base weights are the ones
the run held: with model.llm_overrides.param_dtype bfloat16 they are bfloat16 values stored as float32.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from sasrecllm_jax.config import to_dict
from sasrecllm_jax.data import prompts as prompts_lib
from sasrecllm_jax.data.encode import prompt_templates
from sasrecllm_jax.errors import ConfigError, run_command
from sasrecllm_jax.models.mapper import FUSION_NUMBERS
from sasrecllm_jax.score import Recommender
from sasrecllm_jax.weights.hf_export import write_hf_folder
from sasrecllm_jax.weights.peft_adapter import write_peft_adapter

COLLAB_JSON = "collaborative.json"
COLLAB_WEIGHTS = "collaborative.safetensors"
PLACEHOLDER_ID = 0  # the token id the placeholders carry before their embeddings are replaced


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{'a/b/c': array} of a nested param dict."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, path))
        else:
            out[path] = np.ascontiguousarray(np.asarray(v))
    return out


def template_text(template: prompts_lib.Template) -> str:
    pieces = [template.segments[0]]
    for marker, seg in zip(template.markers, template.segments[1:]):
        pieces += [marker, seg]
    return "".join(pieces)


ENCODER_VECTORS = {
    "sasrec": {"user_vector": "SASRec over the user's most recent liked items (ids, oldest first, left-padded "
                              "with 0 to sasrec.max_len): the last position of its final LayerNorm "
                              "(sasrecllm_jax.models.sasrec.SASRec.user_vector)",
               "item_vector": "sasrec/item_emb/embedding[iid] (row 0 is padding)"},
    "mf": {"user_vector": "mf/user_emb/embedding[uid]", "item_vector": "mf/item_emb/embedding[iid]"},
}
EXAMPLE_HISTORY = [1, 2, 3]  # the README example's liked items (iids)
EXAMPLE_VECTORS = {  # README lines that define user_vector and item_vector for user 1 and item 7
    "mf": ['user_vector, item_vector = w["mf/user_emb/embedding"][1], w["mf/item_emb/embedding"][7]'],
    "sasrec": [
        "# SASRec's user vector runs its network over the history: this part needs sasrecllm_jax (pip install",
        "# the project); the rest is numpy, torch, transformers and peft",
        "from flax.traverse_util import unflatten_dict",
        "from sasrecllm_jax.config import SASRecConfig",
        "from sasrecllm_jax.models.sasrec import SASRec",
        'SAS = SASRecConfig(**collab["encoder"]["config"])',
        'sasrec = SASRec(SAS, w["sasrec/item_emb/embedding"].shape[0] - 1)',
        'sasrec_params = unflatten_dict({tuple(k.split("/")[1:]): v for k, v in w.items() if k.startswith("sasrec/")})',
        "",
        "",
        "def user_vector_of(history):  # the user's liked item ids, oldest first",
        "    his = ([0] * SAS.max_len + list(history))[-SAS.max_len:]  # the most recent max_len, left-padded with 0",
        '    return np.asarray(sasrec.apply({"params": sasrec_params}, np.array([his]), method="user_vector"))[0]',
        "",
        "",
        "user_vector, item_vector = user_vector_of(HISTORY), w[\"sasrec/item_emb/embedding\"][7]",
    ],
}
FUSION = {
    "none": "score = llm_score",
    "gate": "score = llm_score + mapper/id_gate * id_score, id_score = <user_vector, item_vector> "
            "(+ the encoder's user and item terms when sasrec.bias is not none)",
    "residual": "score = id_score + mapper/llm_gate * llm_score, id_score = <user_vector, item_vector> "
                "(+ the encoder's user and item terms when sasrec.bias is not none)",
}

LLM_GATES = {"known_unknown": "; mapper/llm_gate_unknown in place of mapper/llm_gate when mapper/counts/item_seen[iid] is 0",
             "unknown_only": "; mapper/llm_gate_unknown in place of mapper/llm_gate when mapper/counts/item_seen[iid] is "
                             "0, and 0 when it is 1 (there is no mapper/llm_gate: those rows score id_score alone)"}
UNKNOWN_ID_SCORE = {"learned": "; id_score = mapper/unknown_score instead when mapper/counts/item_seen[iid] is 0",
                    "offset": "; id_score + mapper/unknown_score when mapper/counts/item_seen[iid] is 0"}


def scoring_description(rec) -> dict:
    """collaborative.json: everything besides the weights that scoring a row with the export needs."""
    cfg, d, m = rec.cfg, rec.cfg.data, rec.cfg.model
    at_last = rec.prompt == "hybrid" and m.mapper.inject == "last"  # the text template takes the vectors
    template, *unknown = [prompts_lib.Template.load(path, kind) for path, kind in prompt_templates(cfg, rec.prompt)]
    yes, no = (int(i) for i in rec.assembly.backbone.answer_ids)
    head = ("llm_score = logit[yes] - logit[no] at the last prompt token" if m.score_head == "log_odds"
            else "llm_score = logit[yes] at the last prompt token")
    out = {
        "method": cfg.train.method, "prompt": rec.prompt, "template": template_text(template),
        "fields": {"{history}": f"the user's most recent liked titles (at most data.max_titles = {d.max_titles}), "
                                f"oldest first, each in double quotes, joined by ', '; {prompts_lib.NO_HISTORY!r} "
                                f"when there are none; while the tokenized prompt (placeholders included) is longer "
                                f"than data.max_tokens = {d.max_tokens} tokens, its oldest title is dropped",
                   "{target}": "the title of the item to score"},
        "tokenization": "the template's text pieces between markers are tokenized separately (the first with "
                        "the tokenizer's special tokens, the others without) and concatenated",
        "answer": {"yes": {"text": d.answer_yes, "token_id": yes}, "no": {"text": d.answer_no, "token_id": no}},
        "score_head": m.score_head, "llm_score": head,
        "p_like": "sigmoid(score)",
    }
    if rec.prompt != "hybrid":
        return out
    k = m.mapper.num_tokens
    enc = m.encoder
    mapper = rec.params["mapper"]
    if unknown:
        out["template_unknown_item"] = template_text(unknown[0])
    out.update({"inject": "last", "num_tokens": 1,
                "added": "the template has no markers; the mapper's output vectors of the user's and of the item's "
                         "encoder vector are added to the input embedding of the prompt's last token"
                         + (NOTHING_FOR_UNKNOWN if m.mapper.unknown_item_vectors == "none" else "")} if at_last else {
        "markers": {"<UserID>": "user", "<ItemID>": "item"},
        "num_tokens": k,
        "placeholders": f"each marker becomes {k} placeholder position(s) (token id {PLACEHOLDER_ID}) between the "
                        f"text pieces; the input embeddings at those positions are replaced by the mapper's "
                        f"{k} output vector(s) of the user's (<UserID>) or the item's (<ItemID>) encoder vector",
        "placeholder_token_id": PLACEHOLDER_ID})
    out.update({
        "encoder": {"kind": enc, "config": to_dict(getattr(m, enc)), **ENCODER_VECTORS[enc],
                    **({"item_vector": f"{ENCODER_VECTORS[enc]['item_vector']} if mapper/counts/item_seen[iid] "
                                       f"is 1, else {NEW_ITEM_VECTOR[m.mapper.new_items]} (the item has no train row "
                                       f"the encoder learned from)"}
                       if m.mapper.new_items != "id" else {})},
        "mapper": {"config": to_dict(m.mapper), "d_model": rec.assembly.backbone.llm_cfg.hidden_size,
                   "tokens": "reshape(relu(v @ mapper/fc1/kernel + mapper/fc1/bias) @ mapper/fc2/kernel "
                             "+ mapper/fc2/bias, [num_tokens, d_model])"},
        "fusion": {"kind": m.mapper.fusion, "score": FUSION[m.mapper.fusion] + (
                       UNKNOWN_ID_SCORE.get(m.mapper.unknown_id_score, "")) + (
                       LLM_GATES.get(m.mapper.llm_gates, "") if m.mapper.fusion == "residual" else ""),
                   **{g: float(np.asarray(mapper[g])) for g in FUSION_NUMBERS if g in mapper}},
        "params_file": COLLAB_WEIGHTS,
        "param_layout": "Flax: a Dense kernel is [in, out] (y = x @ kernel + bias); an Embed table is "
                        "[count + 1, dim] indexed by id (ids start at 1)",
    })
    return out


def readme(rec, out: Path, desc: dict) -> str:
    yes, no = desc["answer"]["yes"], desc["answer"]["no"]
    ret = ("(logits[YES] - logits[NO]).item()" if desc["score_head"] == "log_odds" else "logits[YES].item()")
    what = "logit(Yes) - logit(No)" if desc["score_head"] == "log_odds" else "logit(Yes)"
    text_template = prompts_lib.Template.load(rec.cfg.data.prompt_text, "text")
    titles = rec.assembly.dataset.titles()  # the example: items 1, 2, 3 liked, item 7 asked about
    history = prompts_lib.history_text([str(t) for t in titles[1:1 + len(EXAMPLE_HISTORY)]])
    target = str(titles[7]) if len(titles) > 7 else ""
    fill = f"history={history!r}, target={target!r}"
    example = template_text(text_template).format(history=history, target=target)
    lines = [
        f"# {rec.cfg.train.method} run, exported for transformers + PEFT",
        "",
        "- `base/`: the backbone as a Hugging Face Llama folder (float32 weights, tokenizer.json)",
        "- `adapter/`: the run's LoRA as a PEFT adapter",
        f"- `collaborative/`: `{COLLAB_JSON}` (prompt template, answer tokens, score head"
        + (", ID encoder and mapper; their params in `collaborative.safetensors`)" if desc["prompt"] == "hybrid" else ")"),
        "",
        f"The run scores {desc['prompt']} prompts. The score of a prompt is {what} at its last token "
        f"(Yes = {yes['text']!r}, token {yes['token_id']}; No = {no['text']!r}, token {no['token_id']}); "
        "sigmoid(score) is the probability of a like. The examples below ask about the dataset's item 7 "
        f"({target!r}) for a user who liked items {EXAMPLE_HISTORY}; `collaborative/{COLLAB_JSON}` (`fields`) says "
        f"how the run fills a prompt, including the cut at data.max_tokens = {rec.cfg.data.max_tokens} tokens.",
        "",
        "In float32, transformers gives the run's scores within 1e-4 when the run computes in float32"
        + (f"; this run rounds its matrix products to {rec.cfg.model.llm_overrides['matmul_dtype']} "
           f"(`model.llm_overrides.matmul_dtype`), so its own scores differ from these by rounding, a few hundredths "
           f"of a logit" if rec.cfg.model.llm_overrides.get("matmul_dtype") not in (None, "float32") else "")
        + ". `adapter/adapter_config.json` names the base as `base`, relative: "
        "`AutoPeftModelForCausalLM.from_pretrained` finds it when run from this folder; elsewhere load the two as "
        "below.",
        "",
        "## Scoring a text prompt",
        "",
        *(["This run scores hybrid prompts (the next section): a text prompt read by its LLM and adapter, as "
           "here, is not the run's score of a row.", ""] if desc["prompt"] == "hybrid" else []),
        "```python",
        "import torch",
        "from peft import PeftModel",
        "from transformers import AutoTokenizer, LlamaForCausalLM",
        "",
        f"DIR = {str(out)!r}",
        'tok = AutoTokenizer.from_pretrained(f"{DIR}/base")',
        'model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(f"{DIR}/base"), f"{DIR}/adapter").eval()',
        f"YES, NO = {yes['token_id']}, {no['token_id']}",
        "",
        "",
        "def score(prompt: str) -> float:",
        "    with torch.no_grad():",
        '        logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1]',
        f"    return {ret}",
        "",
        "",
        f"print(score({example!r}))",
        "```",
    ]
    if desc["prompt"] == "hybrid":
        k = desc["num_tokens"]
        at_last = desc.get("inject") == "last"
        lines += [
            "",
            "## Scoring a hybrid prompt",
            "",
            (f"The prompt template (`collaborative.json`, `template`) is the text prompt; the mapper's outputs for "
             f"the user's and the item's vector from the {desc['encoder']['kind']} encoder are added to the input "
             f"embedding of its last token" if at_last else
             f"The prompt template (`collaborative.json`, `template`) has the markers `<UserID>` and `<ItemID>`; each "
             f"becomes {k} placeholder position(s) whose input embeddings are replaced by the mapper's output for the "
             f"user's or the item's vector from the {desc['encoder']['kind']} encoder")
            + f" (user: {desc['encoder']['user_vector']}; item: {desc['encoder']['item_vector']})."
            + (" For a row whose item has no train row (`mapper/counts/item_seen` is 0) nothing is added: "
               "`score_hybrid(..., known=False)`." if adds_nothing_for_unknown(desc) else "")
            + (" A row whose item has no train row (`mapper/counts/item_seen` is 0) is rendered with "
               "`template_unknown_item` instead, which shows the item by its title alone." if "template_unknown_item"
               in desc else ""),
            "",
            "```python",
            "import json",
            "import re",
            "",
            "import numpy as np",
            "from safetensors.numpy import load_file",
            "",
            'w = load_file(f"{DIR}/collaborative/collaborative.safetensors")',
            f"K, D = {k}, model.config.hidden_size",
            "",
            "",
            "def soft_tokens(v):  # the mapper: an encoder vector -> K input embeddings",
            '    h = np.maximum(v @ w["mapper/fc1/kernel"] + w["mapper/fc1/bias"], 0)',
            '    return (h @ w["mapper/fc2/kernel"] + w["mapper/fc2/bias"]).reshape(K, D)',
            "",
            "",
            *(score_at_last(desc) if at_last else SCORE_PLACEHOLDERS),
            "        logits = model(inputs_embeds=embeds).logits[0, -1]",
            f"    return {ret}",
            "",
            "",
            'collab = json.loads(open(f"{DIR}/collaborative/collaborative.json").read())',
            f"HISTORY = {EXAMPLE_HISTORY}  # the liked items' ids, oldest first (their titles are in the prompt)",
            f"text = collab[\"template\"].format({fill})",
            'pieces = re.split("<UserID>|<ItemID>", text)',
            *EXAMPLE_VECTORS[desc["encoder"]["kind"]],
            *unknown_item_example(desc, fill),
            f"print({hybrid_call(desc)})",
            "```",
        ]
        if desc["fusion"]["kind"] != "none":
            lines += ["", f"This run fuses the encoder's own score: {desc['fusion']['score']} "
                          f"(values in `collaborative.json`, `fusion`). The run's score of a row:", "",
                      *fusion_code(desc)]
    return "\n".join(lines) + "\n"


SCORE_PLACEHOLDERS = [  # README lines: score_hybrid's start for soft tokens at the template's placeholders
    "def score_hybrid(pieces, user_vector, item_vector):",
    '    """pieces: the filled-in template split at its markers (<UserID>, <ItemID>: three strings)."""',
    "    ids, starts = [], []",
    "    for i, piece in enumerate(pieces):",
    '        ids += tok(piece, add_special_tokens=(i == 0))["input_ids"]',
    "        if i < len(pieces) - 1:",
    "            starts.append(len(ids))",
    f"            ids += [{PLACEHOLDER_ID}] * K",
    "    with torch.no_grad():",
    "        embeds = model.get_input_embeddings()(torch.tensor([ids]))",
    "        for start, v in zip(starts, (user_vector, item_vector)):",
    "            embeds[0, start:start + K] = torch.from_numpy(soft_tokens(v)).to(embeds.dtype)",
]
ADD_AT_LAST = "embeds[0, -1] += torch.from_numpy(soft_tokens(user_vector)[0] + soft_tokens(item_vector)[0]).to(embeds.dtype)"


def unknown_item_example(desc: dict, fill: str) -> list[str]:
    """The README example's lines for an item without train rows: one `if` holding what changes for it (the
    shared unknown vector, the template that shows the item by its title alone)."""
    body = []
    if desc["mapper"]["config"]["new_items"] == "unknown":
        body += ['    item_vector = w["mapper/unknown_item"]  # the shared unknown vector']
    if desc["mapper"]["config"]["new_items"] == "text":
        body += ['    item_vector = w["mapper/counts/item_text"][7]  # the vector its title predicts']
    if "template_unknown_item" in desc:
        body += [f"    text = collab[\"template_unknown_item\"].format({fill})  # shown by its title alone",
                 '    pieces = re.split("<UserID>|<ItemID>", text)']
    return ['if w["mapper/counts/item_seen"][7] == 0:  # an item without train rows', *body] if body else []


NEW_ITEM_VECTOR = {"unknown": "mapper/unknown_item",
                   "text": "mapper/counts/item_text[iid] (the vector the item's title predicts)"}
NOTHING_FOR_UNKNOWN = " (nothing is added for an item whose mapper/counts/item_seen is 0: the LLM reads its row as a text prompt)"


def adds_nothing_for_unknown(desc: dict) -> bool:
    """Whether the export's score_hybrid takes `known` (model.mapper.inject: last, unknown_item_vectors: none)."""
    return desc.get("inject") == "last" and desc["mapper"]["config"]["unknown_item_vectors"] == "none"


def score_at_last(desc: dict) -> list[str]:
    """README lines: score_hybrid for model.mapper.inject: last (and unknown_item_vectors: none: `known`)."""
    unknown_none = adds_nothing_for_unknown(desc)
    return [
        f"def score_hybrid(pieces, user_vector, item_vector{', known=True' if unknown_none else ''}):",
        '    """pieces: [the filled-in template] (no markers: the vectors are added at its last token)' + (
            '; known:\n    mapper/counts/item_seen[iid] == 1 (for an item without train rows nothing is added)."""'
            if unknown_none else '."""'),
        '    ids = tok(pieces[0])["input_ids"]',
        "    with torch.no_grad():",
        "        embeds = model.get_input_embeddings()(torch.tensor([ids]))",
        *(["        if known:", f"            {ADD_AT_LAST}"] if unknown_none else [f"        {ADD_AT_LAST}"]),
    ]


def hybrid_call(desc: dict) -> str:
    """README: the example's call of score_hybrid (item 7)."""
    return "score_hybrid(pieces, user_vector, item_vector" + (
        ', known=w["mapper/counts/item_seen"][7] == 1)' if adds_nothing_for_unknown(desc) else ")")


BIAS_TERMS = {  # README lines: SASRec's user and item terms (model.sasrec.bias), added to the ID score
    "learned": '    id_score += w["sasrec/user_bias/embedding"][uid, 0] + w["sasrec/item_bias/embedding"][iid, 0]',
    "counts": '    id_score += w["sasrec/counts/user"][uid] + w["sasrec/counts/item"][iid]',
}


def fusion_code(desc: dict) -> list[str]:
    """README lines: the run's score of a hybrid row, score_hybrid's LLM score fused with the encoder's."""
    unknown = desc["mapper"]["config"]["unknown_id_score"]
    bias = desc["encoder"]["config"].get("bias", "none") if desc["encoder"]["kind"] == "sasrec" else "none"
    gates = desc["mapper"]["config"].get("llm_gates", "one")
    split = gates != "one"
    known_gate = '0.0' if gates == "unknown_only" else 'w["mapper/llm_gate"].item()'
    total = ('llm_score + w["mapper/id_gate"].item() * id_score' if desc["fusion"]["kind"] == "gate"
             else 'id_score + gate * llm_score' if split else 'id_score + w["mapper/llm_gate"].item() * llm_score')
    return [
        "```python",
        "def fused_score(llm_score, user_vector, item_vector, uid, iid):",
        '    """item_vector as score_hybrid got it (for an item without train rows, what the run shows)."""',
        "    id_score = float(user_vector @ item_vector)",
        *([BIAS_TERMS[bias]] if bias != "none" else []),
        *(['    if w["mapper/counts/item_seen"][iid] == 0:  # an item without train rows: one learned ID score',
           '        id_score = w["mapper/unknown_score"].item()'] if unknown == "learned" else []),
        *(['    if w["mapper/counts/item_seen"][iid] == 0:  # an item without train rows: a learned offset',
           '        id_score += w["mapper/unknown_score"].item()'] if unknown == "offset" else []),
        *(['    known = w["mapper/counts/item_seen"][iid] == 1  # the LLM\'s weight where the ID model knows the item',
           f'    gate = {known_gate} if known else w["mapper/llm_gate_unknown"].item()'] if split else []),
        f"    return {total}",
        "",
        "",
        f"print(fused_score({hybrid_call(desc)}, user_vector, item_vector, 1, 7))",
        "```",
    ]


def export_run(run: str | Path, out: str | Path) -> Path:
    """Write the export of a finished run into out (which must not exist, or be empty)."""
    run, out = Path(run), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder (an export is never merged "
                          f"into an old one)")
    cfg, prompt = Recommender.run_config(run)  # refusals that need no weights come first
    no_llm = ConfigError(f"{run}: method {cfg.train.method} has no LLM, so there is nothing to export for "
                         f"transformers + PEFT (its model is the checkpoint in {run / 'final'})")
    if prompt == "none":
        raise no_llm
    if prompt == "hybrid" and cfg.model.mapper.inject == "cross":
        raise ConfigError(f"{run}: model.mapper.inject: cross adds a cross-attention to every decoder layer, which "
                          f"a transformers Llama with PEFT adapters cannot hold; score this run with "
                          f"`python -m sasrecllm_jax.score --run {run}` (inject: tokens and last export)")
    rec = Recommender(run)
    if rec.assembly.backbone is None or "llm" not in rec.params:
        raise no_llm
    desc = scoring_description(rec)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(rec, desc, tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(tmp, out)
    return out


def _write(rec, desc: dict, tmp: Path, out: Path) -> None:
    llm = rec.params["llm"]
    write_hf_folder(tmp / "base", rec.assembly.backbone.llm_cfg, llm, rec.assembly.backbone.tokenizer)
    write_peft_adapter(tmp / "adapter", llm, rec.cfg.model.lora, base_model_name_or_path="base")
    collab = tmp / "collaborative"
    collab.mkdir()
    (collab / COLLAB_JSON).write_text(json.dumps(desc, indent=2, ensure_ascii=False) + "\n")
    if rec.prompt == "hybrid":
        enc = rec.cfg.model.encoder
        save_file(flatten({enc: rec.params[enc], "mapper": rec.params["mapper"]}), str(collab / COLLAB_WEIGHTS))
    (tmp / "README.md").write_text(readme(rec, out, desc))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sasrecllm_jax.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished run folder (with final/ and config.yaml)")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the export")
    args = p.parse_args(argv)

    def body():
        out = export_run(args.run, args.out)
        print(f"wrote {out}/base, {out}/adapter, {out}/collaborative and {out}/README.md")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
