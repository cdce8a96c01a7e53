"""torchrun with 2 CPU processes (gloo): finishes, one checkpoint and one metrics file, written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("training.model")

from training.synthetic import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes(tmp_path):
    data = generate(tmp_path / "syn", splits={"train": 8, "dev": 4}, seed=2)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.commands.train", "finetune", "--preset", "tiny_clip", "--data", str(data),
           "--output", str(out), "--epochs", "1", "--batch-size", "2", "--accum", "1", "--save-every", "1",
           "--num-workers", "0", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["best", "last", "metrics.jsonl"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["event"] for x in rows].count("start") == 1 and [x["event"] for x in rows].count("end") == 1
    start = rows[0]
    assert start["world_size"] == 2
    prog = json.loads((out / "last/training_state/progress.json").read_text())
    assert prog["step"] == 2 and prog["world_size"] == 2  # 8 samples / (2 ranks x batch 2)
    assert not list(out.glob(".*partial"))
