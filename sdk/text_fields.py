"""The text a model reads: which columns of a post make it, and how they are joined (standard library only).

The reference reads the Caption alone; MSED also has a Title, and a recipe may read Title + Caption joined by
" ". A `TextFields` is recorded in a checkpoint's config.json and a bundle's manifest.json (the `tokenizer`
section's `text_fields` / `text_separator`), and `sdk.posts.plan_posts(..., text_fields=)` builds each row's
text with it, so training, calibration, `sydes eval` and `sydes analyze --input` read a file the same way.
`Analyzer.analyze(image, text)` takes the text as the caller has it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sdk.errors import ConfigError, DataError

REFERENCE_TEXT = "Caption"


@dataclass(frozen=True)
class TextFields:
    """Which columns make a post's text: the values of `fields`, in order, joined by `separator`.

    `to_dict()` gives the keys `text_fields` / `text_separator` of a tokenizer section (a checkpoint's
    config.json, a bundle's manifest.json); `from_dict` reads them back, the defaults (Caption, " ") where
    absent. Raises ConfigError for no field, a field that is not a non-empty string, a field named twice, or a
    separator that is not a string."""

    fields: tuple[str, ...] = (REFERENCE_TEXT,)
    separator: str = " "

    def __post_init__(self) -> None:
        fields = self.fields
        if isinstance(fields, str) or not isinstance(fields, (list, tuple)):
            raise ConfigError(f"text fields must be a list of column names, got {fields!r}")
        if not fields:
            raise ConfigError("text fields must name at least one column")
        bad = [f for f in fields if not isinstance(f, str) or not f.strip()]
        if bad:
            raise ConfigError(f"text fields must be non-empty column names, got {', '.join(map(repr, bad))}")
        twice = sorted({f for f in fields if fields.count(f) > 1})
        if twice:
            raise ConfigError(f"text field {', '.join(map(repr, twice))} is named twice")
        if not isinstance(self.separator, str):
            raise ConfigError(f"the text separator must be a string, got {type(self.separator).__name__}")
        object.__setattr__(self, "fields", tuple(fields))

    @classmethod
    def parse(cls, fields: str, separator: str = " ") -> TextFields:
        """From a comma-separated list (the CLI's `--text-fields Title,Caption`)."""
        return cls(tuple(f.strip() for f in fields.split(",") if f.strip()), separator)

    @classmethod
    def of(cls, value: TextFields | str | Sequence[str] | None) -> TextFields | None:
        """None, a TextFields, "Title,Caption" or a list of column names -> a TextFields (or None)."""
        if value is None or isinstance(value, TextFields):
            return value
        return cls.parse(value) if isinstance(value, str) else cls(tuple(value))

    def to_dict(self) -> dict[str, Any]:
        return {"text_fields": list(self.fields), "text_separator": self.separator}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextFields:
        if not isinstance(d, Mapping):
            raise ConfigError(f"text fields come from an object, got {type(d).__name__}")
        return cls(d.get("text_fields", (REFERENCE_TEXT,)), d.get("text_separator", " "))

    def describe(self) -> str:
        """e.g. "the Title and Caption columns joined by ' '" (model cards, logs)."""
        names = " and ".join(", ".join(self.fields).rsplit(", ", 1))
        if len(self.fields) == 1:
            return f"the {names} column"
        return f"the {names} columns joined by {self.separator!r} (empty ones left out)"

    def build(self, row: Mapping[str, Any], where: str | None = None) -> str:
        """The text of `row`: the non-empty values of `fields`, in order, joined by `separator`, each as it is
        (not stripped). A value that is None, "" or only whitespace is empty: it is left out with its
        separator, and a row whose fields are all empty has the text "". Raises DataError ("{where}: ...")
        for a field the row lacks (naming it and the row's columns) or a value that is not a string."""
        pre = f"{where}: " if where else ""
        parts = []
        for name in self.fields:
            if name not in row:
                raise DataError(f"{pre}missing text column {name!r}; the columns are: {', '.join(map(str, row)) or 'none'}")
            value = row[name]
            if value is not None and not isinstance(value, str):
                raise DataError(f"{pre}text column {name!r} must hold a string, got {type(value).__name__}")
            if value and value.strip():
                parts.append(value)
        return self.separator.join(parts)


DEFAULT_TEXT_FIELDS = TextFields()
