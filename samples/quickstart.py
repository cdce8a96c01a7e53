"""Quickstart: python samples/quickstart.py BUNDLE IMAGE "the post's text" """
import sys

from sdk import Analyzer

bundle, image, text = sys.argv[1:4]
with Analyzer(bundle) as analyzer:  # picks TensorRT / CUDA / CPU, whichever really runs here
    result = analyzer.analyze(image, text)
for task, r in (result.tasks or {}).items():
    print(f"{task:>10}: {r.label} ({r.score:.2f})")
print(result.reason or f"ran on {analyzer.info.backend} ({analyzer.info.device})")
