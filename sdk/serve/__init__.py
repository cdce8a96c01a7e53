"""`sydes serve`: a small HTTP service (FastAPI + uvicorn, the `[serve]` extra) that sheds load.

    from sdk.serve import ServeConfig, create_app
    app = create_app(ServeConfig(bundle="model.sydes"))

Importing this package is cheap; fastapi / uvicorn are imported by `sdk.serve.app` only.
"""

from __future__ import annotations

from sdk.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve_in_thread"]


def __getattr__(name: str):
    if name in ("create_app", "serve_in_thread"):
        from sdk.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'sdk.serve' has no attribute {name!r}")
