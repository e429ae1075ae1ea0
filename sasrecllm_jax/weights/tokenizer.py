"""Tokenizers from a Hugging Face folder (tokenizer.json) or a GGUF file, cached as tokenizer.json.

Runs on the light `tokenizers` library alone. A GGUF's byte-level BPE tokenizer is rebuilt from the
file's metadata the way transformers converts it (checked token for token in tests/test_gguf.py),
without transformers or torch at run time.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from sasrecllm_jax.errors import WeightsError


def load_tokenizer(source: str | Path, cache: Path | None = None):
    source = Path(source)
    if source.is_dir():
        path = source / "tokenizer.json"
        if not path.exists():
            raise WeightsError(f"{source}: no tokenizer.json (a fast tokenizer is needed); save one with "
                               f"AutoTokenizer.from_pretrained(...).save_pretrained('{source}')")
        return Tokenizer.from_file(str(path))
    cached = (cache or source.parent) / f"{source.stem}.tokenizer.json"
    if not cached.exists():
        tmp = cached.with_suffix(".partial")
        tokenizer_from_gguf(source).save(str(tmp))
        os.replace(tmp, cached)
    return Tokenizer.from_file(str(cached))


CONTROL = 3  # llama.cpp token type of special tokens such as <|im_start|>


def tokenizer_from_gguf(path: Path):
    """The GGUF's byte-level BPE ("gpt2") tokenizer as a `tokenizers.Tokenizer`."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields

    def strings(key):
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key, default):
        f = fields.get(key)
        return default if f is None else f.parts[f.data[0]][0].item()

    kind = strings("tokenizer.ggml.model")[0] if "tokenizer.ggml.model" in fields else None
    if kind != "gpt2":
        raise WeightsError(f"{path}: tokenizer model {kind!r}; only byte-level BPE ('gpt2') GGUF tokenizers are "
                           f"built here. Use a Hugging Face folder with tokenizer.json for this model")
    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    types = np.array([fields["tokenizer.ggml.token_type"].parts[i][0] for i in fields["tokenizer.ggml.token_type"].data])
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(scalar("tokenizer.ggml.add_space_prefix", False)),
                                                 trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if bool(scalar("tokenizer.ggml.add_bos_token", False)):
        bos = int(scalar("tokenizer.ggml.bos_token_id", 1))
        tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A", special_tokens=[(tokens[bos], bos)])
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in np.flatnonzero(types == CONTROL)])
    return tok


def answer_token(tokenizer, word: str) -> int:
    """The single token id of an answer word such as ' Yes' (leading-space variants matter)."""
    ids = tokenizer.encode(word, add_special_tokens=False).ids
    if len(ids) == 2 and tokenizer.decode([ids[0]]).strip() == "":
        ids = ids[1:]  # sentencepiece: a bare space piece before the word
    if len(ids) != 1:
        pieces = [tokenizer.id_to_token(i) for i in ids]
        raise WeightsError(f"answer {word!r} is {len(ids)} tokens {pieces} for this tokenizer; choose an "
                           f"answer word that is one token (try it with and without a leading space)")
    return ids[0]
