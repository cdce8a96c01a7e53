"""A bundle's manifest and writing its folder once: stage the files, hash each once, check the staged bundle,
write the manifest.

The check (export.checks.check_with_analyzer) opens the staged folder with the in-memory manifest
(`sdk.bundle.load_bundle(folder, manifest=...)`: validated and verified as manifest.json would be), so
its figures go into the one manifest written afterwards. The folder appears at `output` only when all of
it is written (`sdk.atomic.atomic_directory`); a failure anywhere leaves nothing behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdk.bundle import SCHEMA, SCHEMA_VERSION, Bundle


def bundle_manifest(*, name: str, labels: dict[str, Any], precision: str, inputs: list[dict[str, Any]],
                    outputs: list[dict[str, Any]], tokenizer: dict[str, Any], preprocess: dict[str, Any] | None,
                    provenance: dict[str, Any], validation: dict[str, Any], calibration_report: dict[str, Any] | None,
                    label_structure: dict[str, Any] | None) -> dict[str, Any]:
    """manifest.json's content (docs/contracts.md) but its file records, which `write_bundle` adds."""
    manifest = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tasks": {t: list(v) for t, v in labels.items()},
        "precision": precision,
        "graphs": {"model": {"inputs": inputs, "outputs": outputs}},
        "tokenizer": tokenizer,
        "preprocess": preprocess,
        "provenance": provenance,
        "validation": validation,
        "calibration_report": calibration_report,
        "engines": "engines/",
    }
    if label_structure is not None:
        manifest["label_structure"] = label_structure
    return manifest


def write_bundle(output: Path, manifest: dict[str, Any], *, graph: Path, tokenizer: Path, overwrite: bool,
                 check: Callable[[Bundle], dict[str, Any]] | None = None,
                 checkpoints: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Write `output` (NAME.sydes/): `graph` (model.onnx, or model.xml + the model.bin beside it), the
    tokenizer, engines/, manifest.json and README.md; returns the manifest as written.

    `manifest` holds every field but the file records: its `graphs.model` (inputs, outputs) and
    `tokenizer` (kind, max_length, ...) entries get `file`, `sha256` (and `bytes`) here. `check(bundle)`
    runs on the staged bundle; its result becomes `validation.analyzer`."""
    import sdk.bundle
    from export.model_card import write_bundle_card
    from sdk.atomic import atomic_directory

    ir = graph.suffix == ".xml"
    with atomic_directory(output, overwrite=overwrite) as folder:
        shutil.copyfile(graph, folder / graph.name)
        if ir:
            shutil.copyfile(graph.with_suffix(".bin"), folder / "model.bin")
        shutil.copyfile(tokenizer, folder / "tokenizer.json")
        (folder / "engines").mkdir()
        graph_rec = sdk.bundle.file_record(folder, graph.name)  # each file hashed once, here
        if ir:
            graph_rec.update(format="openvino", weights=sdk.bundle.file_record(folder, "model.bin"))
        tok_rec = sdk.bundle.file_record(folder, "tokenizer.json")
        m = dict(manifest)
        m["graphs"] = {**manifest["graphs"], "model": {**graph_rec, **manifest["graphs"]["model"]}}
        m["tokenizer"] = {"file": "tokenizer.json", "sha256": tok_rec["sha256"], **manifest["tokenizer"]}
        m = json.loads(json.dumps(m))  # plain JSON types only
        if check is not None:
            m["validation"]["analyzer"] = check(sdk.bundle.load_bundle(folder, manifest=m))
        sdk.bundle.write_manifest(folder, m)  # once, final
        write_bundle_card(folder, m, list(checkpoints))
    return m
