"""`sydes triton BUNDLE -o REPO`: a Triton Inference Server model repository made from a bundle.

    REPO/sydes_graph/       the bundle's graph (onnxruntime, OpenVINO IR or a TensorRT plan), batched
    REPO/sydes_preprocess/  Python backend: this project's own decoding, views and tokenizer (sdk/)
    REPO/sydes/             the ensemble: encoded image bytes + text in, per-task probabilities out

Only the bundle is needed (numpy; onnx / openvino imported lazily where a format needs them). The
repository is checked here with Triton's own config schema and onnxruntime; no Triton server was run.
"""

from __future__ import annotations

from sdk.triton.repository import FORMATS, TritonOptions, write_repository

__all__ = ["FORMATS", "TritonOptions", "write_repository"]
