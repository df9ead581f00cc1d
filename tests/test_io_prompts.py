"""Tests for medclipseg.io.prompts: cleaning and refusing text prompts."""

from __future__ import annotations

import pytest

from medclipseg.io.images import ImageReadError
from medclipseg.io.prompts import PromptError, states_absence, validate_prompt


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


@pytest.mark.parametrize("prompt", [
    "No putamen in the brain MRI image.",
    "no polyp in this colonoscopy frame",
    "  NO thalamus visible",
    "There is no polyp in the image.",
    "there  is\tno tumour",
])
def test_states_absence_for_authors_empty_mask_prompts(prompt):
    assert states_absence(prompt)


@pytest.mark.parametrize("prompt", [
    "Putamen in the brain MRI image.",
    "Nodule in the left lung",
    "None of the tissue is abnormal",
    "Not a polyp",
    "No, the polyp is in the lower left",
    "No.",
    "There is nothing here",
    "There is a polyp with no stalk",
    "A lesion with no clear boundary",
    "",
])
def test_states_absence_false_when_presence_is_asserted(prompt):
    assert not states_absence(prompt)
