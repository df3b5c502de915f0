"""A trained run's best model, predicting on new pictures exactly as on the validation set.

A new picture goes through the same steps as an imported one (:func:`imageprep.prepare`:
upright, RGB, long side capped) and then the engine's evaluation path (shorter side resized,
centre crop, the model's own mean/std), so the Try page agrees with the Evaluate page.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tl_core.catalog import DataConfig, create_model, get_spec
from tl_core.data import MAX_SIDE, MAX_SOURCE_PIXELS
from tl_core.device import ComputePlan, plan_compute
from tl_core.errors import DataError, RunError
from tl_core.imageprep import ImageSkip, prepare
from tl_core.inputs import Normalize, cache_side, square_of

ImageInput = Image.Image | Path | str | bytes


@dataclass
class TrainedModel:
    model: nn.Module  # uint8 images in, logits out (normalisation included)
    classes: list[str]
    data_config: DataConfig
    model_key: str
    plan: ComputePlan

    def tensor(self, image: ImageInput, name: str = "image") -> torch.Tensor:
        """One picture as the model's uint8 input crop (CHW)."""
        if isinstance(image, Image.Image):
            buf = io.BytesIO()
            image.save(buf, "PNG")
            image = buf.getvalue()
        src = io.BytesIO(image) if isinstance(image, bytes) else Path(image)
        if isinstance(image, bytes) and not image:
            raise DataError(f"{name}: empty file (0 bytes)")
        try:
            rgb = prepare(src, MAX_SIDE, MAX_SOURCE_PIXELS).image
        except ImageSkip as skip:
            raise DataError(f"{name}: {skip.reason}") from None
        except OSError as exc:
            raise DataError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        cfg = self.data_config
        square = square_of(rgb, cache_side(cfg), cfg.interpolation)
        size = list(cfg.input_size[-2:])
        top = (square.shape[1] - size[0]) // 2
        left = (square.shape[2] - size[1]) // 2
        return square[:, top : top + size[0], left : left + size[1]]

    @torch.inference_mode()
    def logits(
        self, images: Sequence[ImageInput], names: Sequence[str] | None = None
    ) -> np.ndarray:
        """Logits (N, classes) for the pictures, in batches."""
        names = list(names) if names is not None else [_name(i, k) for k, i in enumerate(images)]
        out = []
        batch = self.plan.infer_batch
        for start in range(0, len(images), batch):
            x = torch.stack(
                [
                    self.tensor(img, names[start + k])
                    for k, img in enumerate(images[start : start + batch])
                ]
            ).to(self.plan.device)
            if self.plan.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.plan.autocast():
                out.append(self.model(x).float().cpu())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.cat(out).numpy()

    def predict(
        self,
        images: Sequence[ImageInput],
        temperature: float = 1.0,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Class probabilities (N, classes), softened by ``temperature`` (calibration)."""
        z = torch.from_numpy(self.logits(images, names)).double() / temperature
        return z.softmax(1).numpy()


def _name(image: ImageInput, k: int) -> str:
    return Path(image).name if isinstance(image, Path | str) else f"picture {k + 1}"


def load_trained(run_dir: Path, plan: ComputePlan | None = None) -> TrainedModel:
    """The run's best checkpoint as a ready model; RunError when the run has none."""
    path = Path(run_dir) / "best.pt"
    if not path.exists():
        raise RunError(f"This run has no trained model yet ({path.name} is missing).")
    state = torch.load(path, map_location="cpu", weights_only=False)
    meta = state["meta"]
    plan = plan or plan_compute()
    key = meta["config"]["model"]
    model = create_model(get_spec(key), num_classes=len(meta["classes"]), pretrained=False)
    model.load_state_dict(state["model"])
    raw = meta.get("data_config")
    data_config = (
        DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        if raw
        else DataConfig.of(model)
    )
    full = nn.Sequential(Normalize(data_config), model).to(plan.device).eval()
    if plan.channels_last:
        full = full.to(memory_format=torch.channels_last)
    return TrainedModel(full, list(meta["classes"]), data_config, key, plan)
