"""Turning an HTTP request into (image bytes, text), with size limits; never a server-side path.

JSON:      {"image": "<base64 of the encoded image file>", "text": "..."}
multipart: a file part `image` (the encoded image file) and a field `text`.
The image always reaches the Analyzer as bytes: a string from a client is never taken as a file path.
A text-only bundle reads no image: `images=False` needs only the text (an image sent along is not read).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class RequestError(Exception):
    """A request the service refuses: `status` is its HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: Any, limit: int) -> bytes:
    """The whole body, refused with 413 once it passes `limit` bytes (by its Content-Length at once)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if n > limit:
            raise RequestError(413, f"request body is {n:,} bytes, over the limit of {limit:,} bytes (max_body_mb)")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies carry no length: count as they come
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit:,} bytes (max_body_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _text(value: Any, where: str) -> str:
    if value is None:
        raise RequestError(422, f"{where} has no 'text'")
    if not isinstance(value, str):
        raise RequestError(422, f"{where} 'text' must be a string, got {type(value).__name__}")
    return value


def parse_json(body: bytes, images: bool = True) -> tuple[bytes | None, str]:
    """{"image": base64, "text": str} -> (image bytes, text); without `images`: (None, text)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RequestError(422, f"JSON body must be an object {{'image', 'text'}}, got {type(doc).__name__}")
    if not images:
        return None, _text(doc.get("text"), "JSON body")
    image = doc.get("image")
    if not isinstance(image, str) or not image:
        got = "missing" if image is None else f"a {type(image).__name__}"
        raise RequestError(422, f"JSON field 'image' must be the base64 of an image file, got {got}")
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(422, f"JSON field 'image' is not valid base64: {e}") from None
    return data, _text(doc.get("text"), "JSON body")


async def parse_multipart(request: Any, body: bytes, max_part: int, images: bool = True) -> tuple[bytes | None, str]:
    """A multipart/form-data body (already read under the size limit) -> (image bytes, text); without
    `images`: (None, text)."""
    from starlette.requests import Request

    sent = False

    async def replay() -> dict[str, Any]:  # the body was read already: hand it to the form parser once
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=2, max_fields=8, max_part_size=max_part)
    except Exception as e:  # noqa: BLE001 - python-multipart / starlette raise several kinds
        raise RequestError(422, f"multipart body cannot be parsed: {e}") from None
    try:
        if not images:
            return None, _text(form.get("text"), "multipart body")
        image = form.get("image")
        if image is None:
            raise RequestError(422, f"multipart body has no 'image' file part (parts: {sorted(form.keys())})")
        if isinstance(image, str):  # a plain field: refuse, it must never be read as a path
            raise RequestError(422, "multipart part 'image' must be a file upload, not a text field")
        data = await image.read()
        return data, _text(form.get("text"), "multipart body")
    finally:
        await form.close()
