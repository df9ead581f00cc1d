"""Checking a user's text prompt before it reaches the tokenizer."""
from __future__ import annotations

import re
import unicodedata

__all__ = ["PromptError", "states_absence", "validate_prompt"]


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


# "No" as the first word, or "There is no", then a word: how the authors' prompts for empty masks
# read ("No putamen in the brain MRI image."). Kept narrow on purpose: "None", "Not", "Nodule",
# "No, ..." and negations later in the sentence do not count.
_ABSENCE_PREFIX = re.compile(r"(?:no|there\s+is\s+no)\s+\w", re.IGNORECASE)


def states_absence(prompt: str) -> bool:
    """True when the prompt states that the target is absent.

    That is, after leading whitespace, it starts with the word "No" or with "There is no",
    followed by a word (case-insensitive): "No putamen in the brain MRI image.", "there is no
    polyp". Anything else, e.g. "Nodule in the left lung" or "Not a polyp", counts as asserting
    presence.
    """
    return bool(_ABSENCE_PREFIX.match(prompt.lstrip()))
