"""FP32: the optimised graph as it is."""

from __future__ import annotations

import shutil
from typing import Any

from export.formats import ConvertContext

NAME = "fp32"
DESCRIPTION = "float32 throughout (reference precision)"


def convert(ctx: ConvertContext) -> dict[str, Any]:
    shutil.copyfile(ctx.src, ctx.dst)
    return {}
