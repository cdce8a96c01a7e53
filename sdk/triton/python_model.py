"""The Triton Python-backend preprocessing model: encoded image bytes + text -> the graph's inputs.

Uses this project's one image pipeline (sdk.preprocess) and tokenizer (sdk.tokenizer), as Analyzer
does, so Triton's answers equal Analyzer's. Per request: IMAGE, TEXT are TYPE_STRING [B, 1] (bytes);
outputs global_pixels u8 [B,G,G,3], canvas_pixels u8 [B,C,C,3], input_ids / attention_mask i64 [B,L]
(L = the tokenizer's max_length: equal shapes, so Triton can batch). A bad post fails its request with
an error that names it; the other requests of the batch are answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import InputError, InputTypeError, TextError


def _backend_utils() -> Any:
    import triton_python_backend_utils  # only inside Triton's Python backend (tests pass a stand-in)

    return triton_python_backend_utils


class Preprocessor:
    """The model's work without Triton: lists of encoded images and texts -> {input name: batch array}."""

    def __init__(self, folder: str | Path) -> None:
        from sdk.preprocess import PreprocessConfig, preprocess
        from sdk.tokenizer import Tokenizer

        folder = Path(folder)
        self.settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
        self.cfg = PreprocessConfig.from_dict(self.settings["preprocess"])
        tk = self.settings["tokenizer"]
        self.tokenizer = Tokenizer.from_file(folder / tk["file"], max_length=tk["max_length"], kind=tk["kind"])
        self.reduce_for = self.cfg.global_size if self.settings.get("fast_decode", True) else None
        self._preprocess = preprocess

    def __call__(self, images: list[Any], texts: list[Any]) -> dict[str, np.ndarray]:
        if len(images) != len(texts):
            raise InputError(f"IMAGE has {len(images)} posts but TEXT has {len(texts)}")
        views, strs = [], []
        for i, (img, txt) in enumerate(zip(images, texts, strict=True)):
            if not isinstance(img, (bytes, bytearray)):  # bytes only: never a path on the server
                raise InputTypeError(f"post {i}: IMAGE must be the encoded image file's bytes, "
                                     f"got {type(img).__name__}")
            if isinstance(txt, (bytes, bytearray)):
                try:
                    txt = bytes(txt).decode("utf-8")
                except UnicodeDecodeError as e:
                    raise TextError(f"post {i}: TEXT is not valid UTF-8: {e}") from None
            try:
                text = self.tokenizer.check_text(txt, i, require_text=True)
                views.append(self._preprocess(bytes(img), self.cfg, reduce_for=self.reduce_for))
            except InputError as e:
                raise type(e)(f"post {i}: {e}") from None
            strs.append(text)
        ids, mask = self.tokenizer.encode_batch(strs, require_text=True)
        return {"global_pixels": np.stack([v[0] for v in views]), "canvas_pixels": np.stack([v[1] for v in views]),
                "input_ids": ids, "attention_mask": mask}


class TritonPythonModel:
    """Triton's Python backend interface: initialize(args), execute(requests) -> responses."""

    def initialize(self, args: dict[str, str]) -> None:
        self.pb = _backend_utils()
        self.pre = Preprocessor(Path(args["model_repository"]) / str(args["model_version"]))
        self.image_input = self.pre.settings["image_input"]
        self.text_input = self.pre.settings["text_input"]

    def _column(self, request: Any, name: str) -> list[Any]:
        t = self.pb.get_input_tensor_by_name(request, name)
        if t is None:
            raise InputError(f"the request has no input {name!r}")
        return list(np.asarray(t.as_numpy(), dtype=object).reshape(-1))

    def _respond(self, request: Any) -> Any:
        pb = self.pb
        try:
            arrays = self.pre(self._column(request, self.image_input), self._column(request, self.text_input))
        except InputError as e:  # this request only: Triton answers the others of the batch
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(f"{type(e).__name__}: {e}"))
        return pb.InferenceResponse(output_tensors=[pb.Tensor(n, a) for n, a in arrays.items()])

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._respond(r) for r in requests]

    def finalize(self) -> None:
        pass
