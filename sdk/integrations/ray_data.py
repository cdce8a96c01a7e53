"""Ray Data batch inference: `SydesPredictor`, a callable class for `Dataset.map_batches`.

    import ray
    from sdk.integrations.ray_data import SydesPredictor
    ds = ray.data.read_parquet("s3://bucket/posts/")            # columns: id, image (bytes or path), text
    out = ds.map_batches(SydesPredictor, fn_constructor_kwargs={"bundle": "/models/edge.sydes"},
                         batch_size=64, compute=ray.data.ActorPoolStrategy(size=8), num_gpus=1)
    out.write_parquet("s3://bucket/tags/")

Ray builds one predictor per actor (the bundle is loaded once there) and calls it on each batch. A batch
(pandas.DataFrame, pyarrow.Table or dict of numpy arrays) goes in; a pyarrow.Table with one row per input
row, in the same order, comes out: the passthrough columns (by default every column except the image,
text, error and error_type ones), then `ok`, `tasks`, `error`, `error_type` with the meaning and values
of `sdk.results.Result.to_dict()` (the fields of a `sydes analyze` output row). A bad row (unreadable
image, empty text) is a row with `ok=False` and its error; it never fails its batch. A row that arrives
with a non-null `error` column is passed through as failed with that error (the `sydes analyze --engine
ray` driver marks rows it could not read this way, so they keep their place and their reason).

Nothing here imports ray: the predictor is plain Python over pyarrow, so Spark's `mapInPandas` (or any
engine that hands over pandas / arrow batches) can call it too. `sdk.integrations.ray_sink` holds what
needs ray itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdk.errors import ConfigError, DataError, InputTypeError
from sdk.results import RESULT_FIELDS, Result

TASKS_FORMATS = ("struct", "json")  # tasks as a nested arrow struct (parquet-friendly) or a JSON string


class SydesPredictor:
    """One Analyzer per actor; `__call__(batch) -> pyarrow.Table` (see the module docstring).

    bundle: the NAME.sydes/ folder (on every node, or a shared file system). image_column values: bytes,
    a path (str; relative ones start from `image_root`), a decoded HxWxC uint8 array (`read_images`) or
    None. backend / device / threads / batch_size / workers / joint go to `sdk.Analyzer` and its `stream`
    (threads: the model's CPU threads per actor; workers: image-decoding threads per actor).
    """

    def __init__(self, bundle: str | os.PathLike[str], *, image_column: str = "image", text_column: str = "text",
                 image_root: str | os.PathLike[str] | None = None, passthrough: Sequence[str] | None = None,
                 backend: str = "auto", device: str = "auto", threads: int | None = None, batch_size: int = 16,
                 workers: int = 2, joint: bool | str = "auto", tasks_format: str = "struct") -> None:
        from sdk.analyzer import Analyzer

        if tasks_format not in TASKS_FORMATS:
            raise ConfigError(f"tasks_format must be one of {', '.join(TASKS_FORMATS)}, got {tasks_format!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.image_column, self.text_column = image_column, text_column
        self.image_root = Path(image_root) if image_root is not None else None
        self.passthrough = list(passthrough) if passthrough is not None else None
        self.batch_size, self.workers, self.tasks_format = batch_size, workers, tasks_format
        self.analyzer = Analyzer(bundle, device=device, backend=backend, threads=threads,
                                 max_batch_size=batch_size, joint=joint)
        self._schema = result_schema(self.analyzer.tasks, tasks_format)

    def __call__(self, batch: Any) -> Any:
        """batch: pandas.DataFrame | pyarrow.Table | dict[str, np.ndarray] with N rows -> pyarrow.Table, N rows."""
        view = _BatchView(batch)
        # a text-only bundle reads no image: the batch needs no image column
        need = (self.image_column, self.text_column) if self.analyzer.uses_images else (self.text_column,)
        for col in need:
            if col not in view.columns:
                raise DataError(f"the batch has no {col!r} column (columns: {', '.join(view.columns)}); "
                                f"pass image_column= / text_column=")
        none = [None] * view.num_rows
        images = view.values(self.image_column) if self.image_column in view.columns else none
        texts = view.values(self.text_column)
        pre_err = view.values("error") if "error" in view.columns else none
        pre_type = view.values("error_type") if "error_type" in view.columns else none
        results: list[Result | None] = [
            None if e is None else Result(tasks=None, error=str(e), error_type=None if t is None else str(t))
            for e, t in zip(pre_err, pre_type, strict=True)]
        todo = [i for i, r in enumerate(results) if r is None]
        items = [(self._image(images[i]), texts[i]) for i in todo]
        # stream: decoding threads run ahead of the model; one bad item is its own failed Result
        for i, r in zip(todo, self.analyzer.stream(items, batch_size=self.batch_size, workers=self.workers),
                        strict=True):
            results[i] = r
        return self._output(view, results)  # type: ignore[arg-type]

    def _image(self, value: Any) -> Any:
        if isinstance(value, str) and self.image_root is not None and not os.path.isabs(value):
            return str(self.image_root / value)
        return value

    def _output(self, view: _BatchView, results: list[Result]) -> Any:
        import pyarrow as pa

        skip = (self.image_column, self.text_column, *RESULT_FIELDS)
        keep = self.passthrough if self.passthrough is not None else [c for c in view.columns if c not in skip]
        missing = [c for c in keep if c not in view.columns]
        if missing:
            raise DataError(f"passthrough columns {missing} are not in the batch (columns: {', '.join(view.columns)})")
        dicts = [r.to_dict() for r in results]
        if self.tasks_format == "json":
            for d in dicts:
                d["tasks"] = None if d["tasks"] is None else json.dumps(d["tasks"], ensure_ascii=False)
        cols = {c: view.arrow(c) for c in keep}
        for f in RESULT_FIELDS:
            cols[f] = pa.array([d[f] for d in dicts], type=self._schema.field(f).type)
        return pa.table(cols)

    def close(self) -> None:
        """Release the backend (Ray drops actors without calling this; the process exit frees it then)."""
        self.analyzer.close()


def result_schema(tasks: Mapping[str, Sequence[str]], tasks_format: str = "struct") -> Any:
    """The pyarrow schema of the result columns: explicit, so every block has the same one (a batch whose
    rows all failed must not produce a `null`-typed `tasks` column that other blocks cannot concatenate)."""
    import pyarrow as pa

    task_type: Any = pa.string()
    if tasks_format == "struct":
        task_type = pa.struct([
            (t, pa.struct([("label", pa.string()), ("score", pa.float64()),
                           ("probs", pa.struct([(lab, pa.float64()) for lab in labels]))]))
            for t, labels in tasks.items()])
    return pa.schema([("ok", pa.bool_()), ("tasks", task_type), ("error", pa.string()), ("error_type", pa.string())])


class _BatchView:
    """Column access over the three batch formats Ray Data hands a UDF, without copying the image column
    into arrow (decoded images from `read_images` are [N,H,W,C] arrays, which arrow holds only as a Ray
    extension type)."""

    def __init__(self, batch: Any) -> None:
        import pyarrow as pa

        if isinstance(batch, pa.Table):
            self.kind, self.columns, self.num_rows = "arrow", list(batch.column_names), batch.num_rows
        elif hasattr(batch, "iloc") and hasattr(batch, "columns"):  # pandas.DataFrame (pandas stays lazy)
            self.kind, self.columns, self.num_rows = "pandas", [str(c) for c in batch.columns], len(batch)
        elif isinstance(batch, Mapping):
            lens = {len(v) for v in batch.values()}
            if len(lens) > 1:
                raise DataError(f"the batch's columns have different lengths: {sorted(lens)}")
            self.kind, self.columns, self.num_rows = "numpy", [str(c) for c in batch], lens.pop() if lens else 0
        else:
            raise InputTypeError(f"a batch must be a pandas.DataFrame, pyarrow.Table or dict of numpy arrays, "
                                 f"got {type(batch).__name__}")
        self.batch = batch

    def values(self, col: str) -> list[Any]:
        """The column as a list of Python values (bytes, str, None) or numpy arrays (decoded images)."""
        import pyarrow as pa

        if self.kind == "arrow":
            c = self.batch.column(col)
            if isinstance(c.type, pa.ExtensionType):  # Ray's tensor type: ndarray rows
                return list(c.to_numpy())
            return c.to_pylist()
        vals = self.batch[col].tolist() if self.kind == "pandas" else list(self.batch[col])
        return [None if _is_na(v) else v for v in vals]  # pandas / numpy spell a missing value NaN

    def arrow(self, col: str) -> Any:
        """A passthrough column as an arrow array (its values and type unchanged)."""
        import pyarrow as pa

        if self.kind == "arrow":
            return self.batch.column(col)
        if self.kind == "pandas":
            return pa.Array.from_pandas(self.batch[col])
        v = self.batch[col]
        return pa.array(v.tolist() if getattr(v, "dtype", None) is not None and v.dtype.kind == "O" else v)


def _is_na(v: Any) -> bool:
    """pandas and numpy turn missing values into NaN / None / NA; a scalar float NaN or pandas NA counts."""
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")
