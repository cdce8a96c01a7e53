"""The bundle format (`NAME.sydes/`): manifest schema, writing, reading and integrity checks.

export/ writes bundles with `write_manifest` / `file_record` / `sha256_file`; the runtime reads them with
`load_bundle`. The manifest is documented in docs/contracts.md; this module is its single validator.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.atomic import atomic_write_text
from sdk.errors import BundleError, BundleIntegrityError, ConfigError
from sdk.hashing import cached_sha256, clear_verify_cache, file_record, sha256_file  # noqa: F401  (re-exported)
from sdk.text_fields import TextFields

if TYPE_CHECKING:  # pragma: no cover
    from sdk.engine_records import EngineRecord

SCHEMA = "sydes-bundle"
# The graph's inputs, in the order of its signature (the one definition: export writes it, calibration feeds it,
# the backends run it): uint8 global view [B,224,224,3], uint8 canvas [B,448,448,3], int64 ids / mask [B,L].
INPUT_NAMES = ("global_pixels", "canvas_pixels", "input_ids", "attention_mask")
IMAGE_INPUT_NAMES = INPUT_NAMES[:2]
# A text-only bundle (the text-only model family, for posts without images) takes the text inputs alone.
TEXT_INPUT_NAMES = INPUT_NAMES[2:]
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
# Graph formats: "onnx" (one .onnx file), "openvino" (IR: the .xml topology plus its "weights" .bin, both hashed)
GRAPH_FORMATS = ("onnx", "openvino")
TOKENIZER_KINDS = ("clip", "wordpiece")
DTYPES = ("uint8", "int8", "int32", "int64", "float16", "float32", "bool")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- the manifest as dataclasses -----------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: dims are ints (fixed) or names ("batch", "seq") for dynamic axes."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    file: str
    sha256: str
    bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    sha256: str
    kind: str
    max_length: int
    trim_padding: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # the text the model reads (sdk.text_fields.TextFields); manifests without them: the Caption, " "
    text_fields: tuple[str, ...] = ("Caption",)
    text_separator: str = " "


@dataclass(frozen=True)
class Manifest:
    """A validated view of manifest.json; `raw` keeps the whole dict (unknown keys included)."""

    schema_version: int
    name: str
    created: str
    tasks: dict[str, tuple[str, ...]]
    precision: str
    graphs: dict[str, GraphSpec]
    tokenizer: TokenizerSpec
    preprocess: dict[str, Any] | None  # None: a text-only graph
    provenance: dict[str, Any]
    validation: dict[str, Any]
    calibration_report: dict[str, Any] | None
    engines: str
    raw: dict[str, Any]
    engine_records: tuple[EngineRecord, ...] = ()  # TensorRT engines built for this bundle ("tensorrt_engines")

    @property
    def graph(self) -> GraphSpec:
        """The main graph ("model")."""
        return self.graphs["model"]


# --- validation ---------------------------------------------------------------------------------------
def _need(d: dict[str, Any], key: str, where: str, types: type | tuple[type, ...]) -> Any:
    field_name = f"{where}.{key}" if where else key
    if not isinstance(d, dict):
        raise BundleError(f"manifest field '{where}' must be an object")
    if key not in d:
        raise BundleError(f"manifest field '{field_name}' is missing")
    value = d[key]
    # bool is an int subclass: never accept it where a number is meant.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise BundleError(f"manifest field '{field_name}' must be {names}, got {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _relfile(value: str, field_name: str) -> str:
    # A manifest is data: it must not point outside its bundle.
    p = Path(value)
    if not value or p.is_absolute() or ".." in p.parts:
        raise BundleError(f"manifest field '{field_name}' must be a relative path inside the bundle, got {value!r}")
    return value


def _sha(d: dict[str, Any], where: str) -> str:
    value = _need(d, "sha256", where, str)
    if not _HEX64.match(value):
        raise BundleError(f"manifest field '{where}.sha256' must be 64 lowercase hex digits")
    return value


def _tensors(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items:
        raise BundleError(f"manifest field '{where}' must be a non-empty list")
    out = []
    for i, t in enumerate(items):
        w = f"{where}[{i}]"
        name = _need(t, "name", w, str)
        dtype = _need(t, "dtype", w, str)
        if dtype not in DTYPES:
            raise BundleError(f"manifest field '{w}.dtype' is {dtype!r}; valid: {', '.join(DTYPES)}")
        shape = _need(t, "shape", w, list)
        if not all(isinstance(s, (int, str)) and not isinstance(s, bool) for s in shape):
            raise BundleError(f"manifest field '{w}.shape' must list ints and axis names")
        out.append(TensorSpec(name, dtype, tuple(shape)))
    return tuple(out)


def _engine_records(items: Any) -> tuple[EngineRecord, ...]:
    from sdk.engine_records import validate_engine_records

    return validate_engine_records(items)


def validate_manifest(d: Any) -> Manifest:
    """Check a manifest dict against the schema; BundleError names the first bad field."""
    if not isinstance(d, dict):
        raise BundleError("manifest must be a JSON object")
    schema = _need(d, "schema", "", str)
    if schema != SCHEMA:
        raise BundleError(f"manifest field 'schema' is {schema!r}, expected {SCHEMA!r}: not a SyDES bundle")
    version = _need(d, "schema_version", "", int)
    if version > SCHEMA_VERSION:
        raise BundleError(f"manifest field 'schema_version' is {version}, newer than this SDK supports "
                          f"({SCHEMA_VERSION}): upgrade sydes-edge")
    if version < 1:
        raise BundleError(f"manifest field 'schema_version' is {version}; supported: {SCHEMA_VERSION}")
    name = _need(d, "name", "", str)
    created = d.get("created", "")
    tasks_raw = _need(d, "tasks", "", dict)
    if not tasks_raw:
        raise BundleError("manifest field 'tasks' is empty")
    tasks: dict[str, tuple[str, ...]] = {}
    for task, labels in tasks_raw.items():
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise BundleError(f"manifest field 'tasks.{task}' must list at least 2 label names")
        tasks[task] = tuple(labels)
    precision = _need(d, "precision", "", str)
    if precision not in PRECISIONS:
        raise BundleError(f"manifest field 'precision' is {precision!r}; valid: {', '.join(PRECISIONS)}")
    graphs_raw = _need(d, "graphs", "", dict)
    if "model" not in graphs_raw:
        raise BundleError("manifest field 'graphs.model' is missing")
    graphs: dict[str, GraphSpec] = {}
    for gname, g in graphs_raw.items():
        w = f"graphs.{gname}"
        file = _relfile(_need(g, "file", w, str), f"{w}.file")
        nbytes = _need(g, "bytes", w, int)
        fmt = g.get("format", "onnx")
        if fmt not in GRAPH_FORMATS:
            raise BundleError(f"manifest field '{w}.format' is {fmt!r}; valid: {', '.join(GRAPH_FORMATS)}")
        if fmt == "openvino":
            weights = _need(g, "weights", w, dict)
            _relfile(_need(weights, "file", f"{w}.weights", str), f"{w}.weights.file")
            _sha(weights, f"{w}.weights")
            _need(weights, "bytes", f"{w}.weights", int)
        graphs[gname] = GraphSpec(
            file=file, sha256=_sha(g, w), bytes=nbytes,
            inputs=_tensors(_need(g, "inputs", w, list), f"{w}.inputs"),
            outputs=_tensors(_need(g, "outputs", w, list), f"{w}.outputs"),
            extra={k: v for k, v in g.items() if k not in ("file", "sha256", "bytes", "inputs", "outputs")},
        )
    in_names = sorted(t.name for t in graphs["model"].inputs)
    if in_names not in (sorted(INPUT_NAMES), sorted(TEXT_INPUT_NAMES)):
        raise BundleError(f"manifest field 'graphs.model.inputs' names {in_names}; a bundle's graph takes "
                          f"{list(INPUT_NAMES)} (image + text) or {list(TEXT_INPUT_NAMES)} (text-only)")
    images = len(in_names) == len(INPUT_NAMES)
    out_names = {t.name for t in graphs["model"].outputs}
    for task in tasks:
        if f"probs_{task}" not in out_names:
            raise BundleError(f"manifest field 'graphs.model.outputs' has no 'probs_{task}' for task {task!r}")
    tok = _need(d, "tokenizer", "", dict)
    kind = _need(tok, "kind", "tokenizer", str)
    if kind not in TOKENIZER_KINDS:
        raise BundleError(f"manifest field 'tokenizer.kind' is {kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
    max_length = _need(tok, "max_length", "tokenizer", int)
    if max_length < 2:
        raise BundleError(f"manifest field 'tokenizer.max_length' must be >= 2, got {max_length}")
    trim = tok.get("trim_padding", False)
    if not isinstance(trim, bool):
        raise BundleError("manifest field 'tokenizer.trim_padding' must be true or false")
    if not isinstance(tok.get("text_separator", " "), str):
        raise BundleError("manifest field 'tokenizer.text_separator' must be a string")
    try:
        text = TextFields.from_dict(tok)
    except ConfigError as e:
        raise BundleError(f"manifest field 'tokenizer.text_fields': {e}") from None
    known = ("file", "sha256", "kind", "max_length", "trim_padding", "text_fields", "text_separator")
    tokenizer = TokenizerSpec(
        file=_relfile(_need(tok, "file", "tokenizer", str), "tokenizer.file"), sha256=_sha(tok, "tokenizer"),
        kind=kind, max_length=max_length, trim_padding=trim, extra={k: v for k, v in tok.items() if k not in known},
        text_fields=text.fields, text_separator=text.separator,
    )
    # a text-only graph has no image to preprocess: its manifest says "preprocess": null
    preprocess = _need(d, "preprocess", "", dict) if images else d.get("preprocess")
    if not images and preprocess is not None:
        raise BundleError("manifest field 'preprocess' must be null for a text-only graph (it has no image inputs)")
    engines = d.get("engines", "engines/")
    if not isinstance(engines, str):
        raise BundleError("manifest field 'engines' must be a folder name")
    _relfile(engines.rstrip("/") or "engines", "engines")
    calib = d.get("calibration_report")
    structure = d.get("label_structure")
    if structure is not None:
        from sdk.labels import structure_or_none

        try:
            structure_or_none(structure, tasks)
        except ConfigError as e:
            raise BundleError(f"manifest field 'label_structure': {e}") from None
    return Manifest(
        schema_version=version, name=name, created=str(created), tasks=tasks, precision=precision,
        graphs=graphs, tokenizer=tokenizer, preprocess=dict(preprocess) if images else None,
        provenance=dict(d.get("provenance") or {}), validation=dict(d.get("validation") or {}),
        calibration_report=calib if isinstance(calib, dict) else None, engines=engines, raw=d,
        engine_records=_engine_records(d.get("tensorrt_engines")),
    )


# --- writing ------------------------------------------------------------------------------------------
def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Validate `manifest` and write `folder/manifest.json` atomically; returns its path.

    The listed files must already be in `folder` with the listed hashes (checked as its reader checks them,
    so that a bundle is never written with a manifest that its own reader would reject; a file hashed by
    `file_record` in this process is not read again unless it changed since).
    """
    folder = Path(folder)
    m = validate_manifest(manifest)
    _verify_files(folder, m)
    path = folder / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path


