"""The files of a run folder, written whole or not at all; the lock of the process writing it; the code
version every run records.

    RUN/config.yaml      the config it ran with          RUN/results.json   valid and test metrics, timing
    RUN/metrics.jsonl    every train / eval record       RUN/scores.npz     every evaluated row's score
    RUN/tensorboard/     the same records for TensorBoard
    RUN/run_state.json   the phases done, their timing   RUN/lock           the process writing the run
    RUN/checkpoints/PHASE/{best,latest}, RUN/final       Orbax checkpoints (train/checkpoint.py)
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

from sasrecllm_jax.errors import ConfigError, TrainingError

ROOT = Path(__file__).resolve().parents[2]

_checkout_versions: dict[Path, str] = {}


def code_version() -> str:
    """The source checkout's short commit, with '+dirty' when tracked files differ from it: recorded in
    every results.json and in every phase-cache key. $SASRECLLM_COMMIT, when set, wins: a copy of the tree
    on another machine (the GPU machine) may carry no .git or a stale one, and its sender states which
    clean commit it is. The checkout is read once per process (a run reads it when it starts): a process
    runs the modules it loaded, so a commit or an edit made while a long run is under way must not relabel
    that run's results or cache its phases under code that did not make them."""
    if os.environ.get("SASRECLLM_COMMIT"):
        return os.environ["SASRECLLM_COMMIT"]
    if ROOT not in _checkout_versions:
        try:
            git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout
            dirty = git("status", "--porcelain", "--untracked-files=no", "--", "sasrecllm_jax", "configs", "train.py").strip()
            _checkout_versions[ROOT] = git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            _checkout_versions[ROOT] = "unknown"
    return _checkout_versions[ROOT]


