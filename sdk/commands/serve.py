"""`sydes serve BUNDLE`: the HTTP service (FastAPI + uvicorn; `pip install "sydes-edge[serve]"`).

Bounded: at most --max-queue posts in flight (503 + Retry-After beyond, at once), --deadline-ms from
arrival to answer (504 past it), --max-body-mb per request (413), --max-connections (uvicorn's 503).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="the NAME.sydes/ folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="0 = any free port")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="backend threads (CPU)")
    parser.add_argument("--max-batch", type=int, default=16, help="posts per model batch at most")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="how long a batch waits for company")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="posts in flight at most; beyond it 503 (default: 4 batches)")
    parser.add_argument("--deadline-ms", type=float, default=2000.0, help="arrival to answer; past it 504")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="larger request bodies get 413")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="concurrent connections at most (default: 2 x max-queue + 16)")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on a 503")
    parser.add_argument("--no-shed-on-expected-wait", action="store_true",
                        help="shed only when the queue is full, not when its expected wait passes the deadline")
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")


def run(args: argparse.Namespace) -> int:
    from sdk.serve.config import ServeConfig

    cfg = ServeConfig(bundle=args.bundle, host=args.host, port=args.port, device=args.device,
                      backend=args.backend, threads=args.threads, max_batch=args.max_batch,
                      max_delay_ms=args.max_delay_ms, max_queue=args.max_queue, deadline_ms=args.deadline_ms,
                      max_body_mb=args.max_body_mb, max_connections=args.max_connections,
                      retry_after_s=args.retry_after, shed_on_expected_wait=not args.no_shed_on_expected_wait)
    from sdk.serve.app import create_app  # fastapi: the [serve] extra (MissingExtraError names it)

    try:
        import uvicorn
    except ModuleNotFoundError as e:
        from sdk.errors import MissingExtraError

        raise MissingExtraError("uvicorn", "serve", "needed by `sydes serve`") from e
    print(f"sydes serve: http://{cfg.host}:{cfg.port} (max_queue {cfg.queue_limit()}, deadline "
          f"{cfg.deadline_ms:g} ms, max body {cfg.max_body_mb:g} MB)", flush=True)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="info",
                limit_concurrency=cfg.connection_limit(), timeout_graceful_shutdown=30,
                access_log=not args.no_access_log)
    return 0
