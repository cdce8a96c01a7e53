"""A small HTTP tagging service (stdlib only): many request threads share model batches via submit().

    python samples/http_service.py BUNDLE [--port 8080] [--host 127.0.0.1]

POST /analyze   {"image_b64": "<base64 image bytes>", "text": "..."}  -> the Result as JSON
GET  /health    -> {"ok": true};  GET /info -> backend, device, tasks
Each handler thread calls `analyzer.submit(...)` and waits on its Future: concurrent requests are joined
into one model batch (up to max_batch_size, waiting at most max_delay_ms for company).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sdk import Analyzer

MAX_BODY = 20 * 1024 * 1024  # refuse bodies above 20 MB before reading them


def make_handler(analyzer: Analyzer, timeout_s: float = 60.0) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._send(200, {"ok": True})
            elif self.path == "/info":
                self._send(200, analyzer.info.to_dict())
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/analyze":
                self._send(404, {"error": f"no route {self.path}"})
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                n = -1
            if n <= 0 or n > MAX_BODY:
                self.close_connection = True
                self._send(413 if n > MAX_BODY else 411, {"error": f"body must be 1..{MAX_BODY} bytes"})
                return
            try:
                req = json.loads(self.rfile.read(n))
                image = base64.b64decode(req["image_b64"], validate=True)
                text = req.get("text")
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                self._send(400, {"error": f"expected JSON {{'image_b64', 'text'}}: {e}"})
                return
            result = analyzer.submit(image, text).result(timeout=timeout_s)
            self._send(200 if result.ok else 422, result.to_dict())

        def log_message(self, *args) -> None:  # keep the console quiet under load
            pass

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description="SyDES tagging service")
    ap.add_argument("bundle")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="0 = any free port")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-batch-size", type=int, default=16)
    args = ap.parse_args()
    with Analyzer(args.bundle, device=args.device, max_batch_size=args.max_batch_size) as analyzer:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(analyzer))
        server.daemon_threads = True
        host, port = server.server_address[:2]
        print(f"listening on http://{host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
