"""Gemma tokenizer for the T5Gemma text encoder, without ``transformers``.

Reads a Hugging Face model folder's ``tokenizer.json`` with the ``tokenizers`` library (or a
SentencePiece ``tokenizer.model`` as fallback) and adds the special tokens the way transformers'
``GemmaTokenizerFast`` (4.56, the version pinned by the official code) does: the post-processor is
rebuilt from ``tokenizer_config.json``'s ``add_bos_token`` (default ``True``) and ``add_eos_token``
(default ``False``), i.e. ``<bos> text`` for the released Gemma/T5Gemma tokenizers.

Also builds a small but real byte-fallback BPE tokenizer with Gemma's special-token layout
(``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4) for tests and the tiny pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

GEMMA_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")

_TOKEN_FILES = ("tokenizer.json", "tokenizer.model")


def _token_text(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or ``{"content": ...}``."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("content")
    return str(value)


def read_tokenizer_config(folder: Path) -> dict:
    """special_tokens_map.json then tokenizer_config.json of a folder (the latter wins), as one dict."""
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            config.update(json.loads((folder / name).read_text(encoding="utf-8")))
    return config


def _special_tokens(config: dict, source: str) -> dict:
    return dict(bos_token=_token_text(config.get("bos_token")) or "<bos>",
                eos_token=_token_text(config.get("eos_token")) or "<eos>",
                pad_token=_token_text(config.get("pad_token")) or "<pad>",
                add_bos_token=config.get("add_bos_token", True),
                add_eos_token=config.get("add_eos_token", False),
                source=source)


class GemmaTokenizer:
    """Text -> token ids with Gemma's special-token conventions.

    Build with :meth:`from_path` (a folder, a ``tokenizer.json`` / ``tokenizer.model`` file).
    """

    def __init__(self, *, backend, kind: str, bos_token: str = "<bos>", eos_token: str = "<eos>",
                 pad_token: str = "<pad>", add_bos_token: bool = True, add_eos_token: bool = False,
                 source: str = ""):
        self.kind = kind  # "tokenizers" | "sentencepiece"
        self._backend = backend
        self.source = source
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        self.bos_token_id = self.token_to_id(bos_token)
        self.eos_token_id = self.token_to_id(eos_token)
        self.pad_token_id = self.token_to_id(pad_token)
        for flag, name, tid in ((self.add_bos_token, bos_token, self.bos_token_id),
                                (self.add_eos_token, eos_token, self.eos_token_id)):
            if flag and tid is None:
                raise ValueError(f"tokenizer {source!r} must add {name!r} but its vocabulary has no such token")
        if kind == "tokenizers":
            backend.no_padding()
            backend.no_truncation()
            single = " ".join(([f"{bos_token}:0"] if self.add_bos_token else []) + ["$A:0"]
                              + ([f"{eos_token}:0"] if self.add_eos_token else []))
            specials = ([(bos_token, self.bos_token_id)] if self.add_bos_token else []) + \
                       ([(eos_token, self.eos_token_id)] if self.add_eos_token and eos_token != bos_token else [])
            backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_path(cls, path: str | os.PathLike, config: dict | None = None) -> "GemmaTokenizer":
        """``path``: a folder holding tokenizer.json (preferred) or tokenizer.model, or one of those files.

        ``config``: tokenizer_config.json contents; read from beside the file when not given.
        """
        path = Path(path)
        if path.is_dir():
            folder = path
            found = [folder / n for n in _TOKEN_FILES if (folder / n).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"no tokenizer in {folder}: expected tokenizer.json or tokenizer.model (copy them from the "
                    f"google/t5gemma-9b-9b-ul2 folder, or pass tokenizer=<path>)")
            file = found[0]
        elif path.is_file():
            folder, file = path.parent, path
        else:
            raise FileNotFoundError(f"tokenizer path {path} does not exist")
        if config is None:
            config = read_tokenizer_config(folder)
        kwargs = _special_tokens(config, str(file))
        if file.suffix == ".json":
            return cls(backend=Tokenizer.from_file(str(file)), kind="tokenizers", **kwargs)
        if file.suffix == ".model":
            try:
                import sentencepiece as spm
            except ImportError as e:  # pragma: no cover
                raise ImportError("reading tokenizer.model needs `sentencepiece`: pip install sentencepiece") from e
            return cls(backend=spm.SentencePieceProcessor(model_file=str(file)), kind="sentencepiece", **kwargs)
        raise ValueError(f"unsupported tokenizer file {file}: expected tokenizer.json or tokenizer.model")

    @classmethod
    def from_json(cls, tokenizer_json: str, config: dict | None = None, *, source: str = "") -> "GemmaTokenizer":
        """From the text of a ``tokenizer.json`` (e.g. embedded in a GGUF file) and tokenizer_config values."""
        return cls(backend=Tokenizer.from_str(tokenizer_json), kind="tokenizers",
                   **_special_tokens(config or {}, source))

    # ---------------------------------------------------------------- use
    def token_to_id(self, token: str) -> int | None:
        if self.kind == "tokenizers":
            return self._backend.token_to_id(token)
        tid = self._backend.piece_to_id(token)
        return None if tid == self._backend.unk_id() and token != self._backend.id_to_piece(tid) else tid

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, special tokens included (as transformers' ``tokenizer(text)``)."""
        if self.kind == "tokenizers":
            return list(self._backend.encode(text).ids)
        ids = list(self._backend.encode(text))
        return ([self.bos_token_id] if self.add_bos_token else []) + ids + \
               ([self.eos_token_id] if self.add_eos_token else [])

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


# ---------------------------------------------------------------- tiny tokenizer
# Characters with their own token; everything else (CJK, Cyrillic, emoji, ...) uses byte fallback.
_TINY_CHARS = (
    "▁" + "".join(chr(c) for c in range(33, 127))
    + "àâäçéèêëîïôöùûüÿßæœÀÂÄÇÉÈÊËÎÏÔÖÙÛÜ"
)
# Whole words assembled by left-to-right merges (deterministic merge table).
_TINY_WORDS = (
    "▁the", "▁a", "▁and", "▁of", "▁to", "▁is", "▁in", "ing", "er", "en", "on", "an",
    "▁man", "▁woman", "▁talk", "▁speak", "▁smil", "▁video", "▁voice",
    "▁der", "▁die", "▁und", "▁ist", "▁le", "▁la", "▁et", "▁une", "▁est",
)


def build_tiny_gemma_tokenizer():
    """A real ``tokenizers`` BPE with byte fallback and Gemma's normaliser/decoder and special ids."""
    vocab: dict[str, int] = {}
    for tok in GEMMA_SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in _TINY_CHARS:
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _TINY_WORDS:
        left = word[0]
        for ch in word[1:]:
            merged = left + ch
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((left, ch))
            left = merged
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(single="<bos>:0 $A:0", special_tokens=[("<bos>", 2)])
    return tok


def write_tiny_tokenizer(folder: str | os.PathLike) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json like a Gemma HF folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_gemma_tokenizer().save(str(folder / "tokenizer.json"))
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, t in enumerate(GEMMA_SPECIAL_TOKENS)
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>",
        "mask_token": "<mask>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "right",
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "mask_token", "pad_token", "unk_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
