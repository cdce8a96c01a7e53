"""Several single-task checkpoints with one image encoder -> one multi-task bundle (encoder runs once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.errors import SharedEncoderMismatchError  # noqa: E402
from export.pipeline import ExportOptions, export_checkpoints  # noqa: E402

TASKS = ("sentiment", "emotion", "desire")


def _checkpoints(root: Path, same_encoder: bool = True) -> list[Path]:
    """Three single-task tiny models; with same_encoder their image encoders are identical tensors."""
    from sdk.tokenizer import Tokenizer
    from training.model import SyDES
    from training.presets import tiny_clip

    tok = root / "tokenizer.json"
    Tokenizer.clip().save(tok)
    torch.manual_seed(0)
    models = [SyDES(tiny_clip(t)) for t in TASKS]
    if same_encoder:
        for m in models[1:]:
            m.image_encoder.load_state_dict(models[0].image_encoder.state_dict())
    return [m.save_pretrained(root / t, tokenizer_file=tok) for m, t in zip(models, TASKS, strict=True)]


def test_shared_encoder_refuses_different_encoders(tmp_path: Path) -> None:
    cks = _checkpoints(tmp_path, same_encoder=False)
    out = tmp_path / "multi.sydes"
    with pytest.raises(SharedEncoderMismatchError, match=r"cannot share one image encoder: \d+ tensor\(s\) differ "
                       r"from .*sentiment: image_encoder\.vision_model\..* \(.*emotion\)") as e:
        export_checkpoints(cks, out, ExportOptions())
    assert any("(" + str(cks[2]) + ")" in d for d in e.value.differing)
    assert not out.exists()


def test_shared_encoder_mismatch_names_only_differing_tensors(tmp_path: Path) -> None:
    from export.graph import shared_encoder_mismatch
    from training.model import SyDES
    from training.presets import tiny_clip

    torch.manual_seed(0)
    a, b = SyDES(tiny_clip("sentiment")), SyDES(tiny_clip("emotion"))
    b.image_encoder.load_state_dict(a.image_encoder.state_dict())
    assert shared_encoder_mismatch([a, b], ["a", "b"]) == []
    with torch.no_grad():
        b.image_encoder.vision_model.post_layernorm.bias.add_(1e-3)
    assert shared_encoder_mismatch([a, b], ["a", "b"]) == ["image_encoder.vision_model.post_layernorm.bias (b)"]


@pytest.mark.slow
def test_shared_encoder_bundle(tmp_path: Path) -> None:
    from sdk.analyzer import Analyzer
    from training.model import SyDES

    cks = _checkpoints(tmp_path)
    rep = export_checkpoints(cks, tmp_path / "multi.sydes", ExportOptions(cache_dir=str(tmp_path / "cache")))
    m = rep.manifest
    assert list(m["tasks"]) == list(TASKS) and m["provenance"]["shared_image_encoder"] is True
    assert len(m["provenance"]["checkpoints"]) == 3 and m["validation"]["passed"]
    single = export_checkpoints(cks[:1], tmp_path / "one.sydes", ExportOptions(cache_dir=str(tmp_path / "cache")))
    one_bytes, multi_bytes = single.manifest["graphs"]["model"]["bytes"], m["graphs"]["model"]["bytes"]
    assert multi_bytes < 3 * one_bytes  # the image encoder's weights are stored once
    img = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    with Analyzer(rep.bundle, backend="onnxruntime", device="cpu", warmup=False) as a:
        res = a.analyze(img, "a happy family at the beach")
    for ck, task in zip(cks, TASKS, strict=True):  # each branch answers as its own model
        model = SyDES.from_pretrained(ck)
        from calibration.data import Post
        from calibration.reader import SydesCalibrationReader

        feed = SydesCalibrationReader([Post(img, "a happy family at the beach")], model.config.preprocess,
                                      a.tokenizer).feed([Post(img, "a happy family at the beach")])
        with torch.no_grad():
            p = model.forward_probs(torch.as_tensor(feed["input_ids"]), torch.as_tensor(feed["attention_mask"]),
                                    global_pixels=torch.as_tensor(feed["global_pixels"]),
                                    canvas_pixels=torch.as_tensor(feed["canvas_pixels"]))[task][0].numpy()
        got = np.array([res.tasks[task].probs[label] for label in m["tasks"][task]])
        np.testing.assert_allclose(got, p, atol=1e-4)
