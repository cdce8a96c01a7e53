"""`sydes analyze --engine ray`: the same job on a Ray cluster (a local one when no --address is given).

The driver reads the input as the single-process engine does (`analyze.iter_items`: the same columns,
image paths and per-row DataErrors), puts the prepared rows into Ray's object store as arrow tables of a
few thousand rows (streamed: the driver's own memory is flat in rows; Ray spills the store to disk when
it fills), and runs

    from_arrow_refs -> map_batches(SydesPredictor, compute=ActorPoolStrategy(size=--actors)) -> JsonlResultSink

which writes JSONL part files under OUTPUT with the single-process rows, line for line (row order across
part files is Ray's). Actors are restarted and their batches retried by Ray when they die
(Ray Data's actor-pool defaults: max_restarts = max_task_retries = -1). The run checks the part files hold exactly one line per input
row, then writes OUTPUT/_SUCCESS (JSON, atomic). A Ray job does not resume: re-run it into an empty
folder, or use --engine process shards, which do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.atomic import atomic_write_text
from sdk.errors import ConfigError, DataError, MissingExtraError

if TYPE_CHECKING:
    from sdk.commands.analyze import InputPlan

log = logging.getLogger("sdk.commands.analyze")
ENGINES = ("process", "ray")
SUCCESS = "_SUCCESS"


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", default="process", choices=ENGINES,
                        help="process: this process (default); ray: a Ray cluster, --output is a folder")
    parser.add_argument("--address", help="Ray cluster address (e.g. 'auto' or ray://HOST:10001); "
                        "default: start a local Ray with this machine's CPUs")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors, each with its own model (default 2)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="Ray CPUs reserved per actor")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="Ray GPUs per actor (use with --device cuda)")


@dataclass(frozen=True)
class RayJob:
    """One `--engine ray` run: what each actor builds and how many of them."""

    bundle: str
    output: Path
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 16
    workers: int = 2
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ConfigError(f"--actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ConfigError(f"--cpus-per-actor must be > 0 and --gpus-per-actor >= 0, got "
                              f"{self.cpus_per_actor} and {self.gpus_per_actor}")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - ray without its data library cannot run the job
    except ModuleNotFoundError as e:
        raise MissingExtraError("ray", "ray", "needed by `sydes analyze --engine ray`") from e
    return ray


def start_ray(address: str | None) -> bool:
    """Connect to `address`, or start a local Ray; -> whether this call started it (and so stops it)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
        return True
    # Local workers are this machine's processes: let them import the same `sdk` as this driver (a
    # source checkout is not on their path otherwise). A cluster has sydes-edge installed on its nodes.
    src = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return True


def run_ray(args: argparse.Namespace, plan: InputPlan) -> int:
    job = RayJob(bundle=str(Path(args.bundle).resolve()), output=args.output, actors=args.actors,
                 cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                 batch_size=args.batch_size, workers=args.workers, backend=args.backend, device=args.device,
                 threads=args.threads)
    check_output(job.output)
    started = start_ray(args.address)
    try:
        info = run_job(plan, job)
    finally:
        if started:
            _import_ray().shutdown()
    print(f"{info['rows']} posts analysed ({info['failed']} failed) by {job.actors} Ray actors into "
          f"{len(info['parts'])} part files under {job.output}", file=sys.stderr)
    return 0


def run_job(plan: InputPlan, job: RayJob, predictor: type | None = None) -> dict[str, Any]:
    """Run the job on the connected Ray; -> the _SUCCESS record. `predictor`: SydesPredictor or a subclass."""
    ray = _import_ray()
    from sdk.integrations.ray_data import SydesPredictor
    from sdk.integrations.ray_sink import KEY_COLUMN, JsonlResultSink

    out = job.output
    check_output(out)
    # no read tasks: on a small cluster the actors hold every CPU, and a read task would wait for one forever
    tables, total = [], 0
    for table in stage_rows(plan, target_blocks=4 * job.actors, min_rows=job.batch_size):
        tables.append(ray.put(table))
        total += table.num_rows
    ds = ray.data.from_arrow_refs(tables)
    ds = ds.map_batches(
        predictor or SydesPredictor, batch_size=job.batch_size, batch_format="pyarrow",
        fn_constructor_kwargs={"bundle": job.bundle, "passthrough": [KEY_COLUMN], "backend": job.backend,
                               "device": job.device, "threads": job.threads, "batch_size": job.batch_size,
                               "workers": job.workers},
        compute=ray.data.ActorPoolStrategy(size=job.actors), num_cpus=job.cpus_per_actor,
        num_gpus=job.gpus_per_actor or None, udf_modifying_row_count=False)
    ds.write_datasink(JsonlResultSink(str(out)))
    del tables
    parts = sorted(out.glob("*.jsonl"))
    rows = failed = 0
    for p in parts:  # streamed: counts only
        with open(p, encoding="utf-8") as f:
            for line in f:
                rows += 1
                failed += '"ok": false' in line
    if rows != total:
        raise DataError(f"Ray wrote {rows} rows under {out} for {total} input rows; the output is incomplete")
    info = {"rows": rows, "failed": failed, "parts": [p.name for p in parts], "input": str(plan.path),
            "bundle": job.bundle, "actors": job.actors}
    atomic_write_text(out / SUCCESS, json.dumps(info, indent=2) + "\n")
    return info


def check_output(out: Path) -> None:
    """--output must be a new or empty folder (checked before Ray starts: a wrong one costs nothing)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; with --engine ray it is a folder of part files")
    if (out / SUCCESS).is_file():
        raise ConfigError(f"{out} already holds a finished Ray run ({out / SUCCESS}); use a new --output")
    if out.exists() and any(out.glob("*.jsonl")):
        raise ConfigError(f"{out} holds part files of an unfinished run; Ray runs do not resume: remove "
                          "them or use a new --output (or --engine process shards, which resume)")


def stage_rows(plan: InputPlan, *, target_blocks: int, min_rows: int) -> Iterator[Any]:
    """The plan's items as pyarrow tables (_sydes_key, image, text, error, error_type), about
    `target_blocks` of them (so every actor gets work), at most 65,536 rows each; streamed."""
    import pyarrow as pa

    from sdk.commands.analyze import iter_items
    from sdk.commands.analyze_output import Shard
    from sdk.integrations.ray_sink import KEY_COLUMN

    total = sum(1 for _ in iter_items(plan, Shard()))
    per_block = min(65536, max(min_rows, -(-total // max(1, target_blocks))))
    schema = pa.schema([(KEY_COLUMN, pa.string()), ("image", pa.string()), ("text", pa.string()),
                        ("error", pa.string()), ("error_type", pa.string())])
    cols: dict[str, list[Any]] = {n: [] for n in schema.names}
    for key, item in iter_items(plan, Shard()):
        cols[KEY_COLUMN].append(json.dumps(key, ensure_ascii=False))
        error = etype = image = text = None
        if isinstance(item, Exception):
            error, etype = str(item), type(item).__name__
        else:  # sdk.posts gives str or None texts (a non-string one is the row's DataError)
            image, text = (None if item[0] is None else str(item[0])), item[1]  # None: a text-only bundle
        for name, value in (("image", image), ("text", text), ("error", error), ("error_type", etype)):
            cols[name].append(value)
        if len(cols[KEY_COLUMN]) >= per_block:
            yield pa.table(cols, schema=schema)
            cols = {n: [] for n in schema.names}
    if cols[KEY_COLUMN]:
        yield pa.table(cols, schema=schema)
