"""CLIP byte-level BPE tokenizer for ImageBind's text trunk.

ImageBind tokenises text as OpenAI CLIP does: text is cleaned (ftfy, HTML unescaping, whitespace
collapsed, lower-cased), split by CLIP's regular expression, each piece mapped byte-by-byte to
printable unicode and merged with the 48,894 BPE merges of ``bpe_simple_vocab_16e6.txt.gz``; the ids
are wrapped in ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407) and zero-padded (or cut,
keeping the end token) to the 77-token context. The end token has the largest id, which is how the
text head finds it.

The vocabulary file is not shipped with nextgpt; it is read from ``$NEXTGPT_CLIP_BPE`` or from the
``open-clip-torch`` package's data (installed with ``--no-deps`` by ``make install``; the package is
never imported, since importing it needs torchvision).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import regex
import torch

from nextgpt.errors import ConfigError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_ENV = "NEXTGPT_CLIP_BPE"
CONTEXT_LENGTH = 77
_NUM_MERGES = 49152 - 256 - 2

_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


def clip_bpe_path() -> Path:
    """Locate the CLIP BPE merges file: ``$NEXTGPT_CLIP_BPE``, else open-clip-torch's copy."""
    env = os.environ.get(BPE_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"{BPE_ENV}={env!r} does not point to a file")
        return path
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / BPE_FILENAME
        if path.is_file():
            return path
    raise ConfigError(
        f"CLIP BPE vocabulary {BPE_FILENAME} not found: install it with "
        f"`pip install --no-deps open-clip-torch` or set {BPE_ENV} to the file's path"
    )


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (printable latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _clean(text: str) -> str:
    try:
        import ftfy
    except ImportError as exc:  # declared dependency; say so rather than tokenise differently
        raise ConfigError("the CLIP tokenizer needs the `ftfy` package (pip install ftfy)") from exc
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Tokenise text into ``[B, 77]`` int64 ids for the ImageBind text trunk.

    Args:
        bpe_path: the gzipped merges file; default :func:`clip_bpe_path`.
        context_length: output length (77 for ImageBind).
    """

    def __init__(
        self, bpe_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH
    ) -> None:
        path = Path(bpe_path) if bpe_path is not None else clip_bpe_path()
        lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        symbols = list(byte_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.context_length = context_length
        self.sot = self.encoder["<|startoftext|>"]
        self.eot = self.encoder["<|endoftext|>"]
        self._cache: dict[str, list[str]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of token ids: the byte symbols, their ``</w>`` forms, the merges and the two specials."""
        return len(self.encoder)

    def _bpe(self, piece: str) -> list[str]:
        if piece in ("<|startoftext|>", "<|endoftext|>"):
            return [piece]
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without start/end tokens or padding."""
        ids: list[int] = []
        for piece in _PATTERN.findall(_clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[tok] for tok in self._bpe(mapped))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Inverse of :meth:`encode` up to cleaning; reads up to the end token, skips the start token."""
        ids = list(ids)
        if self.eot in ids:
            ids = ids[: ids.index(self.eot)]
        toks = "".join(self.decoder[int(i)] for i in ids if int(i) != self.sot)
        return (
            bytearray(self.byte_decoder[c] for c in toks)
            .decode("utf-8", errors="replace")
            .replace("</w>", " ")
            .strip()
        )

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """``[B, context_length]`` ids (a single string gives ``B = 1``)."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text)][: self.context_length - 1] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
