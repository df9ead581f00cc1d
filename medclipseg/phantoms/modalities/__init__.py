"""One module per modality, each with ``layout(rng, height, width) -> anatomy``,
``appearance(rng, target, anatomy)`` (fills ``target.details``) and
``render(rng, anatomy, targets) -> uint8 BGR image``."""
from __future__ import annotations

from medclipseg.phantoms.modalities import brain_mri, breast_ultrasound, chest_xray, colonoscopy, dermoscopy

MODALITY_MODULES = {
    "breast_ultrasound": breast_ultrasound,
    "brain_mri": brain_mri,
    "dermoscopy": dermoscopy,
    "colonoscopy": colonoscopy,
    "chest_xray": chest_xray,
}
