"""The GGUF's dequantized copy in the download cache: read back exactly, renewed when the GGUF changes,
rewritten when damaged, and never in the way when it cannot be written."""
import os
import shutil

import numpy as np
import pytest

from sasrecllm_jax.weights import gguf as gguf_mod


@pytest.fixture
def own_gguf(smollm2_gguf, tmp_path, monkeypatch):
    """A copy of the SmolLM2 GGUF (its times are ours to change) and an empty download cache."""
    monkeypatch.setenv("SASRECLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SASRECLLM_WEIGHTS_CACHE", raising=False)
    path = tmp_path / "w" / smollm2_gguf.name
    path.parent.mkdir()
    shutil.copyfile(smollm2_gguf, path)
    return path


def _parses(monkeypatch):
    """A list that records each time the GGUF itself is parsed."""
    calls, real = [], gguf_mod.read_gguf
    monkeypatch.setattr(gguf_mod, "read_gguf", lambda p: calls.append(p) or real(p))
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
    # a damaged copy: said, parsed again and rewritten
    gguf_mod.dequantized_path(own_gguf).write_bytes(b"not a safetensors file")
    _, again = gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 3 and "unreadable" in capsys.readouterr().err
    np.testing.assert_array_equal(again["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"])
    gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 3


def test_no_copy_when_off_or_unwritable(own_gguf, tmp_path, monkeypatch, capsys):
    parses = _parses(monkeypatch)
    monkeypatch.setenv("SASRECLLM_WEIGHTS_CACHE", "off")
    gguf_mod.read_gguf_cached(own_gguf)
    assert not gguf_mod.dequantized_path(own_gguf).parent.exists()
    monkeypatch.delenv("SASRECLLM_WEIGHTS_CACHE")
    folder = gguf_mod.dequantized_path(own_gguf).parent
    folder.parent.mkdir(parents=True)
    folder.write_text("a file where the folder should be")  # mkdir fails: the weights still load
    cfg, tensors = gguf_mod.read_gguf_cached(own_gguf)
    assert len(parses) == 2 and cfg.num_layers == 30 and "model.embed_tokens.weight" in tensors
    assert "could not keep the dequantized weights" in capsys.readouterr().err
