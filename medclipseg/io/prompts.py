"""Checking a user's text prompt before it reaches the tokenizer."""
from __future__ import annotations

import unicodedata

__all__ = ["PromptError", "validate_prompt"]


class PromptError(ValueError):
    """A text prompt is unusable; the message is meant to be shown to the user."""


_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c"}


def validate_prompt(prompt: str, max_chars: int = 1000) -> str:
    """Clean a text prompt: control characters removed (tabs/newlines become spaces), stripped.

    Raises ``PromptError`` for an empty prompt or one longer than ``max_chars`` characters
    (no silent truncation here; the tokenizer later truncates to the model's token limit).
    """
    if not isinstance(prompt, str):
        raise PromptError("Prompt must be text.")
    cleaned = "".join(
        " " if ch in _WHITESPACE_CONTROLS else ch
        for ch in prompt
        if ch in _WHITESPACE_CONTROLS or unicodedata.category(ch) != "Cc"
    ).strip()
    if not cleaned:
        raise PromptError(
            "Prompt is empty. Describe the structure to segment, e.g. "
            "'a round polyp in the lower left'."
        )
    if len(cleaned) > max_chars:
        raise PromptError(
            f"Prompt is too long ({len(cleaned)} characters); the limit is {max_chars} "
            "characters. Please shorten it."
        )
    return cleaned