def write_whole(path: Path, data: str | bytes) -> None:
    """Write a run file whole or not at all (a temporary name, then a rename): a reader, such as a grid's
    summary in another process, sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


ABLATION_FILE = "ablation.json"
PAIRED_KEY = "vs_trained"  # ablation.json's paired tests, beside its splits
# what a run writes into its folder (RUN/ablation.json is made from a finished run by the ablations)
DATASET_DIGEST_FILE = "dataset.sha256"  # Dataset.digest() of the data the run was trained on
RUN_FILES = ("config.yaml", "run_state.json", "metrics.jsonl", "tensorboard", "checkpoints", "final", "results.json",
             "scores.npz", ABLATION_FILE, DATASET_DIGEST_FILE)
LOCK_FILE = "lock"


def read_ablations(run: Path) -> dict:
    """RUN/ablation.json: {split: {ablation: metrics}, "vs_trained": {split: {ablation: paired tests, or None
    where the run's own scores were not of the ablated rows}}}; {} for a run never ablated."""
    path = Path(run) / ABLATION_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def paired_tests(ablations: dict, split: str) -> dict:
    """{ablation: its paired tests against the run as trained ({part: {"AUC": ..., "UAUC": ...}}) or None} of
    one split of read_ablations; {} where none were kept."""
    return ablations.get(PAIRED_KEY, {}).get(split, {})


def paired_ablation(run: Path, split: str, ablation: str) -> dict | None:
    """One ablation's paired tests against the run as trained, or None."""
    return paired_tests(read_ablations(run), split).get(ablation)


def saved_work(workdir: Path) -> list[str]:
    """What of a run's trained work the folder holds (checkpoints, final model, results), as names: a
    checkpoint folder counts when it holds a saved step."""
    workdir = Path(workdir)
    return [name for name, held in (("checkpoints", bool(phases_with_checkpoints(workdir))),
                                    ("final", _holds_step(workdir / "final")),
                                    ("results.json", (workdir / "results.json").exists())) if held]


def unfinished(run: Path) -> str | None:
    """Why a folder holds no finished run (None: it does), in words that say what to do."""
    run = Path(run)
    if not run.exists():
        return f"{run} does not exist"
    if not (run / "config.yaml").exists():
        return f"{run} is not a run folder (no config.yaml); point at a folder train.py wrote"
    if (run / "results.json").exists() and not (run / "final").exists():
        return (f"{run} holds a finished run's results but not its weights (no final/; committed run folders "
                f"keep their scores only); train it again to score or export with it")
    if not (run / "results.json").exists():
        phases = phases_with_checkpoints(run)
        saved = f"checkpoints of {', '.join(phases)}" if phases else "no checkpoint yet"
        return (f"{run} is an unfinished run ({saved}); continue it with python train.py --workdir {run} "
                f"--resume")
    return None


def check_dataset(run: Path, dataset_path: Path, digest: str, record: bool = False, restored_by: str = "") -> None:
    """Refuse a dataset that differs from the one the run was trained on (its ids would name other users and
    items); record: write the digest when the run has none yet (a new run); restored_by: the phase that
    restores weights from the run (named in the refusal)."""
    path = Path(run) / DATASET_DIGEST_FILE
    if path.exists():
        if path.read_text().strip() != digest:
            if restored_by:
                raise ConfigError(f"{restored_by} restores weights from {run}, which was trained on another dataset "
                                  f"than {dataset_path} (its rows or items differ: its item and user ids would "
                                  f"name others here); restore from a run trained on this dataset, or train one")
            raise ConfigError(f"{dataset_path} is not the dataset {run} was trained on (its rows or items differ: "
                              f"ids may name other users and items now); prepare it again as it was, or train "
                              f"a new run on it")
    elif record:
        write_whole(path, digest + "\n")


def phases_with_checkpoints(workdir: Path) -> list[str]:
    """The phases of which RUN/checkpoints/PHASE/{latest,best} hold a saved step."""
    folder = Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if any(_holds_step(p / kind) for kind in ("latest", "best")))


def _holds_step(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def remove_run_files(workdir: Path) -> list[str]:
    """Delete what a run wrote into `workdir` (RUN_FILES and half-written `*.partial` files; nothing else
    in the folder), and name what was removed."""
    removed = []
    # config.yaml last: a folder cut short while being cleared still reads as a run folder (train.py
    # clears no folder of run files without it)
    names = [n for n in RUN_FILES if n != "config.yaml"] + ["config.yaml"]
    for path in [Path(workdir) / n for n in names] + sorted(Path(workdir).glob("*.partial")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(path.name + "/")
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(path.name)
    return removed


class RunLock:
    """RUN/lock: the one process writing a run folder. The file names the holder (pid, host, start time)
    and is held with flock while the process lives, so the kernel frees it however the process ends; a
    clean end also removes the file. A second writer is refused with the holder's name; a file left by a
    process that died (its pid no longer runs on this host) is taken over with a note."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise TrainingError(f"{self.path.parent} is in use by {_describe(holder)} (its lock: {self.path}); "
                                    f"wait for that run to end, or stop it, or choose another --workdir") from None
            if _same_file(fd, self.path):  # (not a file its last holder removed after we opened it)
                self._fd = fd
            else:
                os.close(fd)
        holder = _read_holder(self._fd)
        if holder and holder.get("host") not in (None, socket.gethostname()):
            self.release()
            raise TrainingError(f"{self.path} names {_describe(holder)}, on another machine, and this machine cannot "
                                f"tell whether that run still writes here; if it has ended, delete {self.path}")
        if holder:
            state = "is no longer running" if not _alive(holder.get("pid")) else "no longer holds it"
            print(f"note: {self.path} was left by {_describe(holder)}, which {state}: taken over")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(me) + "\n").encode(), 0)

    def release(self) -> None:
        """Remove the lock file (when it is still this lock's) and free the lock."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _alive(pid) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # another user's
        return True
    return True


def _read_holder(fd: int) -> dict:
    """The holder a lock file names ({} when it is empty or unreadable: being written, or from a crash)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (ValueError, OSError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
