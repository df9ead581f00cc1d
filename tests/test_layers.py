"""Each model part against formulas written here from the spec (float64, small shapes)."""
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_official as ref  # noqa: E402

from medclipseg.modeling import ChannelLayerNorm, PVLAdapter, ProbabilisticCrossAttention, TwoWayLayer, UpscaleBlock
from medclipseg.modeling.prob_attention import AntitheticNoise
from medclipseg.modeling.text_towers import BertConfig, BertTextTower, ClipTextTower

# A micro tiny model on the 224 px grid (7x7 patches of 32 px), fusion before layers 1-4.
MICRO_TINY = dict(width=32, heads=2, embed_dim=16, adapter_dim=8, patch_size=32, image_size=224,
                  fusion_layers=(1, 2, 3, 4))



@pytest.fixture(autouse=True)
def float64_default():
    """float64 for this module's tests only (set at run time, not at collection)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def randomise(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return module


def attention_formula(params, query, context, beta=2.35, noise=None):
    """Spec: score = Q K_mu^T/sqrt(d) - beta sqrt(Q^2 K_var^T / d); V = V_mu + sqrt(V_var) eps; gated."""
    d = query.shape[-1]
    q = query @ params["q_proj.weight"].T + params["q_proj.bias"]
    k = context @ params["k_proj.weight"].T + params["k_proj.bias"]
    v = context @ params["v_proj.weight"].T + params["v_proj.bias"]

    def layer_norm(x, w, b):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * w + b

    k_mu = layer_norm(k[..., :d], params["norm_k.weight"], params["norm_k.bias"])
    v_mu = layer_norm(v[..., :d], params["norm_v.weight"], params["norm_v.bias"])
    k_var = torch.log1p(torch.exp(k[..., d:])) + 1e-6
    v_var = torch.log1p(torch.exp(v[..., d:])) + 1e-6
    scores = q @ k_mu.transpose(-1, -2) / math.sqrt(d) - beta * torch.sqrt((q * q) @ k_var.transpose(-1, -2) / d)
    weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
    weights = weights / weights.sum(-1, keepdim=True)
    values = v_mu if noise is None else v_mu + torch.sqrt(v_var) * noise
    out = (weights @ values) @ params["out_proj.weight"].T + params["out_proj.bias"]
    g = 1.0 / (1.0 + torch.exp(-params["gate"]))
    return g * out + (1 - g) * query, weights


def test_probabilistic_attention_matches_formula_deterministic():
    layer = randomise(ProbabilisticCrossAttention(dim=8))
    query, context = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    expected, _ = attention_formula(dict(layer.named_parameters()), query, context)
    assert torch.allclose(layer(query, context, stochastic=False), expected, atol=1e-12)
    # The independent functional reference agrees too.
    assert torch.allclose(ref.reference_prob_cross_attention(
        {f"attn.{k}": v for k, v in layer.state_dict().items()}, "attn.", query, context), expected,
                          atol=1e-12)


def test_probabilistic_attention_samples_values_with_fresh_noise():
    layer = randomise(ProbabilisticCrossAttention(dim=8), seed=1)
    query, context = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    noise = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(5))
    expected, _ = attention_formula(dict(layer.named_parameters()), query, context, noise=noise)
    got = layer(query, context, stochastic=True, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(got, expected, atol=1e-12)
    # Fresh noise on every call, in eval mode too.
    layer.eval()
    assert not torch.allclose(layer(query, context), layer(query, context))


def test_variance_penalty_lowers_attention_to_uncertain_keys():
    layer = randomise(ProbabilisticCrossAttention(dim=8), seed=2)
    query, context = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    params = dict(layer.named_parameters())
    _, weights = attention_formula(params, query, context)
    # Raising the raw key variance bias of every dimension makes all keys more uncertain; the
    # token whose variance rises most (the same for all here) keeps rows normalised, so test beta.
    _, weights_no_penalty = attention_formula(params, query, context, beta=0.0)
    layer.beta = 0.0
    assert torch.allclose(torch.softmax(
        (query @ params["q_proj.weight"].T + params["q_proj.bias"]) @ layer.gaussian_keys_values(context)[0].transpose(-1, -2)
        / math.sqrt(8), -1), weights_no_penalty, atol=1e-12)
    assert not torch.allclose(weights, weights_no_penalty)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 3), atol=1e-12)


def test_gate_blends_output_and_query():
    layer = randomise(ProbabilisticCrossAttention(dim=4), seed=3)
    query, context = torch.randn(1, 2, 4), torch.randn(1, 3, 4)
    with torch.no_grad():
        layer.gate.fill_(-60.0)
    assert torch.allclose(layer(query, context, stochastic=False), query, atol=1e-12)
    with torch.no_grad():
        layer.gate.fill_(0.0)
        half = layer(query, context, stochastic=False)
        layer.gate.fill_(60.0)
        full = layer(query, context, stochastic=False)
    assert torch.allclose(half, 0.5 * full + 0.5 * query, atol=1e-12)
    assert ProbabilisticCrossAttention(4).gate.item() == 0.0  # initialised at 0


def test_two_way_text_reads_updated_image():
    layer = randomise(TwoWayLayer(dim=6), seed=4)
    image, text = torch.randn(2, 5, 6), torch.randn(2, 3, 6)
    new_image, new_text = layer(image, text, stochastic=False)
    p_i2t = {k.split(".", 1)[1]: v for k, v in layer.named_parameters() if k.startswith("cross_attn_img_to_txt")}
    p_t2i = {k.split(".", 1)[1]: v for k, v in layer.named_parameters() if k.startswith("cross_attn_txt_to_img")}
    expected_image, _ = attention_formula(p_i2t, image, text)
    expected_text, _ = attention_formula(p_t2i, text, expected_image)
    assert torch.allclose(new_image, expected_image, atol=1e-12)
    assert torch.allclose(new_text, expected_text, atol=1e-12)


def test_pvl_adapter_matches_reference_and_returns_updates():
    adapter = randomise(PVLAdapter(vision_width=12, text_width=10, dim=6), seed=5)
    image, text = torch.randn(2, 5, 12), torch.randn(2, 4, 10)
    image_update, text_update = adapter(image, text, stochastic=False)
    sd = {f"pvl_adapters.0.{k}": v for k, v in adapter.state_dict().items()}
    ref_image, ref_text = ref.reference_adapter(sd, 0, image, text)
    assert torch.allclose(image_update, ref_image, atol=1e-12)
    assert torch.allclose(text_update, ref_text, atol=1e-12)
    assert image_update.shape == image.shape and text_update.shape == text.shape


def test_upscale_block_matches_formula():
    block = randomise(UpscaleBlock(channels=4), seed=6)
    x = torch.randn(2, 4, 3, 3)
    up = F.conv_transpose2d(x, block.conv1.weight, block.conv1.bias, stride=2)
    up = 0.5 * up * (1 + torch.erf(up / math.sqrt(2)))
    up = F.conv2d(up, block.conv2.weight, None, padding=1, groups=4)
    mean = up.mean(1, keepdim=True)
    var = ((up - mean) ** 2).mean(1, keepdim=True)
    expected = (up - mean) / torch.sqrt(var + 1e-6) * block.norm.weight[:, None, None] + block.norm.bias[:, None, None]
    assert block(x).shape == (2, 4, 6, 6)
    assert torch.allclose(block(x), expected, atol=1e-12)
    assert isinstance(block.norm, ChannelLayerNorm) and block.conv2.bias is None


def test_head_matches_reference():
    from medclipseg.registry import build_tiny

    model = randomise(build_tiny(pretrained_text=False, **MICRO_TINY).double(), seed=7)
    image_tokens, text_embeds = torch.randn(2, 1 + 49, 16), torch.randn(2, 16)
    expected = ref.reference_head(model.state_dict(), image_tokens, text_embeds)
    assert torch.allclose(model.decode(image_tokens, text_embeds), expected, atol=1e-10)


def test_bert_tower_matches_transformers():
    transformers = pytest.importorskip("transformers")
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=32, max_position_embeddings=20)
    tower = randomise(BertTextTower(config, embed_dim=8, proj_hidden=12), seed=8).eval()
    hf = transformers.BertModel(transformers.BertConfig(**config.to_dict(), attn_implementation="eager"),
                                add_pooling_layer=False).double().eval()
    missing, unexpected = hf.load_state_dict(
        {k[len("transformer."):]: v for k, v in tower.state_dict().items() if k.startswith("transformer.")},
        strict=False)
    assert not unexpected and all(k.endswith(("position_ids", "token_type_ids")) for k in missing)
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 5, 3, 0, 0, 0, 0]])
    hidden, state = tower.embed(ids)
    for i in range(2):
        hidden = tower.run_layer(i, hidden, state)
    expected = hf(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert torch.allclose(hidden, expected, atol=1e-10)
    embeds = tower.pool_and_project(hidden, state)
    proj = F.gelu(expected[:, 0] @ tower.proj[0].weight.T) @ tower.proj[2].weight.T
    assert torch.allclose(embeds, proj, atol=1e-10)


def test_clip_text_tower_matches_open_clip():
    from open_clip.transformer import TextTransformer

    reference = TextTransformer(context_length=9, vocab_size=40, width=16, heads=2, layers=2, output_dim=8).double().eval()
    randomise(reference, seed=9)
    tower = ClipTextTower(context_length=9, vocab_size=40, width=16, heads=2, layers=2, embed_dim=8).double().eval()
    tower.load_state_dict(reference.state_dict(), strict=False)
    ids = torch.tensor([[1, 5, 7, 39, 0, 0, 0, 0, 0], [1, 4, 6, 8, 39, 0, 0, 0, 0]])
    hidden, state = tower.embed(ids)
    for i in range(2):
        hidden = tower.run_layer(i, hidden, state)
    assert torch.allclose(tower.pool_and_project(hidden, state), reference(ids), atol=1e-10)


def test_antithetic_noise_mirrors_halves():
    noise = AntitheticNoise(torch.Generator().manual_seed(0)).draw((6, 3, 2), "cpu", torch.float64)
    assert torch.equal(noise[:3], -noise[3:])
    with pytest.raises(ValueError):
        AntitheticNoise().draw((3, 2), "cpu", torch.float64)


def test_official_split_counts():
    from medclipseg.registry import build_unimedclip_vit_b16

    torch.set_default_dtype(torch.float32)
    try:
        model = build_unimedclip_vit_b16()
    finally:
        torch.set_default_dtype(torch.float64)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == (214_580_757, 18_677_268)
    assert len(model.state_dict()) == 668
    adapters = sum(p.numel() for n, p in model.named_parameters() if n.startswith("pvl_adapters"))
    upscale = sum(p.numel() for n, p in model.named_parameters() if n.startswith("upscale"))
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mask_head"))
    assert (adapters, upscale, head) == (15_779_860, 2_109_440, 787_968)


def test_towers_must_have_equal_depth():
    from medclipseg.registry import build_model, tiny_config

    config = tiny_config(**MICRO_TINY)
    config.vision.layers = 4
    config.fusion_layers = (1, 2)
    with pytest.raises(ValueError, match="equal depth"):
        build_model(config)
    config = tiny_config(**MICRO_TINY)
    config.fusion_layers = (1, 9)
    with pytest.raises(ValueError, match="fusion layers"):
        build_model(config)
