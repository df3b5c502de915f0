"""Grad-CAM: which parts of a picture pushed the model towards a class.

timm splits every catalog model into ``forward_features`` (the last feature map, or the
tokens of a ViT) and ``forward_head``, so the gradient of a class score with respect to that
feature map needs no hooks and no per-family layer names: about thirty lines here, where a
library (captum, pytorch-grad-cam) would add its own dependencies and still need the
per-family target layers and ViT token reshaping spelt out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tl_core.inference import ImageInput, TrainedModel

# A perceptually ordered blue -> cyan -> green -> yellow -> red ramp (anchors of "turbo").
_ANCHORS = np.array(
    [[48, 18, 59], [40, 130, 245], [26, 228, 182], [164, 252, 60], [250, 186, 57], [122, 4, 3]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Heatmap:
    values: np.ndarray  # (H, W) in 0..1 at the model's input resolution
    target_class: int
    probability: float  # the model's probability for that class
    crop: np.ndarray  # (H, W, 3) uint8: the picture exactly as the model saw it


def _as_map(feats: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """(1, C, h, w) from a CNN feature map or a ViT's (1, tokens, C) sequence."""
    if feats.ndim == 4:
        return feats
    tokens = feats[:, prefix_tokens:]
    side = math.isqrt(tokens.shape[1])
    return tokens[:, : side * side].transpose(1, 2).reshape(1, -1, side, side)


def heatmap(trained: TrainedModel, image: ImageInput, target_class: int | None = None) -> Heatmap:
    """Grad-CAM of ``target_class`` (default: the predicted class) for one picture."""
    normalize, net = trained.model[0], trained.model[1]
    crop = trained.tensor(image)
    x = normalize(crop[None].to(trained.plan.device))
    with torch.no_grad():
        feats = net.forward_features(x).float()
    feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net.forward_head(feats)
        probs = logits.softmax(1)[0]
        target = int(probs.argmax()) if target_class is None else int(target_class)
        logits[0, target].backward()
    prefix = int(getattr(net, "num_prefix_tokens", 0) or 0)
    act = _as_map(feats.detach(), prefix)
    grad = _as_map(feats.grad, prefix)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(
        cam, size=tuple(crop.shape[-2:]), mode="bilinear", align_corners=False
    )[0, 0]
    top = float(cam.max())
    values = (cam / top).cpu().numpy() if top > 0 else np.zeros(tuple(crop.shape[-2:]))
    return Heatmap(
        values.astype(np.float32),
        target,
        float(probs[target].detach()),
        crop.permute(1, 2, 0).cpu().numpy(),
    )


def colorize(values: np.ndarray) -> np.ndarray:
    """0..1 values as RGB uint8 through the blue-to-red ramp."""
    pos = np.clip(values, 0, 1) * (len(_ANCHORS) - 1)
    low = np.floor(pos).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (pos - low)[..., None]
    rgb = _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay(heat: Heatmap, alpha: float = 0.45) -> Image.Image:
    """The model's view of the picture with the heat map blended over it."""
    base = heat.crop.astype(np.float64)
    colour = colorize(heat.values).astype(np.float64)
    weight = alpha * heat.values[..., None] ** 0.5  # cold areas stay close to the picture
    return Image.fromarray((base * (1 - weight) + colour * weight).round().astype(np.uint8))
