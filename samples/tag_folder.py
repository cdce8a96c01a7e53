"""Tag a folder of posts: images plus a captions file, results to a JSON-lines file.

    python samples/tag_folder.py BUNDLE FOLDER [--captions captions.csv] [--output tags.jsonl]

captions.csv has the columns `file,caption` (or captions.jsonl with {"file", "caption"} lines); images
without a caption are skipped. `stream` decodes the next images while the model runs the current batch.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from sdk import Analyzer


def read_captions(path: Path) -> list[tuple[str, str]]:
    if path.suffix == ".jsonl":
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    return [(r["file"], r["caption"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--captions", default="captions.csv", help="file inside FOLDER")
    ap.add_argument("--output", type=Path, default=Path("tags.jsonl"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    posts = read_captions(args.folder / args.captions)
    counts: dict[str, int] = {}
    with Analyzer(args.bundle, device=args.device) as analyzer, open(args.output, "w", encoding="utf-8") as out:
        results = analyzer.stream(((args.folder / f, c) for f, c in posts), batch_size=args.batch_size)
        for (name, _), result in zip(posts, results, strict=True):
            out.write(json.dumps({"file": name, **result.to_dict()}) + "\n")
            key = result["sentiment"].label if result.ok and "sentiment" in result.tasks else "error"
            counts[key] = counts.get(key, 0) + 1
    print(f"tagged {len(posts)} posts -> {args.output}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
