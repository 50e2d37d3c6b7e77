"""Serving side of ttubule: an EM slice or small stack (TIFF / .npy) -> per-class masks and T-tubule instances."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlops.inference.arrays import NPY_MAGIC, npy_bytes, read_npy
from mlops.inference.base import BadInput, Predictor, admit
from mlops.inference.model_files import rebuild
from mlops.inference.tiff import TIFF_MAGIC, check_tiff
from mlops.tasks.ttubule.instances import InstanceSettings, instance_stats, split_instances
from mlops.tasks.ttubule.layout import N_CLASSES, TTUBULE
from mlops.tasks.ttubule.layout import SCORED as CLASS_NAMES
from mlops.tasks.ttubule.model import MODELS, predict_probabilities, probabilities, sliding_window
from mlops.tasks.ttubule.normalize import normalize_stack
from mlops.tasks.ttubule.preprocess import peak_settings

STACK_TYPES = ("image/tiff", "application/octet-stream", "application/x-npy")
#: smallest slice side accepted (the normalisation needs a histogram, the U-Net some context)
MIN_SIDE = 16
# Overlay colours and opacities per class: myofibrils faint (they are most of the image), T-tubules strong.
COLOURS = {1: ((230, 40, 40), 0.45), 2: ((40, 200, 60), 0.22), 3: ((255, 230, 0), 0.85)}
EXPECTED = "a uint8 slice (H, W) or stack (Z, H, W) as multi-page TIFF or .npy"


def class_overlay(gray: np.ndarray, masks: dict[int, np.ndarray]) -> np.ndarray:
    """RGB uint8 image: an 8-bit slice with each class mask blended in its colour (T-tubules drawn last)."""
    rgb = np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=2)
    for cls in sorted(masks):
        colour, alpha = COLOURS[cls]
        m = masks[cls]
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, dtype=np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _check(shape: tuple[int, ...], dtype: np.dtype, max_voxels: int) -> None:
    """Rank, size and dtype checks from the header alone (before any pixel is decoded)."""
    if len(shape) not in (2, 3):
        raise BadInput(f"array has rank {len(shape)} (shape {tuple(shape)}); expected {EXPECTED}", status=422)
    if len(shape) == 3 and shape[0] == 0:
        raise BadInput(f"stack of shape {tuple(shape)} holds no slice; expected {EXPECTED}", status=422)
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise BadInput(
            f"stack of shape {tuple(shape)} has {voxels} voxels; the limit is {max_voxels} voxels", status=413
        )
    if min(shape[-2:]) < MIN_SIDE:
        raise BadInput(f"slices of {shape[-2]}x{shape[-1]} pixels are too small (at least {MIN_SIDE})", 422)
    if np.dtype(dtype) != np.uint8:
        raise BadInput(f"array has dtype {np.dtype(dtype)}; expected {EXPECTED} (8-bit gray levels)", status=422)


def decode_upload(data: bytes, content_type: str, max_voxels: int) -> np.ndarray:
    """Uploaded TIFF or .npy bytes -> (Z, H, W) uint8 stack.

    BadInput: 400 empty; 415 neither format, or bytes that contradict the declared type; 413 more voxels
    than ``max_voxels`` (checked from the header before decoding); 422 unreadable, wrong rank, dtype or size.
    Never unpickles.
    """
    if not data:
        raise BadInput(f"empty upload: send {EXPECTED}", status=400)
    kind = "tiff" if data.startswith(TIFF_MAGIC) else "npy" if data.startswith(NPY_MAGIC) else None
    if kind is None:
        raise BadInput(f"neither a TIFF nor a .npy file (checked by its first bytes): send {EXPECTED}", 415)
    if (content_type == "image/tiff" and kind != "tiff") or (content_type == "application/x-npy" and kind != "npy"):
        raise BadInput(f"declared {content_type} but the bytes are a {kind} file", status=415)
    try:
        if kind == "tiff":
            import tifffile

            check_tiff(data, max_voxels, "upload")  # pages, declared sizes and strip inflation, before decoding
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                series = tif.series[0]
                # tifffile writes a 3- or 4-slice gray stack as one planar RGB(A) page (axes SYX): its planes are
                # slices. Interleaved samples (YXS) are a colour picture.
                if "S" in series.axes and series.axes != "SYX":
                    raise BadInput(f"colour TIFF (axes {series.axes}); expected {EXPECTED}", status=422)
                _check(series.shape, series.dtype, max_voxels)
                array = series.asarray()
        else:
            array = read_npy(data, max_voxels, "upload")  # header checked against the bytes present first
    except BadInput:
        raise
    except Exception as exc:  # any decoder failure is the client's file, not a server error
        raise BadInput(f"unreadable {kind} file ({type(exc).__name__}: {exc}); send {EXPECTED}", 422) from exc
    array = np.asarray(array)
    _check(array.shape, array.dtype, max_voxels)
    return array[None] if array.ndim == 2 else array


class TTubulePredictor(Predictor):
    accepted_content_types = STACK_TYPES
    skips_explanation = True
    explanation_fields = ("overlay_png", "overlay_slice")

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        extra = spec["extra"]
        self.model = model.eval()
        self.label_mode = model.label_mode
        self.P1, self.P2 = float(extra["P1"]), float(extra["P2"])
        self.peaks = peak_settings(extra)
        self.tile = int(extra["infer_tile"])
        self.max_upload_voxels = int(extra["max_upload_voxels"])
        self.voxel_size_nm = tuple(float(v) for v in extra["voxel_size_nm"])
        # The study's thresholds (0-255, mean of the per-slice best ones on the validation slices) and the
        # evaluation's instance post-processing, stored by the task's calibrate(); a spec without them (an
        # older model) falls back to argmax / 0.5 and the default post-processing.
        names = {name: cls for cls, name in CLASS_NAMES.items()}
        self.thresholds = {names[n]: int(t) for n, t in (extra.get("thresholds") or {}).items()}
        post = dict(extra.get("instances") or {})
        if TTUBULE in self.thresholds:
            post["mask_threshold"] = self.thresholds[TTUBULE] / 255.0
        self.instances = InstanceSettings(**post)

    @property
    def voxel_limit(self) -> int:
        """The smaller of the model's configured upload limit and the service's decoded-size limit."""
        return min(self.max_upload_voxels, int(self.max_pixels))

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """(N, 1, H, W) normalised inputs in [0, 1] -> (N, n_classes + 1, H, W) class and boundary probabilities."""
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        return probabilities(sliding_window(self.model, x, self.tile)).numpy()

    def warmup_input(self) -> np.ndarray:
        return np.full((1, 1, 64, 64), 0.5, dtype=np.float32)

    def masks(self, probs: np.ndarray) -> dict[int, np.ndarray]:
        """Per-class boolean masks (Z, H, W).

        With stored thresholds, each class as evaluated: ``round(255 * probability) > threshold`` (one class
        against the rest, so masks may overlap); without, argmax of the softmax (multi) or sigmoid > 0.5 (single).
        """
        channels = {cls: cls for cls in CLASS_NAMES} if self.label_mode == "multi" else {TTUBULE: 0}
        if self.thresholds:
            return {
                cls: np.rint(probs[:, channel] * 255) > self.thresholds[cls]
                for cls, channel in channels.items()
                if cls in self.thresholds
            }
        if self.label_mode == "multi":
            winner = probs[:, :N_CLASSES].argmax(axis=1)
            return {cls: winner == cls for cls in CLASS_NAMES}
        return {TTUBULE: probs[:, 0] > 0.5}

    def warm_up(self) -> None:
        """The whole upload path once at model load (instances and overlay PNG included), so the first request
        pays for no import or first-call setup."""
        super().warm_up()
        self.predict_upload(npy_bytes(np.full((64, 64), 120, np.uint8)), "application/x-npy")

    def predict_upload(self, data: bytes, content_type: str, explain: bool = True) -> dict[str, Any]:
        """Masks and T-tubule instances of one uploaded stack, with one slice's overlay (``explain=False``: none)."""
        stack = decode_upload(data, content_type, self.voxel_limit)
        admit(stack.size, "voxels")
        normalised, skipped = normalize_stack(stack, self.P1, self.P2, self.peaks)
        probs = predict_probabilities(self.model, normalised, self.tile)
        masks = self.masks(probs)
        tube_channel = TTUBULE if self.label_mode == "multi" else 0
        tubes = split_instances(probs[:, tube_channel], probs[:, -1], self.instances)
        stats = instance_stats(tubes, self.voxel_size_nm)
        answer = {
            "label_mode": self.label_mode,
            "shape": list(stack.shape),
            "classes": {
                CLASS_NAMES[cls]: {
                    "voxel_fraction": round(float(m.mean()), 6),
                    "masks_png": [_png(plane.astype(np.uint8) * 255) for plane in m],
                }
                for cls, m in masks.items()
            },
            "instances": {
                "ttubule": {
                    "count": stats.count,
                    "volume_um3": round(stats.volume_um3, 6),
                    "volume_fraction": round(stats.volume_fraction, 6),
                }
            },
            "voxel_size_nm": list(self.voxel_size_nm),
            "normalisation": {"P1": self.P1, "P2": self.P2, "slices_without_two_peaks": skipped},
            "thresholds": {CLASS_NAMES[cls]: t for cls, t in self.thresholds.items()},
            "explanation": (
                "masks: one PNG per slice and class (255 = class: probability above the class's threshold, the mean "
                "of the per-slice best thresholds on the validation slices); instances: 3-D marker watershed of the "
                "T-tubule probability minus the boundary probability; volumes use the training data's voxel size"
            ),
        }
        if explain:  # the slice with the most T-tubule, every class drawn over it
            show = int(np.argmax(masks[TTUBULE].reshape(len(stack), -1).sum(axis=1)))
            answer["overlay_slice"] = show
            answer["overlay_png"] = _png(class_overlay(normalised[show], {c: m[show] for c, m in masks.items()}))
        return answer


def load(weights_path: Path, spec: dict[str, Any]) -> TTubulePredictor:
    """Rebuild the U-Net from its spec and a state_dict read with ``weights_only=True``."""
    return TTubulePredictor(rebuild(MODELS, weights_path, spec), spec)
