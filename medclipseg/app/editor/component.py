"""The mask editor as a Gradio component: a ``gr.HTML`` whose ``js_on_load`` is ``mask_editor.js``.

Gradio 6's HTML component runs our script once with the component's element, its ``props``
(``props.value`` is the value Gradio sends and receives), ``trigger`` (fires the component's
events) and ``watch`` (called when the server sets a new value). The template and the script
are plain files shipped inside the package, so neither Spaces nor ``pip install`` need npm.

``server_functions`` are Python functions the script calls as ``await server.<name>(argument)``
(Gradio posts the argument to the component's server route, outside the event queue, and hands back
what the function returns as JSON): the layout passes ``volume_slices``, ``volume_plane`` and
``volume_tool``, which answer the editor's slice, plane and volume tool requests for volume cases.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import gradio as gr

EDITOR_FILES = Path(__file__).resolve().parent
# The script is these files in this order (one scope: the plane views use the editor's state and
# drawing), then startEditor() once every declaration is in place.
EDITOR_SCRIPTS = ("mask_editor.js", "volume_planes.js", "volume_tools.js")


@lru_cache(maxsize=None)
def editor_source(name: str) -> str:
    """One of the editor's shipped files (mask_editor.js, .html or .css)."""
    return (EDITOR_FILES / name).read_text(encoding="utf-8")


def editor_script() -> str:
    """The editor's whole script, as js_on_load runs it."""
    return "\n".join(editor_source(name) for name in EDITOR_SCRIPTS) + "\nstartEditor();\n"


def mask_editor(*, elem_id: str = "mask-editor",
                server_functions: Optional[Sequence[Callable]] = None) -> gr.HTML:
    """The editor component (inside a Blocks being built); its value is a ``payload`` dict or None.
    ``server_functions``: callable from the script by their ``__name__`` (``volume_slices``)."""
    return gr.HTML(
        value=None,
        html_template=editor_source("mask_editor.html"),
        css_template=editor_source("mask_editor.css"),
        js_on_load=editor_script(),
        apply_default_css=False,
        elem_id=elem_id,
        container=False,
        padding=False,
        server_functions=list(server_functions) if server_functions else None,
    )
