"""Grad-CAM: which parts of a picture pushed the model towards a class.

Hand-written with one forward hook on a per-family target layer (:func:`target_layer`, from
:mod:`tl_core.models.families`), whose output becomes a leaf so that gradients are recorded
from there on only. Not captum: captum (2 MB) requires matplotlib and its stack (about 56 MB
more) for plotting the app does not use. Its LayerGradCam also averages every dimension after
the first two as if it were space, so a ViT's (tokens, channels) output would still need the
reshaping written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from tl_core.errors import RunError
from tl_core.models.families import family_of
from tl_core.training.inference import ImageInput, TrainedModel

__all__ = [
    "TURBO",
    "Heatmap",
    "heatmap",
    "overlay",
    "target_layer",
]


def _turbo(x: np.ndarray) -> np.ndarray:
    """Google's polynomial fit of the "turbo" colour map: 0..1 -> RGB in 0..1."""
    coeffs = np.array(
        [
            [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
            [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
            [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
        ]
    )
    powers = x[:, None] ** np.arange(6)[None, :]
    return np.clip(powers @ coeffs.T, 0.0, 1.0)


TURBO = (_turbo(np.linspace(0.0, 1.0, 256)) * 255).round().astype(np.uint8)  # (256, 3)


@dataclass(frozen=True)
class Heatmap:
    values: np.ndarray  # (H, W) float32 in 0..1 at the model's input resolution
    target_class: int  # the class the map explains
    predicted_class: int
    probability: float  # the model's probability for target_class
    crop: np.ndarray  # (H, W, 3) uint8: the picture exactly as the model saw it


def target_layer(net: nn.Module) -> tuple[nn.Module, bool]:
    """The layer whose output Grad-CAM weighs, and whether that output is ViT tokens."""
    family = family_of(net)
    if family is not None:
        return family.gradcam_layer(net), family.tokens
    raise RunError(f"Heat maps are not available for {type(net).__name__} models.")


def heatmap(trained: TrainedModel, image: ImageInput, target_class: int | None = None) -> Heatmap:
    """Grad-CAM of ``target_class`` (default: the predicted class) for one picture.

    Runs in the model's inference precision, so its prediction is the one ``predict`` makes.
    """
    net = trained.net
    layer, tokens = target_layer(net)
    crop = trained.tensor(image)
    kept: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        # Gradients are needed from here on only: a leaf cuts the graph, and the layers
        # before it ran without recording one.
        torch.set_grad_enabled(True)  # undone when the no_grad block below exits
        leaf = output.detach().requires_grad_(True)
        kept.append(leaf)
        return leaf

    handle = layer.register_forward_hook(keep)
    try:
        x = trained.plan.batch(crop[None])
        with torch.inference_mode(False), torch.no_grad(), trained.plan.autocast():
            logits = trained.model(x).float()
            probs = logits.detach().softmax(1)[0]
            predicted = int(probs.argmax())
            target = predicted if target_class is None else int(target_class)
            if not 0 <= target < len(probs):
                raise ValueError(f"target_class must be between 0 and {len(probs) - 1}")
            (grad,) = torch.autograd.grad(logits[0, target], kept[0])
    finally:
        handle.remove()
    act = kept[0].detach()
    if tokens:  # (1, prefix + h*w, C) -> (1, C, h, w) on the patch grid
        patch = net.patch_embed.patch_size
        grid = (crop.shape[1] // patch[0], crop.shape[2] // patch[1])
        act, grad = (
            t[:, -grid[0] * grid[1] :].transpose(1, 2).unflatten(2, grid) for t in (act, grad)
        )
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.float()).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=tuple(crop.shape[1:]), mode="bilinear")[0, 0]
    top = float(cam.max())
    values = (cam / top if top > 0 else torch.zeros_like(cam)).clamp(0, 1).cpu().numpy()
    return Heatmap(
        values.astype(np.float32),
        target,
        predicted,
        float(probs[target]),
        crop.permute(1, 2, 0).cpu().numpy(),
    )


def overlay(heat: Heatmap, alpha: float = 0.45) -> Image.Image:
    """The picture as the model saw it, with the heat map blended over it in turbo colours."""
    colour = TURBO[(heat.values * 255).round().astype(np.intp)].astype(np.float32)
    blended = heat.crop.astype(np.float32) * (1 - alpha) + colour * alpha
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
