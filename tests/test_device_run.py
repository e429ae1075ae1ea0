"""bench/device_run.sh, the prepared GPU script, driven with stand-ins for python and nvidia-smi.

On the GPU machine the script cannot be rehearsed as a whole on a CPU: nvidia-smi is absent there, so
what the script does with it (the utilization sampler) only runs on the device. These stand-ins let the
shell logic run here in about a second.
"""

import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "device_run.sh"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_grid_with_jobs_returns_when_its_grid_processes_do(tmp_path):
    # With JOBS=2 a bare `wait` also waits for the nvidia-smi sampler (`-l 1` never ends): the call is held
    # to its time limit long after both grid processes have finished.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    _executable(  # records its arguments; the summary step writes what the real one would
        bin_dir / "fake-python",
        f'#!/usr/bin/env bash\necho "$*" >> {calls}\n'
        '[[ " $* " == *" --summary-only "* ]] && echo "# the table" > "$GRID_OUT/SUMMARY.md"\nexit 0\n',
    )
    _executable(
        bin_dir / "nvidia-smi",
        '#!/usr/bin/env bash\nif [[ " $* " == *" -l "* ]]; then while true; do echo "7, 100"; sleep 0.1; done; fi\n'
        'echo "Fake GPU, 1.0, 1 MiB"\n',
    )
    work = tmp_path / "tree"
    (work / "data" / "ml1m-collm").mkdir(parents=True)
    (work / "data" / "ml1m-collm" / "dataset.json").write_text("{}")  # prepared: no prepare call
    out = tmp_path / "out"
    runs = tmp_path / "grid"
    (runs / "runs" / "mf").mkdir(parents=True)
    (runs / "runs" / "mf" / "results.json").write_text("{}")
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PY=str(bin_dir / "fake-python"),
        OUT=str(out),
        JOBS="2",
        SASRECLLM_CACHE=str(tmp_path / "cache"),
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"),
        SASRECLLM_COMMIT="abc1234",
        GRID_OUT=str(runs),
    )
    proc = subprocess.run(
        ["bash", str(SCRIPT), "grid", "60", "mf", "sasrec", "tallrec"],
        cwd=work, env=env, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    dealt = sorted(line.split("--methods ")[1].split(" --out")[0] for line in lines if "--methods" in line)
    assert dealt == ["mf tallrec", "sasrec"]  # round-robin over two processes
    assert any("--summary-only" in line for line in lines)  # the summary ran after both grids
    assert "GPU busy 7% of" in proc.stdout and "JOBS=2" in proc.stdout
    assert proc.stdout.rstrip().endswith("# the table")
    assert (out / "ml1m-runs.tgz").stat().st_size > 0


def test_grid_prepares_the_dataset_it_runs(tmp_path):
    """DATASET=ml1m-cold prepares the item-cold ML-1M from the carried zip and runs that folder's recipe."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    _executable(bin_dir / "fake-python", f'#!/usr/bin/env bash\necho "$*" >> {calls}\n'
                '[[ " $* " == *" --summary-only "* ]] && echo "# the table" > "$GRID_OUT/SUMMARY.md"\nexit 0\n')
    work = tmp_path / "tree"
    work.mkdir()
    (tmp_path / "grid" / "runs").mkdir(parents=True)  # what the grid would have written
    env = dict(os.environ, PY=str(bin_dir / "fake-python"), OUT=str(tmp_path / "out"), DATASET="ml1m-cold",
               SASRECLLM_CACHE=str(tmp_path / "cache"), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"),
               GRID_OUT=str(tmp_path / "grid"), PATH=f"{bin_dir}:/usr/bin:/bin")
    proc = subprocess.run(["bash", str(SCRIPT), "grid", "60", "pop"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert ("-m data_tools prepare ml1m-collm --source .parts/ml-1m.zip --trust-pickle --cold-items 0.2 --seed 0 "
            "--out data/ml1m-collm-cold") in lines
    assert any(line.startswith("-m sasrecllm_jax.experiments ml1m-cold --methods pop") for line in lines)
    env["DATASET"] = "ml1m-hot"
    proc = subprocess.run(["bash", str(SCRIPT), "grid", "60", "pop"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0 and "use ml1m, ml1m-cold or amazon-books" in proc.stdout
