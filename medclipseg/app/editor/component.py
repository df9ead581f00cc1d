"""The mask editor as a Gradio component: a ``gr.HTML`` whose ``js_on_load`` is ``mask_editor.js``.

Gradio 6's HTML component runs our script once with the component's element, its ``props``
(``props.value`` is the value Gradio sends and receives), ``trigger`` (fires the component's
events) and ``watch`` (called when the server sets a new value). The template and the script
are plain files shipped inside the package, so neither Spaces nor ``pip install`` need npm.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import gradio as gr

EDITOR_FILES = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def editor_source(name: str) -> str:
    """One of the editor's shipped files (mask_editor.js, .html or .css)."""
    return (EDITOR_FILES / name).read_text(encoding="utf-8")


def mask_editor(*, elem_id: str = "mask-editor") -> gr.HTML:
    """The editor component (inside a Blocks being built); its value is a ``payload`` dict or None."""
    return gr.HTML(
        value=None,
        html_template=editor_source("mask_editor.html"),
        css_template=editor_source("mask_editor.css"),
        js_on_load=editor_source("mask_editor.js"),
        apply_default_css=False,
        elem_id=elem_id,
        container=False,
        padding=False,
    )
