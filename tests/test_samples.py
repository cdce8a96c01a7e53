"""Each sample runs at tiny size against the fake bundle (the HTTP service on an ephemeral localhost port)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import build_fake_bundle
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("posts")
    rows = ["file,caption"]
    for i in range(5):
        a = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(a).save(d / f"{i}.jpg")
        rows.append(f"{i}.jpg,happy dog {i}")
    rows.append("missing.jpg,sad cat")
    (d / "captions.csv").write_text("\n".join(rows) + "\n")
    return d


def test_quickstart(bundle: Path, folder: Path) -> None:
    assert len((ROOT / "samples" / "quickstart.py").read_text().splitlines()) <= 12
    p = _run("samples/quickstart.py", str(bundle), str(folder / "0.jpg"), "a happy dog")
    assert p.returncode == 0, p.stderr
    assert "sentiment:" in p.stdout and "ran on onnxruntime (cpu)" in p.stdout


def test_tag_folder(bundle: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    p = _run("samples/tag_folder.py", str(bundle), str(folder), "--output", str(out), "--batch-size", "2")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"{i}.jpg" for i in range(5)] + ["missing.jpg"]
    assert [r["ok"] for r in rows] == [True] * 5 + [False]
    assert "tagged 6 posts" in p.stdout and "error 1" in p.stdout


def test_sydes_serve_and_load_test(bundle: Path, folder: Path) -> None:
    """The recommended service (`sydes serve`, FastAPI + uvicorn) started as a user would, on port 0."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    srv = subprocess.Popen([sys.executable, "-m", "sdk.cli", "serve", str(bundle), "--port", "0", "--device", "cpu",
                            "--max-batch", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, env=ENV)
    try:
        port = None
        for line in srv.stderr:  # uvicorn logs the port it bound
            if "Uvicorn running on http://127.0.0.1:" in line:
                port = int(line.split("http://127.0.0.1:")[1].split()[0])
                break
        assert port, "sydes serve did not start: " + srv.stdout.read()

        def req(method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request(method, path, body, {"Content-Type": "application/json"})
            r = c.getresponse()
            out = r.status, json.loads(r.read())
            c.close()
            return out

        for _ in range(600):
            if req("GET", "/readyz")[0] == 200:
                break
            time.sleep(0.05)
        assert req("GET", "/healthz")[0] == 200
        assert req("GET", "/v1/info")[1]["backend"] == "onnxruntime"
        img = base64.b64encode((folder / "0.jpg").read_bytes()).decode()
        status, res = req("POST", "/v1/analyze", json.dumps({"image": img, "text": "happy dog"}).encode())
        assert status == 200 and res["ok"]
        status, res = req("POST", "/v1/analyze", json.dumps({"image": "AAAA", "text": "x"}).encode())
        assert status == 422 and res["error_type"] == "ImageDecodeError"

        lt = _run("samples/load_test.py", str(folder / "1.jpg"), "--port", str(port), "--requests", "24",
                  "--concurrency", "8")
        assert lt.returncode == 0, lt.stdout + lt.stderr
        assert "24 requests, concurrency 8: 24 ok, 0 shed (503)" in lt.stdout
        bad = _run("samples/load_test.py", str(folder / "1.jpg"), "--port", str(port), "--host", "10.0.0.1")
        assert bad.returncode == 2 and "loopback" in bad.stderr
    finally:
        srv.send_signal(signal.SIGINT)
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        srv.stdout.close()
        srv.stderr.close()
