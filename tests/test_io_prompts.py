"""Tests for medclipseg.io.prompts: cleaning and refusing text prompts."""

from __future__ import annotations

import pytest

from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError, validate_prompt


def test_validate_prompt():
    assert validate_prompt("  polyp in the lower left\n") == "polyp in the lower left"
    assert validate_prompt("a\x00b\x07c\td") == "abc d"
    with pytest.raises(PromptError, match="Prompt is empty"):
        validate_prompt("   \n\t ")
    with pytest.raises(PromptError, match="Prompt is empty"):
        validate_prompt("\x00\x01")
    with pytest.raises(PromptError, match="1000"):
        validate_prompt("x" * 1001)
    assert len(validate_prompt("x" * 1000)) == 1000
    with pytest.raises(PromptError, match="limit is 10"):
        validate_prompt("y" * 11, max_chars=10)
    assert isinstance(PromptError("x"), ValueError)
    assert isinstance(ImageReadError("x"), ValueError)
