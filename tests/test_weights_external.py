"""Towers from elsewhere: text weights from any BERT-like safetensors export."""
import pytest
import torch
from safetensors.torch import save_file

from medclipseg.registry import build_tiny
from medclipseg.weights.external import load_bert_text_weights

# A micro tiny model on the 224 px grid (7x7 patches of 32 px), fusion before layers 1-4.
MICRO_TINY = dict(width=32, heads=2, embed_dim=16, adapter_dim=8, patch_size=32, image_size=224,
                  fusion_layers=(1, 2, 3, 4))


def small():
    return build_tiny(pretrained_text=False, **MICRO_TINY)


def test_bert_weights_load_from_a_folder_with_or_without_prefix(tmp_path):
    donor = small()
    body = {k: v.clone() for k, v in donor.text_model.transformer.state_dict().items()}
    for folder, prefix in (("plain", ""), ("prefixed", "bert.")):
        (tmp_path / folder).mkdir()
        save_file({prefix + k: v for k, v in body.items()} | {prefix + "pooler.dense.weight": torch.zeros(384, 384)},
                  str(tmp_path / folder / "model.safetensors"))
        model = small()
        load_bert_text_weights(model, tmp_path / folder)
        for key, value in model.text_model.transformer.state_dict().items():
            assert torch.equal(value, body[key]), key


def test_bert_weights_that_do_not_fit_are_refused(tmp_path):
    save_file({"encoder.layer.0.attention.self.query.weight": torch.zeros(3, 3)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="does not fit the text tower"):
        load_bert_text_weights(small(), tmp_path / "model.safetensors")
