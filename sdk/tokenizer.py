"""Tokenisation: the ONE implementation shared by training and runtime (wraps `tokenizers.Tokenizer`).

Two kinds:
* "clip": CLIP byte-level BPE (`</w>` end-of-word suffix), NFC + whitespace collapse + lower-casing,
  CLIP's pre-tokenizer regex; `<|startoftext|>` (49406) ... `<|endoftext|>` (49407); pad = EOS.
  Truncation keeps BOS + 75 tokens + EOS within 77, as HF's CLIPTokenizer(Fast) with truncation=True.
* "wordpiece": BERT ([CLS] ... [SEP], pad [PAD] = 0), e.g. all-MiniLM-L6-v2's tokenizer.json.

`encode_batch` always pads to `max_length` (the reference's `padding="max_length"`); `trim` drops trailing
columns that are padding in every row, which the runtime may use (see `Tokenizer.trim` for when that is
exact).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import ConfigError, InputTypeError, TextError

KINDS = ("clip", "wordpiece")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenizer (HF CLIPTokenizer): special tokens, English contractions, letter runs, single
# digits, runs of other non-space symbols; everything else (whitespace) is dropped.
CLIP_SPLIT_REGEX = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# CLIP's SimpleTokenizer uses merges[1 : 49152 - 256 - 2 + 1] of bpe_simple_vocab_16e6.txt.gz.
CLIP_NUM_MERGES = 49152 - 256 - 2


def _tokenizers():
    import tokenizers  # lazy: keeps `import sdk` light

    return tokenizers


class Tokenizer:
    """A configured `tokenizers.Tokenizer`: truncation to and padding to `max_length`, int64 outputs."""

    def __init__(self, tok: Any, *, max_length: int, kind: str, require_text: bool = False) -> None:
        if kind not in KINDS:
            raise ConfigError(f"tokenizer kind must be one of {list(KINDS)}, got {kind!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"tokenizer max_length must be an integer >= 2, got {max_length!r}")
        self.kind, self.max_length, self.require_text = kind, max_length, require_text
        if kind == "clip":
            bos, eos, pad = CLIP_BOS, CLIP_EOS, CLIP_EOS
        else:
            bos, eos, pad = "[CLS]", "[SEP]", "[PAD]"
        ids = {t: tok.token_to_id(t) for t in (bos, eos, pad)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ConfigError(f"tokenizer (kind {kind!r}) has no token(s) {missing} in its vocabulary")
        self.bos_id, self.eos_id, self.pad_id = ids[bos], ids[eos], ids[pad]
        self.pad_token = pad
        tok.no_truncation()
        tok.no_padding()
        # Truncation reserves room for the post-processor's BOS/EOS: BOS + (max_length - 2) + EOS.
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=pad, pad_type_id=0)
        self._tok = tok
        probe = tok.encode("a").ids
        if not probe or probe[0] != self.bos_id or self.eos_id not in probe:
            raise ConfigError(
                f"tokenizer (kind {kind!r}) does not add {bos} ... {eos} around the text "
                f"(post-processor missing?): 'a' -> {probe[:8]}"
            )

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, max_length: int, kind: str, require_text: bool = False
    ) -> Tokenizer:
        """Load a tokenizer.json. kind: "clip" | "wordpiece"."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"tokenizer file '{path}' does not exist")
        try:
            tok = _tokenizers().Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on malformed JSON
            raise ConfigError(f"tokenizer file '{path}' cannot be read: {e}") from e
        return cls(tok, max_length=max_length, kind=kind, require_text=require_text)

    @classmethod
    def from_str(cls, json_str: str, *, max_length: int, kind: str, require_text: bool = False) -> Tokenizer:
        """Build from the text of a tokenizer.json."""
        try:
            tok = _tokenizers().Tokenizer.from_str(json_str)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"tokenizer JSON cannot be parsed: {e}") from e
        return cls(tok, max_length=max_length, kind=kind, require_text=require_text)

    @classmethod
    def clip(cls, *, max_length: int = 77, require_text: bool = False) -> Tokenizer:
        """CLIP's tokenizer built offline from open_clip's merges (no file, no network)."""
        return cls.from_str(
            clip_tokenizer_json_from_open_clip(),
            max_length=max_length,
            kind="clip",
            require_text=require_text,
        )

    # --- use ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> Any:
        """The configured `tokenizers.Tokenizer` (truncation + padding to max_length enabled)."""
        return self._tok

    def to_str(self) -> str:
        """tokenizer.json text (with this object's truncation/padding settings)."""
        return self._tok.to_str()

    def save(self, path: str | os.PathLike[str]) -> None:
        from sdk.atomic import atomic_write_text

        atomic_write_text(path, self.to_str())

    def check_text(self, text: Any, index: int | None = None, *, require_text: bool | None = None) -> str:
        """Validate one text; -> the text. InputTypeError for non-str, TextError for empty when required."""
        where = "" if index is None else f" (item {index})"
        if not isinstance(text, str):
            raise InputTypeError(f"text{where} must be a str, got {type(text).__name__}")
        req = self.require_text if require_text is None else require_text
        if req and not text.strip():
            raise TextError(f"text{where} is empty or whitespace only, and text is required")
        return text

    def encode_batch(
        self, texts: Sequence[str], *, require_text: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids int64 [B, max_length], attention_mask int64 [B, max_length]); 1 = real token."""
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise InputTypeError(f"encode_batch takes a list of str, got {type(texts).__name__}")
        items = [self.check_text(t, i, require_text=require_text) for i, t in enumerate(texts)]
        if not items:
            z = np.zeros((0, self.max_length), np.int64)
            return z, z.copy()
        encs = self._tok.encode_batch(items)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        return ids, mask

    def encode(self, text: str, *, require_text: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One text -> (ids int64 [max_length], mask int64 [max_length])."""
        ids, mask = self.encode_batch([text], require_text=require_text)
        return ids[0], mask[0]

    @staticmethod
    def trim(ids: np.ndarray, mask: np.ndarray, *, multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Drop trailing columns that are padding (mask 0) in every row. -> (ids [B, L'], mask [B, L']).

        L' = the longest row's real length, rounded up to `multiple_of` (to bound the number of shapes an
        engine sees), never above L. When it is exact:
        * CLIP text encoder + the reference decoder: both are causal (a position attends only to earlier
          ones), the EOS is found as mask.sum() - 1, pooling is masked and the decoder has no position
          embedding, so trailing padding never changes any real position: results are identical.
        * BERT (bidirectional): padded keys are masked with a large negative before softmax, so they add
          exactly 0; results agree up to float summation order (~1e-7), not bit for bit.
        Whether to trim is the runtime's decision (the bundle's `trim_padding`).
        """
        ids, mask = np.asarray(ids), np.asarray(mask)
        if ids.shape != mask.shape or ids.ndim != 2:
            raise InputTypeError(
                f"trim takes ids and mask of the same shape [B, L], got {ids.shape} and {mask.shape}"
            )
        L = ids.shape[1]
        if ids.shape[0] == 0 or L == 0:
            return ids, mask
        nz = mask.any(axis=0)
        keep = int(np.flatnonzero(nz)[-1]) + 1 if nz.any() else 1
        m = max(1, int(multiple_of))
        keep = min(L, -(-keep // m) * m)
        return ids[:, :keep], mask[:, :keep]

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, max_length={self.max_length}, vocab_size={self.vocab_size})"


# --- CLIP tokenizer.json builders ---------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode char map (printable latin-1 bytes map to themselves)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_clip_tokenizer_json_from_vocab(vocab: dict[str, int], merges: list[tuple[str, str]]) -> str:
    """A tokenizer.json for CLIP's BPE, built as HF's CLIPTokenizer(Fast) does. -> JSON text."""
    tk = _tokenizers()
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    for t in (CLIP_BOS, CLIP_EOS):
        if t not in vocab:
            raise ConfigError(f"CLIP vocabulary has no {t!r}")
    tok = tk.Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=CLIP_EOS,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_REGEX), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            tk.AddedToken(CLIP_BOS, special=True, normalized=False),
            tk.AddedToken(CLIP_EOS, special=True, normalized=False),
        ]
    )
    tok.post_processor = processors.RobertaProcessing(
        (CLIP_EOS, vocab[CLIP_EOS]), (CLIP_BOS, vocab[CLIP_BOS]), False, False
    )
    return tok.to_str()


def build_clip_tokenizer_json(
    vocab_json_path: str | os.PathLike[str], merges_txt_path: str | os.PathLike[str]
) -> str:
    """tokenizer.json text from HF-style CLIP `vocab.json` + `merges.txt` (a '#version' header is skipped)."""
    try:
        vocab = json.loads(Path(vocab_json_path).read_text(encoding="utf-8"))
        lines = Path(merges_txt_path).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read CLIP vocab/merges ({vocab_json_path}, {merges_txt_path}): {e}") from e
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for n, line in enumerate(lines, 2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{merges_txt_path}:{n}: a merge must be two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return build_clip_tokenizer_json_from_vocab(vocab, merges)


def clip_vocab_and_merges_from_bpe_gz(
    path: str | os.PathLike[str],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49,408) and merges (48,894) from bpe_simple_vocab_16e6.txt.gz, as SimpleTokenizer does."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : CLIP_NUM_MERGES + 1]]
    base = list(bytes_to_unicode().values())
    words = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    vocab = {w: i for i, w in enumerate(words)}
    if len(vocab) != len(words):
        raise ConfigError(f"{path}: duplicate entries in the CLIP vocabulary")
    return vocab, merges  # type: ignore[return-value]


def open_clip_bpe_path() -> Path:
    """Path of open_clip's bpe_simple_vocab_16e6.txt.gz, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        p = Path(d) / "bpe_simple_vocab_16e6.txt.gz"
        if p.is_file():
            return p
    from sdk.errors import MissingExtraError

    raise MissingExtraError("open_clip_torch", "train", "CLIP's BPE merges (bpe_simple_vocab_16e6.txt.gz)")


@lru_cache(maxsize=1)
def clip_tokenizer_json_from_open_clip() -> str:
    """tokenizer.json text for CLIP, from open_clip's bpe_simple_vocab_16e6.txt.gz (offline)."""
    vocab, merges = clip_vocab_and_merges_from_bpe_gz(open_clip_bpe_path())
    return build_clip_tokenizer_json_from_vocab(vocab, merges)


# contracts.md name
clip_tokenizer_from_open_clip = clip_tokenizer_json_from_open_clip
