"""Model configuration as plain dataclasses (serialised to JSON beside our weights)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    quick_gelu: bool = True


@dataclass
class TextConfig:
    kind: str = "bert"  # "bert" (Hugging Face BERT layout) or "clip" (OpenAI CLIP text transformer)
    # BERT: Hugging Face config fields; CLIP: context_length, vocab_size, width, heads, layers.
    fields: dict = field(default_factory=dict)
    proj_hidden: int = 640  # BERT towers only
    pooling: str = "cls"  # BERT towers only: "cls" or "mean"
    tokenizer: str = ""  # a tokenizer source, see medclipseg.tokenizers
    max_length: int = 256  # exact-mode padding length


@dataclass
class ModelConfig:
    backbone: str
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    adapter_dim: int = 256
    beta: float = 2.35
    fusion_layers: tuple = tuple(range(1, 11))
    # False for a model trained with the value means only: Monte-Carlo sampling then adds nothing.
    stochastic: bool = True
    # Parameter-name prefixes whose weights come from elsewhere (a package or the hub) and are
    # therefore not stored in our safetensors files unless asked.
    external_prefixes: tuple = ()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fusion_layers"] = list(self.fusion_layers)
        out["external_prefixes"] = list(self.external_prefixes)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        vision = VisionConfig(**values.pop("vision", {}))
        text = TextConfig(**values.pop("text", {}))
        values["fusion_layers"] = tuple(values.get("fusion_layers", range(1, 11)))
        values["external_prefixes"] = tuple(values.get("external_prefixes", ()))
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(vision=vision, text=text, **known)