# --- reading ------------------------------------------------------------------------------------------
def _verify_files(folder: Path, m: Manifest, use_cache: bool = True) -> None:
    entries = [(f"graphs.{n}", g.file, g.sha256, g.bytes) for n, g in m.graphs.items()]
    entries += [(f"graphs.{n}.weights", w["file"], w["sha256"], w["bytes"]) for n, g in m.graphs.items()
                if isinstance(w := g.extra.get("weights"), dict)]
    entries.append(("tokenizer", m.tokenizer.file, m.tokenizer.sha256, None))
    for where, rel, expected, nbytes in entries:
        path = folder / rel
        if not path.is_file():
            raise BundleIntegrityError(f"bundle file {rel} (manifest '{where}') is missing from {folder}")
        size = path.stat().st_size
        if nbytes is not None and size != nbytes:
            raise BundleIntegrityError(f"bundle file {rel} has {size} bytes, the manifest says {nbytes}: "
                                       "the file is truncated or was modified")
        digest = cached_sha256(path) if use_cache else sha256_file(path)
        if digest != expected:
            raise BundleIntegrityError(f"bundle file {rel} does not match its sha256 in the manifest "
                                       f"(expected {expected[:12]}..., got {digest[:12]}...): "
                                       "the file is corrupt or was modified")


