"""Tokenizers from a Hugging Face folder (tokenizer.json) or a GGUF file, cached as tokenizer.json.

Runs on the light `tokenizers` library; transformers is only used once to build a GGUF's tokenizer.
"""
from __future__ import annotations

import os
from pathlib import Path

from sasrecllm_jax.weights.convert import WeightsError


def load_tokenizer(source: str | Path, cache: Path | None = None):
    from tokenizers import Tokenizer
    source = Path(source)
    if source.is_dir():
        path = source / "tokenizer.json"
        if not path.exists():
            raise WeightsError(f"{source}: no tokenizer.json (a fast tokenizer is needed); save one with "
                               f"AutoTokenizer.from_pretrained(...).save_pretrained('{source}')")
        return Tokenizer.from_file(str(path))
    cached = (cache or source.parent) / f"{source.stem}.tokenizer.json"
    if not cached.exists():
        import transformers
        tok = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        tmp = cached.with_suffix(".partial")
        tok.backend_tokenizer.save(str(tmp))
        os.replace(tmp, cached)
    return Tokenizer.from_file(str(cached))


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
