"""Pictures and numbers for people: mask overlays, the entropy heat map, image-level numbers.

Everything here works on RGB uint8 images (display order) and on the maps of a
``Prediction``; nothing runs the model, so the app re-renders from cached maps when a slider
moves. Entropy is shown on a fixed scale, 0 to ln 2 nats (the largest binary entropy), so
that colours mean the same thing on every image.
"""

from __future__ import annotations

import io
from typing import Optional

import cv2
import numpy as np

from medclipseg.inference.uncertainty import MAX_BINARY_ENTROPY, image_scores
from medclipseg.io.png import decode_png

MASK_COLOUR = (255, 196, 0)          # amber fill + contour of the predicted/corrected mask
UNCERTAIN_COLOUR = (0, 200, 255)     # cyan outline of the area above the uncertainty threshold
HEATMAP_COLOURMAP = "magma"
DISPLAY_MAX_SIDE = 1536              # larger images are shown (and edited) downscaled


def display_size(height: int, width: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple:
    """(height, width) used on screen: the image's own size, or scaled so its long side fits."""
    scale = min(1.0, max_side / float(max(height, width)))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def to_display(image_rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    height, width = image_rgb.shape[:2]
    target = display_size(height, width, max_side)
    if target == (height, width):
        return image_rgb
    return cv2.resize(image_rgb, (target[1], target[0]), interpolation=cv2.INTER_AREA)


def enlarged(image_rgb: np.ndarray, min_side: int = 256) -> np.ndarray:
    """A small image repeated pixel by pixel (a whole factor, nearest neighbour) until its long
    side reaches ``min_side``, so a 64 x 64 slice is shown as its pixels, not as a thumbnail."""
    height, width = image_rgb.shape[:2]
    factor = int(min_side // max(height, width))
    if factor <= 1:
        return image_rgb
    return np.repeat(np.repeat(image_rgb, factor, axis=0), factor, axis=1)


def _resize_mask(mask: np.ndarray, shape: tuple) -> np.ndarray:
    if mask.shape[:2] == tuple(shape):
        return mask.astype(bool)
    resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def _contour_thickness(shape: tuple) -> int:
    return max(1, int(round(max(shape[:2]) / 300)))


def _draw_outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple, thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.drawContours(canvas, contours, -1, colour, thickness, lineType=cv2.LINE_AA)


def overlay_mask(
    image_rgb: np.ndarray,
    mask: np.ndarray,
    *,
    opacity: float = 0.4,
    colour: tuple = MASK_COLOUR,
    uncertain: Optional[np.ndarray] = None,
    max_side: int = DISPLAY_MAX_SIDE,
) -> np.ndarray:
    """The image with the mask filled at ``opacity`` and outlined; ``uncertain`` outlined in cyan.

    Returned at display size (see ``display_size``); masks are resized with nearest neighbour.
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError("opacity must lie between 0 and 1")
    base = to_display(np.ascontiguousarray(image_rgb), max_side)
    shape = base.shape[:2]
    shown = _resize_mask(mask, shape)
    canvas = base.astype(np.float32)
    fill = np.asarray(colour, np.float32)
    canvas[shown] = (1.0 - opacity) * canvas[shown] + opacity * fill
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    thickness = _contour_thickness(shape)
    _draw_outline(canvas, shown, colour, thickness)
    if uncertain is not None:
        _draw_outline(canvas, _resize_mask(uncertain, shape), UNCERTAIN_COLOUR, thickness)
    return canvas


def uncertain_region(entropy: np.ndarray, threshold_nats: float) -> np.ndarray:
    """Pixels whose predictive entropy is at least ``threshold_nats``."""
    return entropy >= float(threshold_nats)


def entropy_heatmap(
    entropy: np.ndarray,
    *,
    image_rgb: Optional[np.ndarray] = None,
    threshold_nats: float = 0.0,
    max_side: int = 768,
    dpi: int = 100,
) -> np.ndarray:
    """The entropy map in nats on a fixed 0..ln 2 scale, with a colour bar, as an RGB image.

    Pixels below ``threshold_nats`` are left transparent over a dimmed copy of the image (or
    black without one), so the threshold slider shows which areas count as uncertain.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    height, width = entropy.shape
    shown_h, shown_w = display_size(height, width, max_side)
    values = entropy if (shown_h, shown_w) == (height, width) else cv2.resize(
        entropy.astype(np.float32), (shown_w, shown_h), interpolation=cv2.INTER_AREA)
    norm = Normalize(vmin=0.0, vmax=MAX_BINARY_ENTROPY)
    colours = colormaps[HEATMAP_COLOURMAP](norm(values))[..., :3]
    if image_rgb is not None:
        backdrop = to_display(image_rgb, max_side)
        if backdrop.shape[:2] != (shown_h, shown_w):
            backdrop = cv2.resize(backdrop, (shown_w, shown_h), interpolation=cv2.INTER_AREA)
        backdrop = backdrop.astype(np.float32) / 255.0 * 0.35
    else:
        backdrop = np.zeros((shown_h, shown_w, 3), np.float32)
    visible = values >= float(threshold_nats)
    picture = np.where(visible[..., None], colours, backdrop)

    inches_w = shown_w / dpi + 1.3
    inches_h = shown_h / dpi + 0.5
    figure = Figure(figsize=(inches_w, inches_h), dpi=dpi)
    axes = figure.add_axes((0.02, 0.05, shown_w / dpi / inches_w, shown_h / dpi / inches_h))
    axes.imshow(picture, interpolation="nearest")
    axes.set_axis_off()
    bar_axes = figure.add_axes((0.04 + shown_w / dpi / inches_w, 0.05, 0.12 / inches_w * 1.3,
                                shown_h / dpi / inches_h))
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=HEATMAP_COLOURMAP)
    bar = figure.colorbar(mappable, cax=bar_axes)
    bar.set_label("predictive entropy (nats)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if threshold_nats > 0:
        bar.ax.axhline(float(threshold_nats), color=np.asarray(UNCERTAIN_COLOUR) / 255.0, linewidth=2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    decoded = decode_png(buffer.getvalue())
    return np.ascontiguousarray(decoded[..., ::-1])


def image_numbers(prediction, *, uncertainty_threshold: float, mask: Optional[np.ndarray] = None,
                  pixel_spacing: Optional[tuple] = None) -> dict:
    """Image-level numbers for the current mask and uncertainty threshold.

    ``mask`` defaults to the prediction's own (a corrected mask may be passed instead). The
    entropy means are the prediction's ``scores`` for its own mask, and ``image_scores`` of the
    corrected one otherwise. Areas are also given in mm^2 when the pixel spacing (row, column,
    in mm) is known.
    """
    own = mask is None or np.array_equal(np.asarray(mask, bool), prediction.mask)
    shown = prediction.mask if mask is None else np.asarray(mask, bool)
    scores = prediction.scores if own else image_scores(
        prediction.entropy, prediction.mutual_information, shown, int(prediction.scores.get("boundary_band_px", 3)))
    uncertain = uncertain_region(prediction.entropy, uncertainty_threshold)
    total = float(shown.size)
    numbers = {
        "area_px": int(shown.sum()),
        "area_fraction": float(shown.sum() / total),
        "mean_entropy_foreground": float(scores["mean_entropy_foreground"]),
        "mean_entropy_boundary": float(scores["mean_entropy_boundary"]),
        "mean_entropy_image": float(scores["mean_entropy"]),
        "mean_mutual_information": float(scores["mean_mutual_information"]),
        "uncertain_px": int(uncertain.sum()),
        "uncertain_fraction": float(uncertain.sum() / total),
        "uncertainty_threshold_nats": float(uncertainty_threshold),
        "mask_threshold": float(prediction.threshold),
        "num_samples": int(prediction.num_samples),
    }
    if pixel_spacing:
        pixel_area = float(pixel_spacing[0]) * float(pixel_spacing[1])
        numbers["area_mm2"] = numbers["area_px"] * pixel_area
        numbers["uncertain_mm2"] = numbers["uncertain_px"] * pixel_area
    return numbers


def numbers_markdown(numbers: dict, *, model_id: str = "", seconds: Optional[float] = None) -> str:
    """A compact Markdown table of ``image_numbers``."""
    def area(px_key, fraction, mm_key):
        text = f"{numbers[px_key]:,} px ({100 * fraction:.1f} %)"
        if mm_key in numbers:
            text += f", {numbers[mm_key]:.1f} mm²"
        return text

    rows = [
        ("Mask area", area("area_px", numbers["area_fraction"], "area_mm2")),
        ("Mean entropy, foreground", f"{numbers['mean_entropy_foreground']:.3f} nats"),
        ("Mean entropy, boundary", f"{numbers['mean_entropy_boundary']:.3f} nats"),
        ("Mean entropy, whole image", f"{numbers['mean_entropy_image']:.3f} nats"),
        ("Mutual information (mean)", f"{numbers['mean_mutual_information']:.4f} nats"),
        (f"Uncertain area (≥ {numbers['uncertainty_threshold_nats']:.2f} nats)",
         area("uncertain_px", numbers["uncertain_fraction"], "uncertain_mm2")),
        ("Mask threshold / samples", f"{numbers['mask_threshold']:.2f} / {numbers['num_samples']}"),
    ]
    if model_id:
        rows.append(("Model", f"`{model_id}`" + (f" ({seconds:.2f} s)" if seconds is not None else "")))
    lines = ["| Measure | Value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)
