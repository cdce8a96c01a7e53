"""Seconds per export stage, and the tqdm line that names the running stage (ExportOptions.progress)."""

from __future__ import annotations

import time


class Stopwatch:
    """Seconds per export stage; with `progress`, a tqdm line naming the running stage."""

    def __init__(self, progress: bool = False) -> None:
        self.seconds: dict[str, float] = {}
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="export", unit="stage", dynamic_ncols=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, name: str) -> Lap:
        return Lap(self, name)


class Lap:
    def __init__(self, sw: Stopwatch, name: str) -> None:
        self.sw, self.name = sw, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        if self.sw.bar is not None:
            self.sw.bar.set_description_str(f"export: {self.name}")

    def __exit__(self, *exc: object) -> None:
        self.sw.seconds[self.name] = round(self.sw.seconds.get(self.name, 0.0) + time.perf_counter() - self.t0, 2)
        if self.sw.bar is not None:
            self.sw.bar.update(1)
