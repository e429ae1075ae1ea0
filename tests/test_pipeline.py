"""Input pipeline: prompt rendering and placeholders, shortening, iterator determinism and resume, padding."""
import itertools

import numpy as np
import pandas as pd
import pytest

from helpers import ROOT
from sasrecllm_jax.errors import DataError
from sasrecllm_jax.data.pipeline import BatchIterator, SplitData, length_buckets, make_batch
from sasrecllm_jax.data.prompts import Template, byte_tokenizer, encode

TITLES = np.array(["", "Alpha (1990)", "Beta (1991)", "Gamma (1992)", "Delta (1993)"], dtype=object)


@pytest.mark.parametrize("k", [1, 2])
def test_hybrid_prompt_placeholders(k):
    tok = byte_tokenizer()
    t = Template.load(ROOT / "configs/prompts/hybrid.txt", "hybrid")
    enc = encode(t, tok, [np.array([1, 2, 3])], np.array([4]), TITLES, max_titles=2, max_tokens=2000,
                 num_soft_tokens=k, placeholder_id=0)
    ids = enc.tokens[0]
    u, i = enc.user_pos[0], enc.item_pos[0]
    assert (ids[u:u + k] == 0).all() and (ids[i:i + k] == 0).all()
    text = tok.decode(ids[:u].tolist())
    assert text.endswith("Their taste profile is ") and '"Beta (1991)", "Gamma (1992)"' in text
    assert "Alpha" not in text  # only the 2 most recent titles
    after = tok.decode(ids[i + k:].tolist())
    assert tok.decode(ids[u + k:i].tolist()).startswith('.\nWill the user enjoy "Delta (1993)"')
    assert after.startswith("? Answer Yes or No.\nAnswer:")


def test_text_prompt_and_shortening():
    tok = byte_tokenizer()
    t = Template.load(ROOT / "configs/prompts/text.txt", "text")
    full = encode(t, tok, [np.array([1, 2, 3])], np.array([4]), TITLES, max_titles=10, max_tokens=2000, num_soft_tokens=1)
    assert full.user_pos[0] == -1 and full.shortened == 0
    limit = len(full.tokens[0]) - 5  # forces the oldest title out
    short = encode(t, tok, [np.array([1, 2, 3])], np.array([4]), TITLES, max_titles=10, max_tokens=limit, num_soft_tokens=1)
    text = tok.decode(short.tokens[0].tolist())
    assert short.shortened == 1 and "Alpha" not in text and "Beta" in text and len(short.tokens[0]) <= limit
    with pytest.raises(DataError, match="even without history titles"):
        encode(t, tok, [np.array([1])], np.array([4]), TITLES, max_titles=10, max_tokens=20, num_soft_tokens=1)


@pytest.mark.parametrize("text,kind,match", [
    ("History {history}. Target {target}? <ItemID> <UserID>", "hybrid",
     r"needs the markers \['<UserID>', '<ItemID>'\] in this order"),
    ("no fields <UserID> <ItemID>", "hybrid", "no {history} field"),
    ("History {history} <UserID>. Target {target} <ItemID>?", "unknown_item",
     r"holds <UserID> or no marker, found \['<UserID>', '<ItemID>'\]"),
    ('Liked {history}. Rate {target} as {rating}: {"answer": "Yes"}', "text",
     r"a field \{rating\}; it may hold \{history\} and \{target\} only"),
    ("Liked {history}. Rate {target} {", "text", "Single '{' encountered"),
    ("Liked {{history}}. Rate {target}", "text", "no {history} field"),  # doubled braces: literal text
])
def test_template_errors(tmp_path, text, kind, match):
    bad = tmp_path / "t.txt"
    bad.write_text(text)
    with pytest.raises(DataError, match=match):
        Template.load(bad, kind)
    assert Template.load(ROOT / "configs/prompts/hybrid_unknown_item.txt", "unknown_item").markers == ("<UserID>",)


def test_template_braces_written_twice_are_literal():
    tok = byte_tokenizer()
    path = ROOT / "configs/prompts/text.txt"
    t = Template.load(path, "text")
    braced = Template(tuple(seg + ' {{"answer": "Yes"}}' for seg in t.segments), t.markers)
    enc = encode(braced, tok, [np.array([1, 2, 3])], np.array([4]), TITLES, max_titles=10, max_tokens=2000,
                 num_soft_tokens=1)
    assert tok.decode(enc.tokens[0].tolist()).endswith('Answer: {"answer": "Yes"}')


def test_iterator_deterministic_resumable_and_complete():
    lengths = np.random.default_rng(0).integers(50, 250, 1000)
    a = BatchIterator(lengths, 16, seed=3)
    first = [next(a) for _ in range(a.batches_per_epoch)]
    seen = np.sort(np.concatenate(first))
    np.testing.assert_array_equal(seen, np.arange(1000))  # every row exactly once per epoch
    b = BatchIterator(lengths, 16, seed=3)
    for _ in range(10):
        next(b)
    state = b.state()
    c = BatchIterator(lengths, 16, seed=3)
    c.restore(state)
    for _ in range(70):  # across the epoch boundary
        np.testing.assert_array_equal(next(b), next(c))
    assert not np.array_equal(first[0], BatchIterator(lengths, 16, seed=4)._order[0])
    # length bucketing: padding within batches is far below that of random batches
    padded = lambda batches: sum(lengths[x].max() * len(x) for x in batches) / lengths.sum() - 1
    random_batches = np.array_split(np.random.default_rng(1).permutation(1000), 63)
    assert padded(first) < 0.1 < padded(random_batches)


def test_length_buckets_pad_as_little_as_their_count_allows():
    # rounded up to 8: 8, 8, 16, 24, 24, 24, 40. Two lengths: {24, 40} costs 6 x 24 + 40 = 184 slots,
    # {8, 40} 2 x 8 + 5 x 40 = 216, {16, 40} 3 x 16 + 4 x 40 = 208; three: {8, 24, 40} 16 + 96 + 40 = 152
    lengths = np.array([3, 8, 9, 17, 20, 24, 33])
    assert length_buckets(lengths, 1) == (40,)
    assert length_buckets(lengths, 2) == (24, 40)
    assert length_buckets(lengths, 3) == (8, 24, 40)
    assert length_buckets(lengths, 9) == (8, 16, 24, 40)  # never more lengths than the rows have
    # against every choice of lengths, on random splits
    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = rng.integers(1, 100, rng.integers(1, 20))
        n = int(rng.integers(1, 4))
        rounded = -(-lengths // 8) * 8
        cost = lambda b: sum(min(x for x in b if x >= v) for v in rounded)
        cands = sorted(set(rounded.tolist()))
        best = min(cost([*c, cands[-1]]) for k in range(n) for c in itertools.combinations(cands[:-1], k))
        got = length_buckets(lengths, n)
        assert len(got) <= n and got[-1] == rounded.max() and cost(got) == best


def test_history_left_padding_and_filler_rows():
    df = pd.DataFrame({"uid": [1, 2], "iid": [3, 4], "label": [1, 0], "timestamp": [0, 1],
                       "his": [np.array([5, 6, 7, 8]), np.array([], np.int64)], "not_cold": [1, 0]})
    data = SplitData.from_frame("x", df, max_len=3)
    np.testing.assert_array_equal(data.his, [[6, 7, 8], [0, 0, 0]])
    batch = make_batch(data, np.array([1]), 4, 16, with_prompts=False)
    assert batch["weight"].tolist() == [1, 0, 0, 0] and batch["uid"].tolist() == [2, 2, 2, 2]
