"""Where TensorRT engines live and which one serves a request: the reuse rule.

Every engine built for a bundle is recorded with its profile (min/opt/max batch and text length) in the
bundle's manifest ("tensorrt_engines", schema in sdk.bundle), or, when the bundle is read-only, in an
index beside the engine in the user cache ($SYDES_CACHE_DIR, else $XDG_CACHE_HOME/sydes, else
~/.cache/sydes; engines/<graph sha256[:16]>/index.json). A request (GPU, compute capability, TensorRT
version, precision, graph, profile) is served by ANY recorded engine with the same first five whose
profile covers the requested one, the smallest such (least memory); so the engine that
`sydes export --format tensorrt --max-batch 32` built serves `sydes analyze --batch-size 16` too.
Engines stay plain TensorRT files; their sha256 is checked before they are deserialised.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.atomic import atomic_write_text
from sdk.backends.trt_build import OptimizationProfile, cc_string, engine_cache_key
from sdk.bundle import cached_sha256, sha256_file, write_manifest
from sdk.cache import user_engine_dir
from sdk.engine_records import EngineRecord, validate_engine_records
from sdk.errors import BundleError

if TYPE_CHECKING:  # pragma: no cover
    from sdk.bundle import Bundle

log = logging.getLogger("sdk.backends.tensorrt")

INDEX = "index.json"
INDEX_FORMAT = "sydes-engine-index/1"


@dataclass(frozen=True)
class EngineTarget:
    """What an engine must match exactly to be reused (the profile only has to cover)."""

    gpu: str
    compute_capability: str
    tensorrt: str
    precision: str
    graph_sha256: str

    def matches(self, rec: EngineRecord) -> bool:
        return (rec.gpu, rec.compute_capability, rec.tensorrt, rec.precision, rec.graph_sha256) == (
            self.gpu, cc_string(self.compute_capability), self.tensorrt, self.precision, self.graph_sha256)

    def key(self, profile: OptimizationProfile) -> str:
        return engine_cache_key(self.gpu, self.compute_capability, self.tensorrt, self.precision, profile,
                                self.graph_sha256)


@dataclass(frozen=True)
class FoundEngine:
    path: Path
    profile: OptimizationProfile
    where: str  # "bundle", "user cache", "bundle (unrecorded)"






def _read_index(folder: Path) -> tuple[EngineRecord, ...]:
    path = folder / INDEX
    if not path.is_file():
        return ()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
            raise BundleError(f"not a {INDEX_FORMAT} file")
        return validate_engine_records(raw.get("tensorrt_engines"), where=f"{path}:tensorrt_engines")
    except (json.JSONDecodeError, UnicodeDecodeError, BundleError) as e:
        # A broken cache index only costs a rebuild: never let it stop the bundle from running.
        log.warning("ignoring the engine index %s: %s", path, e)
        return ()


def recorded_engines(bundle: Bundle) -> list[tuple[Path, EngineRecord]]:
    """(folder the record's file is relative to, record) for the bundle's manifest and the user cache."""
    out = [(bundle.path, r) for r in bundle.manifest.engine_records]
    udir = user_engine_dir(bundle.manifest.graph.sha256)
    out += [(udir, r) for r in _read_index(udir)]
    return out


def find_engine(bundle: Bundle, target: EngineTarget, want: OptimizationProfile) -> FoundEngine | None:
    """The smallest recorded engine for `target` whose profile covers `want` (sha256-checked), else an
    unrecorded file named after the exact key (bundles from before engines were recorded), else None."""
    cands = []
    for base, rec in recorded_engines(bundle):
        if not target.matches(rec):
            continue
        prof = OptimizationProfile.from_dict(rec.profile)
        if not prof.covers(want):
            continue
        cands.append((prof.max_batch, prof.max_seq, -prof.min_seq, str(base / rec.file), prof, rec, base))
    for *_, path_s, prof, rec, base in sorted(cands, key=lambda c: c[:4]):
        path = Path(path_s)
        if not path.is_file():
            log.debug("recorded engine %s is missing", path)
            continue
        if path.stat().st_size != rec.bytes or cached_sha256(path) != rec.sha256:
            log.warning("TensorRT engine %s does not match its recorded sha256: ignored (delete it)", path)
            continue
        return FoundEngine(path, prof, "bundle" if base == bundle.path else "user cache")
    legacy = bundle.engines_dir / f"{target.key(want)}.engine"
    if legacy.is_file():
        return FoundEngine(legacy, want, "bundle (unrecorded)")
    return None


def store_location(bundle: Bundle) -> tuple[Path, bool]:
    """(folder, in_bundle): the bundle itself when its manifest and engines/ can be written, else the
    user-cache folder for its graph."""
    engines = bundle.engines_dir
    try:
        engines.mkdir(parents=True, exist_ok=True)
        if all(os.access(p, os.W_OK) for p in (bundle.path, engines, bundle.path / "manifest.json")):
            return bundle.path, True
    except OSError:
        pass
    udir = user_engine_dir(bundle.manifest.graph.sha256)
    udir.mkdir(parents=True, exist_ok=True)
    log.info("bundle %s is read-only: TensorRT engines go to %s", bundle.path, udir)
    return udir, False


def engine_file(bundle: Bundle, base: Path, in_bundle: bool, key: str) -> Path:
    return (bundle.engines_dir if in_bundle else base) / f"{key}.engine"


def make_record(base: Path, engine_path: Path, key: str, target: EngineTarget, profile: OptimizationProfile,
                workspace_bytes: int | None = None) -> dict[str, Any]:
    """The manifest / index entry of a freshly built engine (its file relative to `base`)."""
    return {
        "file": engine_path.relative_to(base).as_posix(), "sha256": sha256_file(engine_path),
        "bytes": engine_path.stat().st_size, "key": key, "gpu": target.gpu,
        "compute_capability": cc_string(target.compute_capability), "tensorrt": target.tensorrt,
        "precision": target.precision, "graph_sha256": target.graph_sha256, "profile": profile.to_dict(),
        "strongly_typed": True, "workspace_bytes": workspace_bytes,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def file_lock(lock: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """An O_EXCL lock file held for a short read-modify-write; BundleError when it stays taken."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise BundleError(f"{lock} is held by another process for over {timeout_s:.0f} s; "
                                  "remove it if no other sydes process is running") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def record_engine(folder: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Add (or replace, by key) one engine record in `folder/manifest.json`, atomically and under a lock
    file, so that two processes recording different engines do not lose each other's entry."""
    folder = Path(folder)
    validate_engine_records([record])
    with file_lock(folder / ".manifest.json.lock"):
        raw = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        kept = [r for r in raw.get("tensorrt_engines") or [] if r.get("key") != record["key"]]
        raw["tensorrt_engines"] = [*kept, record]
        return write_manifest(folder, raw)


def add_record(base: Path, in_bundle: bool, record: dict[str, Any]) -> Path:
    """Record a built engine: in the bundle's manifest, or in the user-cache index; returns the file written."""
    if in_bundle:
        return record_engine(base, record)
    validate_engine_records([record])
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / f".{INDEX}.lock"):
        kept = [r.to_dict() for r in _read_index(base) if r.key != record["key"]]
        path = base / INDEX
        atomic_write_text(path, json.dumps({"format": INDEX_FORMAT, "tensorrt_engines": [*kept, record]},
                                           indent=2) + "\n")
    return path
