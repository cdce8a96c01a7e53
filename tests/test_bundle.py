"""sdk.bundle: manifest schema, writing, loading, integrity checks and the verify cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from bundle_fixture import build_fake_bundle, read_manifest

from sdk import bundle as B
from sdk.errors import BundleError, BundleIntegrityError


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("b") / "fake.sydes")


@pytest.fixture()
def bundle_dir(base_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy.sydes"
    shutil.copytree(base_bundle, out)
    return out


def _rewrite(folder: Path, edit) -> None:
    m = read_manifest(folder)
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_load_valid_bundle(bundle_dir: Path) -> None:
    b = B.load_bundle(bundle_dir)
    assert b.name == "fake" and list(b.tasks) == ["sentiment", "emotion", "desire"]
    assert b.manifest.graph.input("input_ids").shape == ("batch", "seq")
    assert b.graph_path().name == "model.onnx" and b.tokenizer_path.is_file()
    assert b.engines_dir == bundle_dir / "engines"
    assert b.manifest.tokenizer.trim_padding is True
    assert b.preprocess_config().canvas_size == 448
    # manifest.json path works too
    assert B.load_bundle(bundle_dir / "manifest.json").path == bundle_dir


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    p = tmp_path / "x.bin"
    p.write_bytes(os.urandom(3 << 20))
    assert B.sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_tampered_graph_byte(bundle_dir: Path) -> None:
    B.load_bundle(bundle_dir)  # fills the verify cache
    g = bundle_dir / "model.onnx"
    data = bytearray(g.read_bytes())
    data[len(data) // 2] ^= 0xFF
    st = g.stat()
    g.write_bytes(bytes(data))
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime restored
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx does not match its sha256"):
        B.load_bundle(bundle_dir)
    B.load_bundle(bundle_dir, verify=False)  # verify=False skips the check


def test_truncated_and_missing_files(bundle_dir: Path) -> None:
    g = bundle_dir / "model.onnx"
    g.write_bytes(g.read_bytes()[:-10])
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx has \d+ bytes, the manifest says"):
        B.load_bundle(bundle_dir)
    (bundle_dir / "tokenizer.json").unlink()
    g.unlink()
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx .* is missing"):
        B.load_bundle(bundle_dir)


def test_tampered_tokenizer(bundle_dir: Path) -> None:
    t = bundle_dir / "tokenizer.json"
    t.write_text(t.read_text().replace("happy", "hapyy"))
    with pytest.raises(BundleIntegrityError, match=r"tokenizer\.json does not match"):
        B.load_bundle(bundle_dir)


def test_verify_cache_makes_reopen_fast(bundle_dir: Path, monkeypatch) -> None:
    B.load_bundle(bundle_dir)
    calls = []
    monkeypatch.setattr(B, "sha256_file", lambda p, *a: calls.append(p) or "0")
    B.load_bundle(bundle_dir)  # all hashes cached: sha256_file is not called
    assert calls == []


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.pop("tasks"), r"field 'tasks' is missing"),
    (lambda m: m["graphs"]["model"].pop("sha256"), r"field 'graphs\.model\.sha256' is missing"),
    (lambda m: m["tokenizer"].pop("max_length"), r"field 'tokenizer\.max_length' is missing"),
    (lambda m: m.update(schema_version=2), r"'schema_version' is 2, newer than this SDK supports \(1\)"),
    (lambda m: m.update(schema_version="1"), r"'schema_version' must be int, got str"),
    (lambda m: m.update(schema="other"), r"field 'schema' is 'other'.*not a SyDES bundle"),
    (lambda m: m.update(precision="fp8"), r"'precision' is 'fp8'; valid: fp32, fp16, int8"),
    (lambda m: m["tokenizer"].update(kind="sentencepiece"), r"'tokenizer\.kind' is 'sentencepiece'"),
    (lambda m: m["graphs"]["model"].update(file="../evil.onnx"), r"relative path inside the bundle"),
    (lambda m: m["graphs"]["model"].update(sha256="xyz"), r"64 lowercase hex"),
    (lambda m: m["graphs"]["model"]["outputs"].pop(0), r"no 'probs_sentiment'"),
    (lambda m: m["graphs"]["model"]["inputs"][0].update(dtype="uint9"), r"inputs\[0\]\.dtype' is 'uint9'"),
    (lambda m: m["tasks"].update(sentiment=["only"]), r"'tasks\.sentiment' must list at least 2"),
    (lambda m: m["tokenizer"].update(trim_padding="yes"), r"trim_padding' must be true or false"),
    (lambda m: m["graphs"].pop("model"), r"'graphs\.model' is missing"),
])
def test_bad_manifest_fields(bundle_dir: Path, edit, match: str) -> None:
    m = read_manifest(bundle_dir)
    edit(m)
    with pytest.raises(BundleError, match=match):  # an in-memory manifest is validated as the file is
        B.load_bundle(bundle_dir, manifest=m)
    _rewrite(bundle_dir, edit)
    with pytest.raises(BundleError, match=match):
        B.load_bundle(bundle_dir)


def test_in_memory_manifest(bundle_dir: Path) -> None:
    """A bundle being written is opened with its manifest dict before manifest.json exists."""
    m = read_manifest(bundle_dir)
    (bundle_dir / "manifest.json").unlink()
    b = B.load_bundle(bundle_dir, manifest=m)
    assert b.name == "fake" and b.manifest.raw is m and b.graph_path().is_file()
    with pytest.raises(BundleError, match="has no manifest.json: not a SyDES bundle"):
        B.load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="nope.sydes does not exist"):
        B.load_bundle(bundle_dir.parent / "nope.sydes", manifest=m)
    with pytest.raises(BundleError, match="must be a JSON object"):
        B.load_bundle(bundle_dir, manifest=[1])  # type: ignore[arg-type]
    (bundle_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleIntegrityError, match="tokenizer.json does not match its sha256"):
        B.load_bundle(bundle_dir, manifest=m)


def test_file_record_hash_is_not_read_again(bundle_dir: Path, monkeypatch) -> None:
    """file_record's hash goes into the verify cache: checking the new manifest (write_manifest, load_bundle)
    reads no file again; a file changed since is hashed anew."""
    import sdk.hashing

    B.clear_verify_cache()
    m = read_manifest(bundle_dir)
    calls: list[str] = []
    real = sdk.hashing.sha256_file
    monkeypatch.setattr(sdk.hashing, "sha256_file", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    m["graphs"]["model"].update(B.file_record(bundle_dir, "model.onnx"))
    m["tokenizer"]["sha256"] = B.file_record(bundle_dir, "tokenizer.json")["sha256"]
    B.write_manifest(bundle_dir, m)
    B.load_bundle(bundle_dir)
    assert sorted(calls) == ["model.onnx", "tokenizer.json"]
    (bundle_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleIntegrityError, match="tokenizer.json does not match its sha256"):
        B.write_manifest(bundle_dir, m)
    assert calls[-1] == "tokenizer.json"


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        B.load_bundle(tmp_path / "nope.sydes")
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="is not a folder"):
        B.load_bundle(tmp_path / "f")
    (tmp_path / "empty.sydes").mkdir()
    with pytest.raises(BundleError, match="has no manifest.json"):
        B.load_bundle(tmp_path / "empty.sydes")
    (tmp_path / "empty.sydes" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        B.load_bundle(tmp_path / "empty.sydes")
    (tmp_path / "empty.sydes" / "manifest.json").write_text("[1]")
    with pytest.raises(BundleError, match="must be a JSON object"):
        B.load_bundle(tmp_path / "empty.sydes")


def test_write_manifest_validates_and_is_atomic(bundle_dir: Path) -> None:
    m = read_manifest(bundle_dir)
    before = (bundle_dir / "manifest.json").read_text()
    bad = json.loads(before)
    bad["graphs"]["model"]["sha256"] = "0" * 64
    with pytest.raises(BundleIntegrityError, match="does not match its sha256"):
        B.write_manifest(bundle_dir, bad)
    assert (bundle_dir / "manifest.json").read_text() == before  # untouched on failure
    m["name"] = "renamed"
    B.write_manifest(bundle_dir, m)
    assert B.load_bundle(bundle_dir).name == "renamed"
    assert not [p for p in bundle_dir.iterdir() if p.name.endswith(".tmp")]


def test_file_record(bundle_dir: Path) -> None:
    r = B.file_record(bundle_dir, "model.onnx")
    assert r["bytes"] == (bundle_dir / "model.onnx").stat().st_size and len(r["sha256"]) == 64
    with pytest.raises(BundleError, match="is not a file"):
        B.file_record(bundle_dir, "nope.onnx")


def test_unknown_graph_name(bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="has no graph 'vision'"):
        B.load_bundle(bundle_dir).graph_path("vision")
