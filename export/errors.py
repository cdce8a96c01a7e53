"""Errors raised by export (all SydesError subclasses, so the CLI prints them cleanly)."""

from __future__ import annotations

from typing import Any

from sdk.errors import SydesError


class ExportError(SydesError):
    """The export could not produce a bundle; the message says which step failed and why."""


class ExportValidationError(ExportError):
    """The exported graph does not reproduce the torch model within tolerance.

    `figures` holds the per-task maximum absolute differences (and the tolerance)."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


class SharedEncoderMismatchError(ExportError):
    """Checkpoints given together do not share identical image-encoder weights."""

    def __init__(self, message: str, differing: list[str] | None = None) -> None:
        super().__init__(message)
        self.differing = differing or []
