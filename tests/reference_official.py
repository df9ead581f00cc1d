"""Independent functional reference of the authors' MedCLIPSeg forward pass.

Written only from the written specification and from the official checkpoint key
list (``medclipseg/resources/official_checkpoint_keys.json``); it does not import
anything from ``medclipseg``.  Everything is computed with plain torch tensor ops
and ``torch.nn.functional`` in float64 by default (attention is written by hand).

Deterministic variant only: the probabilistic cross-attention uses the value
means (no noise).

Public helpers
--------------
- ``load_key_spec()`` / ``text_encoder_config()``: the JSON key list / BERT config.
- ``random_official_state_dict(seed)``: random float32 weights, exact official layout.
- ``reference_logits(sd, pixel_values, input_ids)``: full forward
  -> dict(logits [B,224,224], image_tokens [B,197,512], text_embeds [B,512]).
- per-stage helpers: ``reference_vision_stem``, ``reference_vision_block``,
  ``reference_vision_head``, ``reference_vision``, ``reference_bert_embeddings``,
  ``reference_bert_layer``, ``reference_text_projection``, ``reference_text``,
  ``reference_prob_cross_attention``, ``reference_adapter``, ``reference_head``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

KEYS_JSON = (
    Path(__file__).resolve().parents[1]
    / "medclipseg"
    / "resources"
    / "official_checkpoint_keys.json"
)

# ---------------------------------------------------------------- constants --
VIS_WIDTH = 768
VIS_HEADS = 12
VIS_LAYERS = 12
PATCH = 16
IMAGE_SIZE = 224
GRID = IMAGE_SIZE // PATCH  # 14
VIS_LN_EPS = 1e-5

TXT_HIDDEN = 768
TXT_HEADS = 12
TXT_LAYERS = 12
TXT_LN_EPS = 1e-12

EMBED_DIM = 512
ADAPTER_DIM = 256
ADAPTER_LN_EPS = 1e-5
FUSION_LAYERS = tuple(range(1, 11))  # block i uses pvl_adapters.{i-1}
PROB_BETA = 2.35
VAR_EPS = 1e-6
HEAD_LN_EPS = 1e-6

VIS = "vision_model."
TXT = "text_model.transformer."


# ------------------------------------------------------------- key list ----
def load_key_spec() -> dict:
    with open(KEYS_JSON) as fh:
        return json.load(fh)


def text_encoder_config() -> dict:
    return dict(load_key_spec()["source"]["text_encoder_config"])


def _init_tensor(key: str, shape, gen: torch.Generator) -> Tensor:
    shape = tuple(shape)
    name = key.rsplit(".", 1)[-1]

    def randn():
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    if key == "logit_scale":
        return torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    if name == "gate":
        return randn()
    if key.endswith("class_embedding"):
        return 0.02 * randn()
    if key.endswith("positional_embedding"):
        return 0.02 * randn()
    if key == VIS + "proj":
        # [768, 512] used as x @ proj -> fan_in is shape[0]
        return randn() / math.sqrt(shape[0])
    if "embeddings." in key and key.endswith("_embeddings.weight"):
        return 0.02 * randn()
    is_norm = any(
        t in key
        for t in ("ln_pre", "ln_post", "ln_1", "ln_2", "LayerNorm", "norm_k", "norm_v", ".norm.")
    )
    if is_norm:
        if name == "weight":
            return 1.0 + 0.1 * randn()
        return 0.02 * randn()
    if name in ("bias", "in_proj_bias"):
        return 0.02 * randn()
    if name in ("weight", "in_proj_weight"):
        if len(shape) == 4 and "upscale" in key and "conv1" in key:
            # ConvTranspose2d weight [in, out, kh, kw]: each output sums over in*kh*kw/4
            fan_in = shape[0]
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
        else:
            fan_in = shape[1]
        return randn() / math.sqrt(fan_in)
    raise KeyError(f"no init rule for {key} {shape}")


def random_official_state_dict(seed: int = 0) -> Dict[str, Tensor]:
    """Every key of the official checkpoint with its shape, float32, random values."""
    gen = torch.Generator().manual_seed(seed)
    sd: Dict[str, Tensor] = {}
    for entry in load_key_spec()["keys"]:
        t = _init_tensor(entry["key"], entry["shape"], gen)
        assert list(t.shape) == list(entry["shape"]), entry["key"]
        sd[entry["key"]] = t.contiguous()
    return sd


# -------------------------------------------------------------- helpers ----
class _P:
    """Lazy parameter access: converts to the working dtype on demand."""

    def __init__(self, sd: Mapping[str, Tensor], dtype: torch.dtype):
        self.sd = sd
        self.dtype = dtype

    def __call__(self, key: str) -> Tensor:
        return self.sd[key].to(torch.float64 if self.dtype is None else self.dtype)


def _p(sd, dtype):
    return sd if isinstance(sd, _P) else _P(sd, dtype)


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    y = x @ w.t()
    return y if b is None else y + b


def _ln(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def gelu(x: Tensor) -> Tensor:  # exact erf GELU
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _softmax(s: Tensor) -> Tensor:
    s = s - s.amax(-1, keepdim=True)
    e = torch.exp(s)
    return e / e.sum(-1, keepdim=True)


def _mha(q: Tensor, k: Tensor, v: Tensor, heads: int, add_mask: Optional[Tensor] = None) -> Tensor:
    """q,k,v: [B, N, C] -> [B, Nq, C]; add_mask broadcastable to [B, heads, Nq, Nk]."""
    B, Nq, C = q.shape
    Nk = k.shape[1]
    hd = C // heads
    qh = q.reshape(B, Nq, heads, hd).transpose(1, 2)
    kh = k.reshape(B, Nk, heads, hd).transpose(1, 2)
    vh = v.reshape(B, Nk, heads, hd).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)
    if add_mask is not None:
        s = s + add_mask
    a = _softmax(s)
    return (a @ vh).transpose(1, 2).reshape(B, Nq, C)


# ---------------------------------------------------------------- vision ----
def reference_vision_stem(sd, pixel_values: Tensor, dtype=torch.float64) -> Tensor:
    """conv1 -> tokens, prepend class token, + positional embedding, ln_pre -> [B,197,768]."""
    P = _p(sd, dtype)
    x = F.conv2d(pixel_values.to(P.dtype), P(VIS + "conv1.weight"), stride=PATCH)  # [B,768,14,14]
    B = x.shape[0]
    x = x.reshape(B, VIS_WIDTH, -1).transpose(1, 2)  # [B,196,768], patch p = row*14+col
    cls = P(VIS + "class_embedding").reshape(1, 1, -1).expand(B, 1, VIS_WIDTH)
    x = torch.cat([cls, x], dim=1) + P(VIS + "positional_embedding")
    return _ln(x, P(VIS + "ln_pre.weight"), P(VIS + "ln_pre.bias"), VIS_LN_EPS)


def reference_vision_block(sd, x: Tensor, i: int, dtype=torch.float64) -> Tensor:
    """One pre-LN open_clip residual attention block; x [B,197,768]."""
    P = _p(sd, dtype)
    pre = f"{VIS}transformer.resblocks.{i}."
    h = _ln(x, P(pre + "ln_1.weight"), P(pre + "ln_1.bias"), VIS_LN_EPS)
    w_in, b_in = P(pre + "attn.in_proj_weight"), P(pre + "attn.in_proj_bias")
    C = VIS_WIDTH
    q = _linear(h, w_in[:C], b_in[:C])
    k = _linear(h, w_in[C : 2 * C], b_in[C : 2 * C])
    v = _linear(h, w_in[2 * C :], b_in[2 * C :])
    a = _mha(q, k, v, VIS_HEADS)
    x = x + _linear(a, P(pre + "attn.out_proj.weight"), P(pre + "attn.out_proj.bias"))
    h = _ln(x, P(pre + "ln_2.weight"), P(pre + "ln_2.bias"), VIS_LN_EPS)
    h = quick_gelu(_linear(h, P(pre + "mlp.c_fc.weight"), P(pre + "mlp.c_fc.bias")))
    return x + _linear(h, P(pre + "mlp.c_proj.weight"), P(pre + "mlp.c_proj.bias"))


def reference_vision_head(sd, x: Tensor, dtype=torch.float64) -> Tensor:
    """ln_post then @ proj on ALL tokens -> [B,197,512]."""
    P = _p(sd, dtype)
    x = _ln(x, P(VIS + "ln_post.weight"), P(VIS + "ln_post.bias"), VIS_LN_EPS)
    return x @ P(VIS + "proj")


def reference_vision(sd, pixel_values: Tensor, dtype=torch.float64) -> Tensor:
    """Plain (un-fused) image tower -> image tokens [B,197,512]."""
    P = _p(sd, dtype)
    x = reference_vision_stem(P, pixel_values)
    for i in range(VIS_LAYERS):
        x = reference_vision_block(P, x, i)
    return reference_vision_head(P, x)


# ------------------------------------------------------------------ text ----
def reference_bert_embeddings(sd, input_ids: Tensor, dtype=torch.float64) -> Tensor:
    """LayerNorm(word + position(0..L-1) + token_type(0)) -> [B,L,768]."""
    P = _p(sd, dtype)
    pre = TXT + "embeddings."
    L = input_ids.shape[1]
    x = P(pre + "word_embeddings.weight")[input_ids.long()]
    x = x + P(pre + "position_embeddings.weight")[:L].unsqueeze(0)
    x = x + P(pre + "token_type_embeddings.weight")[0].reshape(1, 1, -1)
    return _ln(x, P(pre + "LayerNorm.weight"), P(pre + "LayerNorm.bias"), TXT_LN_EPS)


def bert_additive_mask(input_ids: Tensor, dtype=torch.float64) -> Tensor:
    """[B,1,1,L] additive mask: 0 for real tokens, very negative for pad (id 0)."""
    keep = (input_ids != 0).to(dtype)
    return ((1.0 - keep) * torch.finfo(dtype).min)[:, None, None, :]


def reference_bert_layer(sd, x: Tensor, i: int, add_mask: Optional[Tensor], dtype=torch.float64) -> Tensor:
    """One post-LN BERT layer; x [B,L,768]."""
    P = _p(sd, dtype)
    pre = f"{TXT}encoder.layer.{i}."
    att = pre + "attention."
    q = _linear(x, P(att + "self.query.weight"), P(att + "self.query.bias"))
    k = _linear(x, P(att + "self.key.weight"), P(att + "self.key.bias"))
    v = _linear(x, P(att + "self.value.weight"), P(att + "self.value.bias"))
    a = _mha(q, k, v, TXT_HEADS, add_mask)
    a = _linear(a, P(att + "output.dense.weight"), P(att + "output.dense.bias"))
    x = _ln(x + a, P(att + "output.LayerNorm.weight"), P(att + "output.LayerNorm.bias"), TXT_LN_EPS)
    h = gelu(_linear(x, P(pre + "intermediate.dense.weight"), P(pre + "intermediate.dense.bias")))
    h = _linear(h, P(pre + "output.dense.weight"), P(pre + "output.dense.bias"))
    return _ln(x + h, P(pre + "output.LayerNorm.weight"), P(pre + "output.LayerNorm.bias"), TXT_LN_EPS)


def reference_text_projection(sd, hidden: Tensor, dtype=torch.float64) -> Tensor:
    """hidden [B,L,768] -> position 0 -> proj.0 -> GELU -> proj.2 -> [B,512]."""
    P = _p(sd, dtype)
    h = hidden[:, 0]
    h = gelu(_linear(h, P("text_model.proj.0.weight")))
    return _linear(h, P("text_model.proj.2.weight"))


def reference_text(sd, input_ids: Tensor, dtype=torch.float64) -> Dict[str, Tensor]:
    """Plain (un-fused) BERT -> dict(last_hidden_state [B,L,768], text_embeds [B,512])."""
    P = _p(sd, dtype)
    mask = bert_additive_mask(input_ids, P.dtype)
    x = reference_bert_embeddings(P, input_ids)
    for i in range(TXT_LAYERS):
        x = reference_bert_layer(P, x, i, mask)
    return {"last_hidden_state": x, "text_embeds": reference_text_projection(P, x)}


# --------------------------------------------------------------- adapters ----
def reference_prob_cross_attention(
    sd, prefix: str, query: Tensor, context: Tensor, dtype=torch.float64, return_parts: bool = False
):
    """Deterministic probabilistic cross-attention (single head, d=256).

    prefix e.g. ``"pvl_adapters.0.two_way.cross_attn_img_to_txt."`` (trailing dot optional).
    query [B,Nq,d], context [B,Nc,d] -> [B,Nq,d].
    """
    P = _p(sd, dtype)
    if not prefix.endswith("."):
        prefix = prefix + "."
    d = query.shape[-1]
    q = _linear(query, P(prefix + "q_proj.weight"), P(prefix + "q_proj.bias"))
    k = _linear(context, P(prefix + "k_proj.weight"), P(prefix + "k_proj.bias"))
    v = _linear(context, P(prefix + "v_proj.weight"), P(prefix + "v_proj.bias"))
    k_mu = _ln(k[..., :d], P(prefix + "norm_k.weight"), P(prefix + "norm_k.bias"), ADAPTER_LN_EPS)
    v_mu = _ln(v[..., :d], P(prefix + "norm_v.weight"), P(prefix + "norm_v.bias"), ADAPTER_LN_EPS)
    k_var = F.softplus(k[..., d:]) + VAR_EPS
    v_var = F.softplus(v[..., d:]) + VAR_EPS
    mean_score = (q @ k_mu.transpose(-1, -2)) / math.sqrt(d)
    unc = torch.sqrt(((q * q) @ k_var.transpose(-1, -2)) / d)
    attn = _softmax(mean_score - PROB_BETA * unc)
    out = _linear(attn @ v_mu, P(prefix + "out_proj.weight"), P(prefix + "out_proj.bias"))
    g = torch.sigmoid(P(prefix + "gate"))
    res = g * out + (1.0 - g) * query
    if return_parts:
        return res, dict(q=q, k_mu=k_mu, k_var=k_var, v_mu=v_mu, v_var=v_var, attn=attn, out=out)
    return res


def reference_adapter(sd, idx: int, img: Tensor, txt: Tensor, dtype=torch.float64):
    """pvl_adapters.{idx}: img [B,197,768], txt [B,L,768] -> (img_update, txt_update)."""
    P = _p(sd, dtype)
    pre = f"pvl_adapters.{idx}."
    v = _linear(img, P(pre + "proj_vis_down.0.weight"))
    t = _linear(txt, P(pre + "proj_txt_down.weight"))
    v2 = reference_prob_cross_attention(P, pre + "two_way.cross_attn_img_to_txt.", v, t)
    t2 = reference_prob_cross_attention(P, pre + "two_way.cross_attn_txt_to_img.", t, v2)
    return _linear(v2, P(pre + "proj_vis_up.weight")), _linear(t2, P(pre + "proj_txt_up.weight"))


# ------------------------------------------------------------------- head ----
def _channel_ln(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """LayerNorm over dim 1 of [B,C,H,W]."""
    return _ln(x.permute(0, 2, 3, 1), w, b, eps).permute(0, 3, 1, 2)


def reference_upscale_block(sd, i: int, x: Tensor, dtype=torch.float64) -> Tensor:
    P = _p(sd, dtype)
    pre = f"upscale.{i}."
    x = F.conv_transpose2d(x, P(pre + "conv1.weight"), P(pre + "conv1.bias"), stride=2)
    x = gelu(x)
    x = F.conv2d(x, P(pre + "conv2.weight"), None, padding=1, groups=x.shape[1])
    return _channel_ln(x, P(pre + "norm.weight"), P(pre + "norm.bias"), HEAD_LN_EPS)


def reference_mask_head_mlp(sd, text: Tensor, dtype=torch.float64) -> Tensor:
    P = _p(sd, dtype)
    h = gelu(_linear(text, P("mask_head.0.weight"), P("mask_head.0.bias")))
    h = gelu(_linear(h, P("mask_head.2.weight"), P("mask_head.2.bias")))
    return _linear(h, P("mask_head.4.weight"), P("mask_head.4.bias"))


def reference_head(sd, image_tokens: Tensor, text_embeds: Tensor, dtype=torch.float64,
                   return_parts: bool = False):
    """image_tokens [B,197,512] (class first), text_embeds [B,512] -> logits [B,224,224]."""
    P = _p(sd, dtype)
    patches = image_tokens[:, 1:]
    patches = patches / patches.norm(dim=-1, keepdim=True)
    text = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    B, N, C = patches.shape
    g = int(round(math.sqrt(N)))
    fmap = patches.reshape(B, g, g, C).permute(0, 3, 1, 2)  # p -> (p//g, p%g)
    for i in range(2):
        fmap = reference_upscale_block(P, i, fmap)
    tq = reference_mask_head_mlp(P, text)
    low = torch.einsum("bc,bchw->bhw", tq, fmap)
    logits = F.interpolate(low[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                           align_corners=False)[:, 0]
    if return_parts:
        return logits, dict(feature_map=fmap, text_query=tq, low_res_logits=low)
    return logits


# --------------------------------------------------------------- forward ----
def reference_logits(sd, pixel_values: Tensor, input_ids: Tensor, dtype=torch.float64,
                     return_intermediates: bool = False) -> Dict[str, Tensor]:
    """Full deterministic MedCLIPSeg forward (lockstep fusion)."""
    P = _p(sd, dtype)
    input_ids = input_ids.long()
    x_img = reference_vision_stem(P, pixel_values)
    x_txt = reference_bert_embeddings(P, input_ids)
    mask = bert_additive_mask(input_ids, P.dtype)
    inter = {"vision_stem": x_img, "text_embeddings": x_txt}
    for i in range(max(VIS_LAYERS, TXT_LAYERS)):
        if i in FUSION_LAYERS:
            dv, dt = reference_adapter(P, i - 1, x_img, x_txt)
            x_img = x_img + dv
            x_txt = x_txt + dt
        x_img = reference_vision_block(P, x_img, i)
        x_txt = reference_bert_layer(P, x_txt, i, mask)
        if return_intermediates:
            inter[f"vision_{i}"] = x_img
            inter[f"text_{i}"] = x_txt
    image_tokens = reference_vision_head(P, x_img)
    text_embeds = reference_text_projection(P, x_txt)
    logits = reference_head(P, image_tokens, text_embeds)
    out = {"logits": logits, "image_tokens": image_tokens, "text_embeds": text_embeds}
    if return_intermediates:
        out["intermediates"] = inter
    return out


def make_input_ids(seed: int = 0, lengths=(15, 30), total: int = 256) -> Tensor:
    """[B,total] int64: [101, n random ids in 1000..29999, 102, 0...] per row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), total, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, 0] = 101
        ids[r, 1 : n + 1] = torch.randint(1000, 30000, (n,), generator=gen)
        ids[r, n + 1] = 102
    return ids
