"""Prompt tokenisation per text tower, with the padding policy of each pre-processing mode.

exact: pad with 0 to the tower's fixed length (256 for the authors' BiomedBERT), as in the
       authors' pipeline; padding tokens take part in the adapters, so this length matters.
fast:  pad only to the longest prompt of the batch (no padding for a single prompt).
"""
from __future__ import annotations

from typing import Sequence

import torch

from medclipseg.weights.sources import resolve_file

MODES = ("exact", "fast")


class PromptTokenizer:
    """Callable: list of prompts -> LongTensor [B, L] of input ids (pad id 0)."""

    def __init__(self, encode_batch, max_length: int, name: str, pad_id: int = 0):
        self._encode_batch = encode_batch  # list[str] -> list[list[int]] (with special tokens)
        self.max_length = max_length
        self.name = name
        self.pad_id = pad_id

    def __call__(self, prompts: Sequence[str] | str, mode: str = "exact") -> torch.Tensor:
        return self.encode(prompts, mode)[0]

    def encode(self, prompts: Sequence[str] | str, mode: str = "exact"):
        """-> (input ids [B, L], per prompt whether it was truncated to max_length)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(prompts, str):
            prompts = [prompts]
        encoded = self._encode_batch(list(prompts))
        truncated = [len(ids) > self.max_length for ids in encoded]
        sequences = [self._truncate(ids) for ids in encoded]
        length = self.max_length if mode == "exact" else max((len(s) for s in sequences), default=0)
        out = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(sequences):
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out, truncated

    def _truncate(self, ids: list) -> list:
        if len(ids) <= self.max_length:
            return ids
        # Keep the closing special token (e.g. [SEP] or CLIP's end-of-text) at the end.
        return ids[: self.max_length - 1] + ids[-1:]

    def token_count(self, prompt: str) -> int:
        """Tokens of a prompt before truncation (special tokens included)."""
        return len(self._encode_batch([prompt])[0])


def wordpiece_tokenizer(source, max_length: int, lowercase: bool = True) -> PromptTokenizer:
    """BERT WordPiece from a `vocab.txt` or a `tokenizer.json` (any source of medclipseg.weights.sources)."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer

    path = resolve_file(source)
    if path.suffix == ".json":
        backend = Tokenizer.from_file(str(path))
        backend.no_padding()
        backend.no_truncation()
    else:
        backend = BertWordPieceTokenizer(str(path), lowercase=lowercase)

    def encode_batch(prompts):
        return [enc.ids for enc in backend.encode_batch(prompts)]

    return PromptTokenizer(encode_batch, max_length, name=str(source))


def clip_tokenizer(max_length: int = 77) -> PromptTokenizer:
    """OpenAI CLIP's BPE (bundled with open_clip, offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    backend = SimpleTokenizer()
    sot, eot = backend.encoder["<start_of_text>"], backend.encoder["<end_of_text>"]

    def encode_batch(prompts):
        return [[sot] + backend.encode(p) + [eot] for p in prompts]

    return PromptTokenizer(encode_batch, max_length, name="open_clip://ViT-B-16")


def build_tokenizer(source: str, max_length: int) -> PromptTokenizer:
    if source.startswith("open_clip://"):
        return clip_tokenizer(max_length)
    return wordpiece_tokenizer(source, max_length)
