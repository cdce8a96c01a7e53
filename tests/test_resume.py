"""Kill -9 a training run after its first checkpoint, rerun it, and get bit-identical final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("training.model")

from training.synthetic import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "training.commands.train", "finetune", "--preset", "tiny_clip",
            "--data", str(data), "--output", str(out), "--epochs", "2", "--batch-size", "2", "--accum", "2",
            "--save-every", "1", "--seed", "3", "--deterministic", "--num-workers", "0", "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow  # ~50 s: three training processes (2 cores)
def test_kill_and_resume_gives_identical_weights(tmp_path):
    data = generate(tmp_path / "syn", splits={"train": 12, "dev": 4}, seed=1)
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cmd(data, full), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=300)

    proc = subprocess.Popen(_cmd(data, cut), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    progress = cut / "last/training_state/progress.json"
    deadline = time.time() + 240
    while not progress.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = json.loads(progress.read_text())["step"]
    total = json.loads((full / "last/training_state/progress.json").read_text())["step"]
    assert 1 <= killed_at < total

    r = subprocess.run(_cmd(data, cut), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    a, b = _weights(full / "last"), _weights(cut / "last")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    starts = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["resumed"] for r in starts if r["event"] == "start"] == [False, True]
