"""Self-checks of tests/reference_official.py against third-party implementations.

These tests do not touch the ``medclipseg`` package: they validate the independent
reference (random weights in the official layout) against ``open_clip``'s
VisionTransformer and HuggingFace ``transformers.BertModel`` in float64, plus a few
hand-checkable properties of the adapter / head helpers.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_official as ref  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def sd():
    return ref.random_official_state_dict(0)


def _sub(sd, prefix):
    return {k[len(prefix):]: v.double() for k, v in sd.items() if k.startswith(prefix)}


def test_state_dict_matches_key_list(sd):
    spec = ref.load_key_spec()
    keys = [e["key"] for e in spec["keys"]]
    assert list(sd.keys()) == keys
    assert len(keys) == spec["n_keys"] == 668
    for e in spec["keys"]:
        t = sd[e["key"]]
        assert list(t.shape) == e["shape"], e["key"]
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
    assert sum(t.numel() for t in sd.values()) == spec["n_params_total"]
    # determinism of the seed
    sd2 = ref.random_official_state_dict(0)
    for k in ("vision_model.proj", "pvl_adapters.3.two_way.cross_attn_txt_to_img.gate"):
        assert torch.equal(sd[k], sd2[k])


def test_vision_matches_open_clip(sd):
    from open_clip.model import QuickGELU
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(224, 16, 768, 12, 12, 4.0, output_dim=512, act_layer=QuickGELU)
    vit.load_state_dict(_sub(sd, "vision_model."), strict=True)
    vit = vit.double().eval()

    captured = {}
    vit.ln_post.register_forward_hook(lambda m, i, o: captured.__setitem__("ln_post", o))

    px = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        pooled = vit(px)
    oc_tokens = captured["ln_post"] @ vit.proj  # all 197 tokens projected
    assert oc_tokens.shape == (2, 197, 512)

    mine = ref.reference_vision(sd, px)
    assert mine.dtype == torch.float64 and mine.shape == (2, 197, 512)
    torch.testing.assert_close(mine, oc_tokens, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mine[:, 0], pooled, rtol=1e-9, atol=1e-9)


def test_text_matches_hf_bert(sd):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(**ref.text_encoder_config())
    try:
        cfg._attn_implementation = "eager"
    except Exception:  # pragma: no cover
        pass
    bert = BertModel(cfg, add_pooling_layer=False)
    missing, unexpected = bert.load_state_dict(_sub(sd, "text_model.transformer."), strict=False)
    # only the non-persistent buffers may differ (and they are not in state_dict anyway)
    assert not unexpected, unexpected
    assert all(k.endswith(("position_ids", "token_type_ids")) for k in missing), missing
    bert = bert.double().eval()

    ids = ref.make_input_ids(seed=3, lengths=(15, 30))
    assert ids.shape == (2, 256) and ids.dtype == torch.long
    with torch.no_grad():
        hf = bert(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state

    out = ref.reference_text(sd, ids)
    mine = out["last_hidden_state"]
    assert mine.dtype == torch.float64 and mine.shape == (2, 256, 768)
    torch.testing.assert_close(mine, hf, rtol=1e-8, atol=1e-8)

    # embeddings stage alone
    with torch.no_grad():
        hf_emb = bert.embeddings(input_ids=ids)
    torch.testing.assert_close(ref.reference_bert_embeddings(sd, ids), hf_emb, rtol=1e-9, atol=1e-9)

    # projection: proj.0 -> GELU -> proj.2 on the position-0 state
    w0 = sd["text_model.proj.0.weight"].double()
    w2 = sd["text_model.proj.2.weight"].double()
    expect = torch.nn.functional.gelu(hf[:, 0] @ w0.t()) @ w2.t()
    torch.testing.assert_close(out["text_embeds"], expect, rtol=1e-9, atol=1e-9)


def test_prob_cross_attention_properties(sd):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 7, 256, generator=g, dtype=torch.float64)
    c = torch.randn(2, 11, 256, generator=g, dtype=torch.float64)
    pre = "pvl_adapters.2.two_way.cross_attn_img_to_txt."
    res, parts = ref.reference_prob_cross_attention(sd, pre, q, c, return_parts=True)
    assert res.shape == q.shape
    torch.testing.assert_close(parts["attn"].sum(-1), torch.ones(2, 7, dtype=torch.float64))
    assert (parts["k_var"] > 0).all() and (parts["v_var"] > 0).all()
    # gate blend
    gt = torch.sigmoid(sd[pre + "gate"].double())
    torch.testing.assert_close(res, gt * parts["out"] + (1 - gt) * q)

    # brute-force per-element score for one entry
    b, i = 1, 3
    d = 256
    qi = parts["q"][b, i]
    s = lambda jj: (qi @ parts["k_mu"][b, jj]) / d ** 0.5 - 2.35 * torch.sqrt((qi ** 2 * parts["k_var"][b, jj]).sum() / d)
    scores = torch.stack([s(jj) for jj in range(11)])
    torch.testing.assert_close(parts["attn"][b, i], torch.softmax(scores, 0))
    # k split: first d columns -> mean (after norm_k), last d -> raw variance
    kraw = c @ sd[pre + "k_proj.weight"].double().t() + sd[pre + "k_proj.bias"].double()
    torch.testing.assert_close(parts["k_var"], torch.nn.functional.softplus(kraw[..., d:]) + 1e-6)
    ln = torch.nn.functional.layer_norm(kraw[..., :d], (d,), sd[pre + "norm_k.weight"].double(),
                                        sd[pre + "norm_k.bias"].double(), eps=1e-5)
    torch.testing.assert_close(parts["k_mu"], ln)

    # context permutation invariance, query equivariance
    perm = torch.randperm(11, generator=g)
    torch.testing.assert_close(ref.reference_prob_cross_attention(sd, pre, q, c[:, perm]), res)


def test_adapter_uses_updated_image_tokens(sd):
    g = torch.Generator().manual_seed(6)
    img = torch.randn(1, 197, 768, generator=g, dtype=torch.float64)
    txt = torch.randn(1, 20, 768, generator=g, dtype=torch.float64)
    dv, dt = ref.reference_adapter(sd, 0, img, txt)
    assert dv.shape == img.shape and dt.shape == txt.shape
    P = lambda k: sd["pvl_adapters.0." + k].double()
    v = img @ P("proj_vis_down.0.weight").t()
    t = txt @ P("proj_txt_down.weight").t()
    v2 = ref.reference_prob_cross_attention(sd, "pvl_adapters.0.two_way.cross_attn_img_to_txt", v, t)
    t2 = ref.reference_prob_cross_attention(sd, "pvl_adapters.0.two_way.cross_attn_txt_to_img", t, v2)
    t2_wrong = ref.reference_prob_cross_attention(sd, "pvl_adapters.0.two_way.cross_attn_txt_to_img", t, v)
    torch.testing.assert_close(dv, v2 @ P("proj_vis_up.weight").t())
    torch.testing.assert_close(dt, t2 @ P("proj_txt_up.weight").t())
    assert (dt - t2_wrong @ P("proj_txt_up.weight").t()).abs().max() > 1e-3


def test_head_against_nn_modules(sd):
    import torch.nn as nn

    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(2, 197, 512, generator=g, dtype=torch.float64)
    text = torch.randn(2, 512, generator=g, dtype=torch.float64)
    logits, parts = ref.reference_head(sd, tokens, text, return_parts=True)
    assert logits.shape == (2, 224, 224)
    assert parts["feature_map"].shape == (2, 512, 56, 56)

    # module-based re-computation
    p = tokens[:, 1:] / tokens[:, 1:].norm(dim=-1, keepdim=True)
    x = p.transpose(1, 2).reshape(2, 512, 14, 14)
    for i in range(2):
        ct = nn.ConvTranspose2d(512, 512, 2, stride=2).double()
        dw = nn.Conv2d(512, 512, 3, padding=1, groups=512, bias=False).double()
        ln = nn.LayerNorm(512, eps=1e-6).double()
        with torch.no_grad():
            ct.weight.copy_(sd[f"upscale.{i}.conv1.weight"]); ct.bias.copy_(sd[f"upscale.{i}.conv1.bias"])
            dw.weight.copy_(sd[f"upscale.{i}.conv2.weight"])
            ln.weight.copy_(sd[f"upscale.{i}.norm.weight"]); ln.bias.copy_(sd[f"upscale.{i}.norm.bias"])
            x = dw(nn.functional.gelu(ct(x)))
            x = ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(parts["feature_map"], x)
    mlp = nn.Sequential(nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 512)).double()
    mlp.load_state_dict(_sub(sd, "mask_head."))
    with torch.no_grad():
        tq = mlp(text / text.norm(dim=-1, keepdim=True))
        low = (tq[:, :, None, None] * x).sum(1, keepdim=True)
        up = nn.functional.interpolate(low, size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(logits, up)


def test_full_reference_float32_vs_float64(sd):
    """Full fused forward is finite, well scaled, and float32 evaluation stays close to float64
    (bounds how tight the 1e-4 conformance tolerance is)."""
    px = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids = ref.make_input_ids(seed=0)
    with torch.no_grad():
        o64 = ref.reference_logits(sd, px, ids)
        o32 = ref.reference_logits(sd, px, ids, dtype=torch.float32)
    assert o64["logits"].shape == (2, 224, 224) and o64["logits"].dtype == torch.float64
    assert o64["image_tokens"].shape == (2, 197, 512)
    assert o64["text_embeds"].shape == (2, 512)
    assert torch.isfinite(o64["logits"]).all()
    scale = o64["logits"].abs().max().item()
    assert 1e-2 < scale < 1e3, scale
    err = (o32["logits"].double() - o64["logits"]).abs().max().item()
    print(f"logit max |.| = {scale:.4g}, float32-vs-float64 max err = {err:.3g}")
    assert err < 2e-5, err
