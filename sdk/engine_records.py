"""The manifest's "tensorrt_engines" entries: one record per TensorRT engine built from a bundle's graph,
with the shape profile it covers (validated here; sdk.bundle calls it for the manifest, the TensorRT backend
for its user-cache index)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdk.bundle import _HEX64, PRECISIONS, _need, _relfile, _sha
from sdk.errors import BundleError

PROFILE_FIELDS = ("min_batch", "opt_batch", "max_batch", "min_seq", "opt_seq", "max_seq")


@dataclass(frozen=True)
class EngineRecord:
    """One TensorRT engine built from this bundle's graph (manifest "tensorrt_engines" entry).

    `profile` holds the engine's shape range: min/opt/max batch and token-sequence length. An engine is
    reusable for a request when it was built on the same GPU / TensorRT / precision / graph and its profile
    covers the request's range (`covers`).
    """

    file: str
    sha256: str
    bytes: int
    key: str
    gpu: str
    compute_capability: str
    tensorrt: str
    precision: str
    graph_sha256: str
    profile: dict[str, int]
    strongly_typed: bool = True
    workspace_bytes: int | None = None
    built: str = ""

    def covers(self, max_batch: int, min_seq: int, max_seq: int, min_batch: int = 1) -> bool:
        p = self.profile
        return (p["min_batch"] <= min_batch and p["max_batch"] >= max_batch
                and p["min_seq"] <= min_seq and p["max_seq"] >= max_seq)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def validate_engine_records(items: Any, where: str = "tensorrt_engines") -> tuple[EngineRecord, ...]:
    """Check a list of engine records (the manifest's, or a user-cache index's); BundleError names the field."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise BundleError(f"manifest field '{where}' must be a list")
    out = []
    for i, r in enumerate(items):
        w = f"{where}[{i}]"
        prof = _need(r, "profile", w, dict)
        for f in PROFILE_FIELDS:
            v = _need(prof, f, f"{w}.profile", int)
            if v < 1:
                raise BundleError(f"manifest field '{w}.profile.{f}' must be >= 1, got {v}")
        if not (prof["min_batch"] <= prof["opt_batch"] <= prof["max_batch"]
                and prof["min_seq"] <= prof["opt_seq"] <= prof["max_seq"]):
            raise BundleError(f"manifest field '{w}.profile' needs min <= opt <= max for batch and seq")
        precision = _need(r, "precision", w, str)
        if precision not in PRECISIONS:
            raise BundleError(f"manifest field '{w}.precision' is {precision!r}; valid: {', '.join(PRECISIONS)}")
        key = _need(r, "key", w, str)
        graph_sha = _need(r, "graph_sha256", w, str)
        for name, value in (("key", key), ("graph_sha256", graph_sha)):
            if not _HEX64.match(value):
                raise BundleError(f"manifest field '{w}.{name}' must be 64 lowercase hex digits")
        typed = r.get("strongly_typed", True)
        ws = r.get("workspace_bytes")
        if not isinstance(typed, bool):
            raise BundleError(f"manifest field '{w}.strongly_typed' must be true or false")
        if ws is not None and (not isinstance(ws, int) or isinstance(ws, bool) or ws < 1):
            raise BundleError(f"manifest field '{w}.workspace_bytes' must be a positive integer or null")
        out.append(EngineRecord(
            file=_relfile(_need(r, "file", w, str), f"{w}.file"), sha256=_sha(r, w), bytes=_need(r, "bytes", w, int),
            key=key, gpu=_need(r, "gpu", w, str), compute_capability=_need(r, "compute_capability", w, str),
            tensorrt=_need(r, "tensorrt", w, str), precision=precision, graph_sha256=graph_sha,
            profile={f: int(prof[f]) for f in PROFILE_FIELDS}, strongly_typed=typed, workspace_bytes=ws,
            built=str(r.get("built", ""))))
    return tuple(out)