@dataclass(frozen=True)
class Bundle:
    """An opened bundle folder and its validated manifest."""

    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def tasks(self) -> dict[str, tuple[str, ...]]:
        return self.manifest.tasks

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def graph_format(self) -> str:
        """Format of the main graph: "onnx" (model.onnx) or "openvino" (OpenVINO IR: model.xml + model.bin)."""
        return str(self.manifest.graph.extra.get("format", "onnx"))

    def graph_path(self, graph: str = "model") -> Path:
        if graph not in self.manifest.graphs:
            raise BundleError(f"bundle {self.name!r} has no graph {graph!r} "
                              f"(has: {', '.join(self.manifest.graphs)})")
        return self.path / self.manifest.graphs[graph].file

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.manifest.tokenizer.file

    @property
    def text_fields(self) -> TextFields:
        """The columns the model's text is built from (`sydes analyze --input` builds it so)."""
        tok = self.manifest.tokenizer
        return TextFields(tok.text_fields, tok.text_separator)

    @property
    def engines_dir(self) -> Path:
        return self.path / (self.manifest.engines.rstrip("/") or "engines")

    @property
    def uses_images(self) -> bool:
        """False for a text-only bundle: its graph takes ids and mask alone, no image is read."""
        return self.manifest.preprocess is not None  # null exactly for a text-only graph (validate_manifest)

    def preprocess_config(self):  # -> sdk.preprocess.PreprocessConfig | None (None: a text-only bundle)
        from sdk.preprocess import PreprocessConfig

        if self.manifest.preprocess is None:
            return None
        try:
            return PreprocessConfig.from_dict(self.manifest.preprocess)
        except (TypeError, ValueError, KeyError) as e:
            raise BundleError(f"manifest field 'preprocess' is invalid: {e}") from e

    def verify(self) -> None:
        """Re-hash every listed file (no cache) and raise BundleIntegrityError on a mismatch."""
        _verify_files(self.path, self.manifest, use_cache=False)


def load_bundle(path: str | os.PathLike[str], verify: bool = True, *,
                manifest: dict[str, Any] | None = None) -> Bundle:
    """Open a bundle folder: parse and validate manifest.json, and (by default) check every file's sha256.

    `manifest`: a manifest dict to open the folder with instead of its manifest.json (a bundle being
    written, checked before its manifest is final); validated and verified exactly as the file would be.
    Hashes are cached per process by file identity, so re-opening an unchanged bundle is fast.
    Raises BundleError (missing / malformed / unsupported) or BundleIntegrityError (a file changed).
    """
    folder = Path(path)
    if folder.is_file() and folder.name == MANIFEST:
        folder = folder.parent
    if not folder.exists():
        raise BundleError(f"bundle {folder} does not exist")
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} is not a folder (a bundle is a NAME.sydes/ folder)")
    raw = _read_manifest(folder) if manifest is None else manifest
    m = validate_manifest(raw)
    if verify:
        _verify_files(folder, m)
    return Bundle(path=folder, manifest=m)


def _read_manifest(folder: Path) -> Any:
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{folder} has no {MANIFEST}: not a SyDES bundle")
    try:
        return json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from e
