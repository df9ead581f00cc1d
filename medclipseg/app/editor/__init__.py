"""The mask editor: a browser component (``mask_editor.js``/``.html``/``.css``, shipped as
package data, no build step) and the Python side of its protocol (``payload``)."""
from medclipseg.app.editor.component import mask_editor
from medclipseg.app.editor.payload import (
    EditorEdit,
    EditorError,
    SliceEdit,
    SliceRequest,
    VolumeEdit,
    case_payload,
    closed_value,
    read_edit,
    read_slice_request,
    read_volume_edit,
    read_window,
    saved_value,
    slice_payload,
    volume_block,
)

__all__ = ["EditorEdit", "EditorError", "SliceEdit", "SliceRequest", "VolumeEdit", "case_payload", "closed_value",
           "mask_editor", "read_edit", "read_slice_request", "read_volume_edit", "read_window", "saved_value",
           "slice_payload", "volume_block"]
