"""Text towers with a common layer-by-layer interface.

`BertTextTower` is our own BERT encoder with Hugging Face parameter names (the authors' text
tower is BiomedBERT; MiniLM-L6 uses the same layout). `ClipTextTower` drives open_clip's
text transformer (OpenAI CLIP).

Interface used by the fused encoder:
    state  = tower.embed(input_ids)            -> TextState (hidden [B, L, W] and attention info)
    hidden = tower.run_layer(i, hidden, state)
    embeds = tower.pool_and_project(hidden, state)  -> [B, embed_dim]
    state.repeat(n)                            -> the same state for a batch repeated n times
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TextState:
    input_ids: torch.Tensor
    # Boolean [B, 1, 1, L] (True = attend), or None when every token is attended.
    key_mask: Optional[torch.Tensor] = None
    causal_mask: Optional[torch.Tensor] = None

    def repeat(self, times: int) -> "TextState":
        if times == 1:
            return self
        return TextState(
            input_ids=self.input_ids.repeat(times, 1),
            key_mask=None if self.key_mask is None else self.key_mask.repeat(times, 1, 1, 1),
            causal_mask=self.causal_mask,
        )


@dataclass
class BertConfig:
    """BERT hyper-parameters (field names as in Hugging Face configs)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and k != "extra"}
        act = known.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"unsupported BERT hidden_act {act!r}: only exact 'gelu' is implemented")
        pos = values.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"unsupported position_embedding_type {pos!r}")
        return cls(**known)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        out["position_embedding_type"] = "absolute"
        return out


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Not saved in checkpoints (non-persistent), as in Hugging Face's BERT.
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0), persistent=False
        )
        self.register_buffer(
            "token_type_ids", torch.zeros(1, config.max_position_embeddings, dtype=torch.long), persistent=False
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"text of {length} tokens exceeds the tower's {self.position_embeddings.num_embeddings} positions"
            )
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(self.position_ids[:, :length])
            + self.token_type_embeddings(self.token_type_ids[:, :length])
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout_prob if self.training else 0.0
        )
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> add the residual -> LayerNorm (BERT's post-norm; used twice per layer)."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.output(self.self(x, key_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        attended = self.attention(x, key_mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])


class BertBody(nn.Module):
    """Embeddings and encoder of a BERT model without pooler (names as in Hugging Face)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)


class BertTextTower(nn.Module):
    """BERT body plus the projection to the joint space.

    pooling: "cls" (hidden state at position 0, the authors' choice) or "mean" (mean over
    non-padding tokens, what sentence-transformers' MiniLM was trained with).
    """

    def __init__(self, config: BertConfig, embed_dim: int = 512, proj_hidden: int = 640, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.transformer = BertBody(config)
        self.proj = nn.Sequential(
            nn.Linear(config.hidden_size, proj_hidden, bias=False),
            nn.GELU(),
            nn.Linear(proj_hidden, embed_dim, bias=False),
        )
        self.pooling = pooling
        self.pad_id = config.pad_token_id
        self.width = config.hidden_size
        self.depth = config.num_hidden_layers
        self.max_length = config.max_position_embeddings

    def embed(self, input_ids: torch.Tensor):
        attended = input_ids != self.pad_id
        key_mask = None if bool(attended.all()) else attended[:, None, None, :]
        return self.transformer.embeddings(input_ids), TextState(input_ids=input_ids, key_mask=key_mask)

    def run_layer(self, index: int, x: torch.Tensor, state: TextState) -> torch.Tensor:
        return self.transformer.encoder.layer[index](x, state.key_mask)

    def pool_and_project(self, x: torch.Tensor, state: TextState) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = (state.input_ids != self.pad_id).to(x.dtype).unsqueeze(-1)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.proj(pooled)


class ClipTextTower(nn.Module):
    """OpenAI CLIP's causal text transformer (open_clip modules), driven layer by layer.

    Text embedding = ln_final(hidden at the end-of-text token) @ text_projection; the end-of-text
    token has the largest id, as in CLIP.
    """

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        embed_dim: int = 512,
    ):
        super().__init__()
        from open_clip.transformer import LayerNorm, Transformer

        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width=width, layers=layers, heads=heads)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        causal = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)
        self.pad_id = 0
        self.width = width
        self.depth = layers
        self.max_length = context_length

    def embed(self, input_ids: torch.Tensor):
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        return x, TextState(input_ids=input_ids, causal_mask=self.attn_mask[:length, :length])

    def run_layer(self, index: int, x: torch.Tensor, state: TextState) -> torch.Tensor:
        return self.transformer.resblocks[index](x, attn_mask=state.causal_mask.to(x.dtype))

    def pool_and_project(self, x: torch.Tensor, state: TextState) -> torch.Tensor:
        x = self.ln_final(x)
        eot = state.input_ids.argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return pooled @ self.text_projection
