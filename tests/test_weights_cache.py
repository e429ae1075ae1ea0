"""The GGUF's dequantized copy in the download cache: read back exactly, renewed when the GGUF changes,
rewritten when damaged, and never in the way when it cannot be written."""
import os
import shutil

import numpy as np
import pytest

from sasrecllm_jax.config import DEBUG_TINY
from sasrecllm_jax.weights import gguf as gguf_mod


@pytest.fixture
def own_gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file (its bytes and times are ours to change) and an empty download cache. The
    parse itself is faked below: what is under test is the copy, not the conversion (tests/test_gguf.py)."""
    monkeypatch.setenv("SASRECLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SASRECLLM_WEIGHTS_CACHE", raising=False)
    path = tmp_path / "w" / "Tiny-Model.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF stand-in")
    return path


def _parses(monkeypatch):
    """A list that records each time the GGUF itself is parsed; the parse returns fixed float32 tensors."""
    calls = []
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.normal(size=(256, 64)).astype(np.float32),
               "model.norm.weight": rng.normal(size=(64,)).astype(np.float32)}

    def parse(p):
        calls.append(p)
        return DEBUG_TINY, {k: v.copy() for k, v in tensors.items()}, None
    monkeypatch.setattr(gguf_mod, "read_gguf", parse)
    return calls


def test_the_copy_reads_back_exactly_and_follows_the_file(own_gguf, monkeypatch, capsys):
    parses = _parses(monkeypatch)
    cfg, tensors = gguf_mod.read_gguf_cached(own_gguf)
    copy = gguf_mod.dequantized_path(own_gguf)
    assert copy.exists() and len(parses) == 1
    cfg2, tensors2 = gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 1 and cfg2 == cfg and tensors2.keys() == tensors.keys()
    for k in tensors:
        assert tensors2[k].dtype == np.float32
        np.testing.assert_array_equal(tensors2[k], tensors[k])
    # the GGUF is replaced (a new modification time): parsed again, the old copy removed
    st = own_gguf.stat()
    os.utime(own_gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 2 and not copy.exists()
    assert list(copy.parent.iterdir()) == [gguf_mod.dequantized_path(own_gguf)]
    # another GGUF whose name starts the same keeps its own copy beside this one
    other = own_gguf.with_name(own_gguf.stem.split(".")[0] + ".gguf")
    shutil.copyfile(own_gguf, other)
    gguf_mod.read_gguf_cached(other)
    assert len(parses) == 3 and len(list(copy.parent.iterdir())) == 2
    other.unlink()
    gguf_mod.dequantized_path(own_gguf).with_name("x").write_bytes(b"")  # (not a copy of either: left alone)
    # a damaged copy: said, parsed again and rewritten
    gguf_mod.dequantized_path(own_gguf).write_bytes(b"not a safetensors file")
    _, again = gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 4 and "unreadable" in capsys.readouterr().err
    np.testing.assert_array_equal(again["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"])
    gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 4 and (copy.parent / "x").exists()


def test_no_copy_when_off_or_unwritable(own_gguf, tmp_path, monkeypatch, capsys):
    parses = _parses(monkeypatch)
    monkeypatch.setenv("SASRECLLM_WEIGHTS_CACHE", "OFF")
    gguf_mod.read_gguf_cached(own_gguf)
    assert not gguf_mod.dequantized_path(own_gguf).parent.exists()
    monkeypatch.delenv("SASRECLLM_WEIGHTS_CACHE")
    folder = gguf_mod.dequantized_path(own_gguf).parent
    folder.parent.mkdir(parents=True)
    folder.write_text("a file where the folder should be")  # mkdir fails: the weights still load
    cfg, tensors = gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 2 and cfg == DEBUG_TINY and "model.embed_tokens.weight" in tensors
    assert "could not keep the dequantized weights" in capsys.readouterr().err
    assert not list(folder.parent.glob("*.partial"))
    # no cache folder at all (a read-only home): parsed, said, nothing raised
    monkeypatch.setenv("SASRECLLM_CACHE", str(folder / "below-a-file"))
    gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 3 and "no download cache for the dequantized weights" in capsys.readouterr().err
