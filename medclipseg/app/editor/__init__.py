"""The mask editor: a browser component (``mask_editor.js``/``.html``/``.css``, shipped as
package data, no build step) and the Python side of its protocol (``payload``)."""
from medclipseg.app.editor.component import mask_editor
from medclipseg.app.editor.payload import (
    EditorEdit,
    EditorError,
    PlaneRequest,
    PlaneSliceEdit,
    SliceEdit,
    SliceRequest,
    VolumeEdit,
    case_payload,
    closed_value,
    plane_block,
    plane_slice_payload,
    read_edit,
    read_plane_request,
    read_slice_request,
    read_volume_edit,
    read_window,
    saved_value,
    scaled_strip,
    slice_payload,
    volume_block,
)

__all__ = ["EditorEdit", "EditorError", "PlaneRequest", "PlaneSliceEdit", "SliceEdit", "SliceRequest", "VolumeEdit",
           "case_payload", "closed_value", "mask_editor", "plane_block", "plane_slice_payload", "read_edit",
           "read_plane_request", "read_slice_request", "read_volume_edit", "read_window", "saved_value",
           "scaled_strip", "slice_payload", "volume_block"]
