"""A tiny random tiny_clip checkpoint for the export tests (torch; the torch-free fakes are in bundle_fixture)."""

from __future__ import annotations

from pathlib import Path


def tiny_clip_work(root: Path) -> dict[str, Path]:
    """{"root", "ck" (a saved tiny_clip checkpoint, seed 0, CLIP tokenizer), "cache" (an export cache dir)}."""
    import torch

    from sdk.tokenizer import Tokenizer
    from training.model import SyDES
    from training.presets import tiny_clip

    torch.manual_seed(0)
    tok = root / "tokenizer.json"
    Tokenizer.clip().save(tok)
    ck = SyDES(tiny_clip()).save_pretrained(root / "ck", tokenizer_file=tok)
    return {"root": root, "ck": ck, "cache": root / "cache"}
