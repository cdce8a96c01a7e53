"""File hashes of bundles: sha256 in bounded memory, and an in-process cache of verified hashes."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from sdk.errors import BundleError


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (bounded memory for multi-GB graphs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# Verified hashes, keyed by the file's identity. ctime cannot be set from user space, so an edit that
# restores the mtime still invalidates the entry; re-opening an unchanged bundle skips re-hashing.
_VERIFY_CACHE: dict[tuple[str, int, int, int, int], str] = {}
_VERIFY_LOCK = threading.Lock()


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cached_sha256(path: Path) -> str:
    """sha256_file with an in-process cache keyed by (path, inode, size, mtime, ctime)."""
    key = _stat_key(path)
    with _VERIFY_LOCK:
        hit = _VERIFY_CACHE.get(key)
    if hit is not None:
        return hit
    digest = sha256_file(path)
    with _VERIFY_LOCK:
        _VERIFY_CACHE[key] = digest
    return digest


def clear_verify_cache() -> None:
    with _VERIFY_LOCK:
        _VERIFY_CACHE.clear()


def file_record(folder: str | os.PathLike[str], relpath: str) -> dict[str, Any]:
    """`{"file", "sha256", "bytes"}` for a file inside a bundle folder (what the manifest lists); the hash
    goes into the verify cache, so checking the new manifest does not read the file again."""
    path = Path(folder) / relpath
    if not path.is_file():
        raise BundleError(f"{path} is not a file")
    return {"file": relpath, "sha256": cached_sha256(path), "bytes": path.stat().st_size}
