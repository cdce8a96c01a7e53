"""Every error the SDK raises on purpose: one hierarchy, each with a message that names the problem."""

from __future__ import annotations


class SydesError(Exception):
    """Base class of all SyDES Edge errors."""


class MissingExtraError(SydesError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" ({purpose})" if purpose else ""
        super().__init__(
            f"'{package}' is not installed{what}: install it with `pip install \"sydes-edge[{extra}]\"`"
        )
        self.package, self.extra = package, extra


# --- inputs -------------------------------------------------------------------------------------------
class InputError(SydesError, ValueError):
    """A single input item is unusable (the rest of its batch is still answered)."""


class ImageDecodeError(InputError):
    """The image cannot be read: empty, truncated, not an image, unsupported format."""


class ImageTooLargeError(InputError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class InputTypeError(InputError, TypeError):
    """The image or text has a type the SDK does not accept."""


class TextError(InputError):
    """The text is unusable (not a string, empty where text is required)."""


# --- artifacts ----------------------------------------------------------------------------------------
class BundleError(SydesError):
    """A bundle is missing, malformed or of an unsupported schema version."""


class BundleIntegrityError(BundleError):
    """A bundle's files do not match the sha256 hashes of its manifest."""


class CheckpointError(SydesError):
    """A checkpoint folder is missing, malformed, or does not match its config."""


class ConfigError(SydesError, ValueError):
    """An option or config value is invalid; the message lists the valid ones where there is a list."""


# --- backends -----------------------------------------------------------------------------------------
class BackendUnavailableError(SydesError, RuntimeError):
    """A backend (or device) asked for explicitly cannot run here."""


class DataError(SydesError, ValueError):
    """A data set file, row or label is invalid; the message names the file, the row and the problem."""


# --- load ---------------------------------------------------------------------------------------------
class OverloadedError(SydesError, RuntimeError):
    """The runtime's bounded queue is full: the post was shed, not queued (retry later or raise the limit)."""

    def __init__(self, message: str, *, queued: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.queued, self.limit = queued, limit
