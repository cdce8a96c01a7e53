"""Ask a Triton server that serves a `sydes triton` repository: image file + text -> probabilities.

    sydes triton model.sydes -o repo && tritonserver --model-repository repo      # on the server
    python samples/triton_client.py IMAGE "a caption" [--url localhost:8001] [--model sydes]

Sends the encoded image file's bytes and the text (TYPE_STRING, [1, 1]); the ensemble decodes and
tokenises with this project's own code and answers every task's probabilities (pip install
"sydes-edge[triton]"). Not run against a server here: no Triton server runs in this project's CI.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def make_inputs(images: list[bytes], texts: list[str], grpcclient) -> list:
    """B posts -> the ensemble's IMAGE and TEXT inputs, TYPE_STRING ("BYTES") [B, 1]."""
    out = []
    for name, values in (("IMAGE", images), ("TEXT", [t.encode("utf-8") for t in texts])):
        arr = np.array([[v] for v in values], dtype=object)
        inp = grpcclient.InferInput(name, list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("text")
    ap.add_argument("--url", default="localhost:8001", help="Triton's gRPC address")
    ap.add_argument("--model", default="sydes", help="the ensemble's name (sydes triton --name)")
    args = ap.parse_args(argv)
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(args.url)
    meta = client.get_model_metadata(args.model)
    outputs = [o.name for o in meta.outputs]
    with open(args.image, "rb") as f:
        inputs = make_inputs([f.read()], [args.text], grpcclient)
    result = client.infer(args.model, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    for name in outputs:
        probs = result.as_numpy(name)[0]
        print(f"{name.removeprefix('probs_')}: class {int(probs.argmax())} p={float(probs.max()):.3f}  "
              f"({', '.join(f'{p:.3f}' for p in probs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
