"""Builds a tiny fake bundle without torch: an onnx.helper graph that honours the bundle I/O contract.

global_pixels u8 [B,224,224,3], canvas_pixels u8 [B,448,448,3], input_ids / attention_mask i64 [B,L]
-> probs_<task> f32 [B,C] (softmax). Features per row: mean colour of both views, max of the canvas and
a masked mean of a token embedding, so results depend on the image, on the text and on each row alone,
and trailing padding columns do not change them (trim_padding holds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sdk.bundle import file_record, write_manifest

TASKS = {
    "sentiment": ["negative", "neutral", "positive"],
    "emotion": ["happiness", "sad", "neutral", "disgust", "anger", "fear"],
    "desire": ["vengeance", "curiosity", "social-contact", "family", "tranquility", "romance", "none"],
}
WORDS = ["a", "photo", "of", "the", "cat", "dog", "sunny", "happy", "sad", "beach", "party", "angry", "man", "woman", "child", "love", "hate", "great", "bad", "day", "night", "car", "house", "tree", "flower", "food", "people", "friends", "family", "run", "walk"]
EMB = 6


def build_tokenizer_json(path: Path, max_length: int) -> list[str]:
    """A small BERT-style WordPiece tokenizer.json; returns the vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ing", "##ed", "##y"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=max_length)
    tok.save(str(path))
    return vocab


def build_graph(path: Path, tasks: dict[str, list[str]], vocab_size: int, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    feat = 3 + 3 + 3 + EMB
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (vocab_size, EMB)).astype(np.float32), "emb"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "hw_axes"),
        numpy_helper.from_array(np.array([1], np.int64), "seq_axis"),
        numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Cast", ["global_pixels"], ["g_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["g_f", "inv255"], ["g_s"]),
        helper.make_node("ReduceMean", ["g_s", "hw_axes"], ["g_mean"], keepdims=0),
        helper.make_node("Cast", ["canvas_pixels"], ["c_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["c_f", "inv255"], ["c_s"]),
        helper.make_node("ReduceMean", ["c_s", "hw_axes"], ["c_mean"], keepdims=0),
        helper.make_node("ReduceMax", ["c_s", "hw_axes"], ["c_max"], keepdims=0),
        helper.make_node("Gather", ["emb", "input_ids"], ["tok_e"], axis=0),          # [B,L,E]
        helper.make_node("Cast", ["attention_mask"], ["m_f"], to=TensorProto.FLOAT),  # [B,L]
        helper.make_node("Unsqueeze", ["m_f", "last_axis"], ["m_3"]),                 # [B,L,1]
        helper.make_node("Mul", ["tok_e", "m_3"], ["tok_m"]),
        helper.make_node("ReduceSum", ["tok_m", "seq_axis"], ["t_sum"], keepdims=0),  # [B,E]
        helper.make_node("ReduceSum", ["m_f", "seq_axis"], ["m_cnt"], keepdims=1),    # [B,1]
        helper.make_node("Add", ["m_cnt", "eps"], ["m_cnt_e"]),
        helper.make_node("Div", ["t_sum", "m_cnt_e"], ["t_mean"]),
        helper.make_node("Concat", ["g_mean", "c_mean", "c_max", "t_mean"], ["feat"], axis=1),
    ]
    outputs = []
    for task, labels in tasks.items():
        w = rng.normal(0, 0.6, (feat, len(labels))).astype(np.float32)
        b = rng.normal(0, 0.5, (len(labels),)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w_{task}"), numpy_helper.from_array(b, f"b_{task}")]
        nodes += [
            helper.make_node("MatMul", ["feat", f"w_{task}"], [f"z_{task}"]),
            helper.make_node("Add", [f"z_{task}", f"b_{task}"], [f"l_{task}"]),
            helper.make_node("Softmax", [f"l_{task}"], [f"probs_{task}"], axis=-1),
        ]
        outputs.append(helper.make_tensor_value_info(f"probs_{task}", TensorProto.FLOAT, ["batch", len(labels)]))
    inputs = [
        helper.make_tensor_value_info("global_pixels", TensorProto.UINT8, ["batch", 224, 224, 3]),
        helper.make_tensor_value_info("canvas_pixels", TensorProto.UINT8, ["batch", 448, 448, 3]),
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    graph = helper.make_graph(nodes, "fake_sydes", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="sydes-test")
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_fake_bundle(folder: str | Path, *, tasks: dict[str, list[str]] | None = None, max_length: int = 16,
                      trim_padding: bool = True, precision: str = "fp32", name: str = "fake",
                      label_structure: dict | None = None, text: dict | None = None) -> Path:
    """Write a complete, valid NAME.sydes/ folder at `folder`; returns its path. `text`: the tokenizer
    section's text keys (TextFields.to_dict()); none by default, as a manifest from before them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tasks = dict(tasks or TASKS)
    vocab = build_tokenizer_json(folder / "tokenizer.json", max_length)
    build_graph(folder / "model.onnx", tasks, len(vocab))
    (folder / "engines").mkdir(exist_ok=True)
    graph = file_record(folder, "model.onnx")
    graph.update(
        inputs=[{"name": "global_pixels", "dtype": "uint8", "shape": ["batch", 224, 224, 3]},
                {"name": "canvas_pixels", "dtype": "uint8", "shape": ["batch", 448, 448, 3]},
                {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
                {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}],
        outputs=[{"name": f"probs_{t}", "dtype": "float32", "shape": ["batch", len(v)]} for t, v in tasks.items()],
    )
    tok = file_record(folder, "tokenizer.json")
    tok.pop("bytes")
    tok.update(kind="wordpiece", max_length=max_length, trim_padding=trim_padding)
    tok.update(text or {})
    manifest = {
        "schema": "sydes-bundle", "schema_version": 1, "name": name, "created": "2025-01-01T00:00:00Z",
        "tasks": tasks, "precision": precision, "graphs": {"model": graph}, "tokenizer": tok,
        "preprocess": {"global_size": 224, "canvas_size": 448},
        "provenance": {"checkpoints": [], "packages": {}, "opset": 18, "calibration": None},
        "validation": {}, "calibration_report": None, "engines": "engines/",
    }
    if label_structure is not None:
        manifest["label_structure"] = label_structure
    write_manifest(folder, manifest)
    return folder


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def jpeg_bytes(seed: int, size: tuple[int, int] = (56, 40), quality: int = 85) -> bytes:
    """A random-noise JPEG of `size` (W, H), deterministic in `seed` (the posts of the runtime tests)."""
    import io

    from PIL import Image

    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
