"""Serving side of gas_leak: frame-stack upload (.npy / .npz) -> source X, Y, depth flow Z and a heat map."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from mlops.inference.arrays import NPY_MAGIC, ZIP_MAGIC, npy_bytes, read_npy, read_npz
from mlops.inference.base import BadInput, Predictor
from mlops.inference.images import heatmap_overlay_png
from mlops.inference.model_files import rebuild
from mlops.tasks.gas_leak.model import MODELS, N_ANSWER, source_map
from mlops.tasks.gas_leak.preprocess import centre_crop, to_channels

NPY_TYPES = ("application/octet-stream", "application/x-npy", "application/npy", "application/zip")
#: the array an .npz must hold (or its only array)
NPZ_KEY = "frames"
#: longest stack accepted; more frames than this is an oversized upload, not a longer video to crop
MAX_FRAMES = 512
#: Largest magnitude accepted in an uploaded stack (infrared intensities are far below; 1e38 overflows the network).
MAX_INTENSITY = 1e6


def explain_batch(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, str]:
    """Answers (N, 3: x, y, z), heat maps (N, H, W) in [0, 1] and which kind of map it is.

    The heat-map head's map is its own source probability; the numeric head has none, so its map is the
    input-gradient saliency of its X + Y output (summed over time and channels, smoothed): where in the
    frames the position answer came from.
    """
    model.eval()
    answers, heats = [], []
    kind = "numeric"
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        with torch.no_grad():
            outputs = model(xb)
        probs = source_map(model, outputs)
        if probs is not None:
            kind, heat = "heatmap", probs.numpy()
        else:
            xg = xb.clone().requires_grad_(True)
            with torch.enable_grad():
                grads = torch.autograd.grad(model(xg)[:, :2].sum(), xg)[0]
            heat = ndimage.gaussian_filter(grads.abs().sum(dim=(1, 2)).numpy(), sigma=(0, 1, 1))
        peak = heat.reshape(len(heat), -1).max(axis=1).clip(min=1e-12)[:, None, None]
        answers.append(outputs[:, :N_ANSWER].numpy())
        heats.append(heat / peak)
    if not answers:
        return np.zeros((0, N_ANSWER), np.float32), np.zeros((0, 1, 1), np.float32), kind
    return np.concatenate(answers), np.concatenate(heats).astype(np.float32), kind


def _expected(frames: int, height: int, width: int) -> str:
    return f"a float array of shape (frames, {height}, {width}) with {frames} <= frames <= {MAX_FRAMES}"


def decode_stack(data: bytes, frames: int, height: int, width: int, max_values: int) -> np.ndarray:
    """An uploaded .npy or .npz (array ``frames`` or its only array) -> (F, H, W) float32 frame stack.

    BadInput: 400 empty, 415 neither format, 413 oversized, 422 unreadable/wrong rank, shape, dtype or
    non-finite values. Never unpickles; sizes are checked from the .npy header and the zip directory before
    anything is allocated or inflated (``mlops.inference.arrays``).
    """
    expected = _expected(frames, height, width)
    if not data:
        raise BadInput(f"empty upload: send {expected} as .npy or .npz", status=400)
    if data.startswith(NPY_MAGIC):
        array = read_npy(data, max_values, f"upload (expected {expected})")
    elif data.startswith(ZIP_MAGIC):
        arrays = read_npz(data, max_values, f"upload (expected {expected})")
        if NPZ_KEY in arrays:
            array = arrays[NPZ_KEY]
        elif len(arrays) == 1:
            array = next(iter(arrays.values()))
        else:
            raise BadInput(f".npz holds {sorted(arrays)}: name the stack {NPZ_KEY!r} ({expected})", status=422)
    else:
        raise BadInput(f"not a .npy or .npz file (checked by its first bytes): send {expected}", status=415)
    if array.ndim != 3:
        raise BadInput(f"array has rank {array.ndim} (shape {array.shape}); expected {expected}", status=422)
    if array.size > max_values or array.shape[0] > MAX_FRAMES:
        raise BadInput(f"array of shape {array.shape} is too large; expected {expected}", status=413)
    if array.shape[1:] != (height, width) or array.shape[0] < frames:
        raise BadInput(f"array has shape {array.shape}; expected {expected}", status=422)
    if array.dtype.kind != "f":
        raise BadInput(f"array has dtype {array.dtype}; expected {expected} (float16/32/64)", status=422)
    with np.errstate(over="ignore"):
        stack = array.astype(np.float32)
    if not np.isfinite(stack).all():  # also values beyond float32's range, which the model computes in
        raise BadInput(
            f"array holds NaN or infinite values (as float32); expected {expected} of finite intensities", 422
        )
    if stack.size and np.abs(stack).max() > MAX_INTENSITY:  # finite, but the network's sums would overflow
        raise BadInput(f"array holds intensities beyond +-{MAX_INTENSITY:g}; expected {expected}", status=422)
    return stack


class GasLeakPredictor(Predictor):
    accepted_content_types = NPY_TYPES
    skips_explanation = True

    def __init__(self, model: torch.nn.Module, spec: dict[str, Any]):
        self.model = model.eval()
        self.frames = int(spec["extra"]["frames"])
        self.height = int(spec["extra"]["height"])
        self.width = int(spec["extra"]["width"])

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """(N, 2, T, H, W) model inputs -> (N, 3): x, y (px), z (pix/s)."""
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        with torch.no_grad():
            return self.model(x)[:, :N_ANSWER].numpy()

    def warmup_input(self) -> np.ndarray:
        return np.zeros((1, 2, self.frames, self.height, self.width), dtype=np.float32)

    def warm_up(self) -> None:
        """The whole upload path once at model load (saliency and heat-map PNG included), so the first request
        pays for no import or first-call setup."""
        super().warm_up()
        self.predict_upload(npy_bytes(np.zeros((self.frames, self.height, self.width), np.float32)), "application/npy")

    def predict_upload(self, data: bytes, content_type: str, explain: bool = True) -> dict[str, Any]:
        """(x, y, z) of one uploaded stack and its heat map; ``explain=False``: one no-grad forward, no map."""
        stack = decode_stack(data, self.frames, self.height, self.width, self.max_pixels)
        crop = centre_crop(stack, self.frames)
        x = torch.as_tensor(to_channels(crop)[None])
        if explain:
            answers, heat, kind = explain_batch(self.model, x)
        else:
            with torch.no_grad():
                outputs = self.model(x)
            answers, heat = outputs[:, :N_ANSWER].numpy(), None
            kind = "numeric" if source_map(self.model, outputs) is None else "heatmap"
        if not np.isfinite(answers).all():  # intensities so large that the network overflows
            raise BadInput("the model's answer is not finite: the intensities are far outside the training data's", 422)
        ax, ay, az = (float(v) for v in answers[0])
        answer = {
            "x": round(ax, 3),
            "y": round(ay, 3),
            "z": round(az, 4),
            "units": {"x": "px", "y": "px", "z": "pix/s (positive: away from the camera)"},
            "frames_used": self.frames,
            "explanation": (
                "probability of the leak source per pixel (the heat-map head's output); its peak is (x, y)"
                if kind == "heatmap"
                else "input-gradient saliency of the numeric head's (x, y): where in the frames the answer came from"
            ),
        }
        if heat is not None:
            last = crop[-1]
            span = float(last.max() - last.min())
            gray = (last - last.min()) / span if span > 0 else np.zeros_like(last)
            answer["heatmap_png"] = base64.b64encode(heatmap_overlay_png(gray, heat[0])).decode()
        return answer


def load(weights_path: Path, spec: dict[str, Any]) -> GasLeakPredictor:
    return GasLeakPredictor(rebuild(MODELS, weights_path, spec), spec)
