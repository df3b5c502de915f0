"""A trained run's best model, predicting on new pictures exactly as on the validation set.

A new picture goes through the same steps as an imported one (:func:`imageprep.prepare`:
upright, RGB, long side capped) and then the engine's evaluation path (:func:`inputs.square_of`
and the eval transform of :func:`inputs.make_transforms`, then the model's own mean/std), so
the Try page agrees with the Evaluate page.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from tl_core.data.dataset import MAX_SIDE, MAX_SOURCE_PIXELS
from tl_core.data.imageprep import ImageSkip, decode_workers, prepare, to_rgb
from tl_core.data.standalone_predict import cap_side
from tl_core.errors import DataError, RunError
from tl_core.models.catalog import DataConfig, create_model, get_spec
from tl_core.models.device import ComputePlan, plan_compute
from tl_core.training import checkpoint, familiarity
from tl_core.training.familiar_pass import NearestDistance, WithFeatures
from tl_core.training.familiarity import Familiarity
from tl_core.training.inputs import Normalize, Transform, cache_side, make_transforms, square_of

ImageInput = Image.Image | Path | str | bytes


def upright_rgb(image: ImageInput, name: str = "picture") -> Image.Image:
    """Decode a picture as an import would: upright, RGB, long side capped; DataError if not."""
    if isinstance(image, Image.Image):  # already decoded by the caller: prepare's later steps
        rgb = to_rgb(ImageOps.exif_transpose(image))
        rgb = rgb.copy() if rgb is image else rgb
        cap_side(rgb)
        return rgb
    if isinstance(image, bytes):
        if not image:
            raise DataError(f"{name}: empty file (0 bytes)")
        src: Path | io.BytesIO = io.BytesIO(image)
    else:
        src = Path(image)
        if not src.is_file():
            raise DataError(f"{name}: file not found ({src})")
        if src.stat().st_size == 0:
            raise DataError(f"{name}: empty file (0 bytes)")
    try:
        return prepare(src, MAX_SIDE, MAX_SOURCE_PIXELS).image
    except ImageSkip as skip:
        raise DataError(f"{name}: {skip.reason}") from None


def _name(image: ImageInput, k: int) -> str:
    return Path(image).name if isinstance(image, Path | str) else f"picture {k + 1}"


@dataclass(frozen=True)
class Guesses:
    """Many pictures' answers: class probabilities and how unfamiliar each picture looks."""

    probs: np.ndarray  # (N, classes)
    unfamiliarity: np.ndarray | None  # (N,) distance to the nearest training picture; None:
    # the run has no unfamiliar check (trained before it existed, or without validation)

    def unfamiliar(self, threshold: float | None) -> np.ndarray:
        """Which pictures are over ``threshold`` (none without a check or a threshold)."""
        if self.unfamiliarity is None or threshold is None:
            return np.zeros(len(self.probs), dtype=bool)
        return self.unfamiliarity > threshold


@dataclass
class TrainedModel:
    """A run's best model in eval mode, with what it needs to read a picture."""

    model: nn.Sequential  # Normalize, then the timm model: uint8 images in, logits out
    classes: list[str]
    data_config: DataConfig
    model_key: str  # the catalog key
    plan: ComputePlan
    familiarity: Familiarity | None = None  # the run's unfamiliar check, when it has one
    _eval_tf: Transform = field(init=False, repr=False)
    _with_features: WithFeatures = field(init=False, repr=False)
    _distance: NearestDistance | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._eval_tf = make_transforms(self.data_config, "none")[1]
        self._with_features = WithFeatures(self.model[0], self.model[-1]).eval()
        fam = self.familiarity
        self._distance = None if fam is None else NearestDistance.of(fam).to(self.plan.device)

    @property
    def net(self) -> nn.Module:
        """The timm model itself (without the normalisation in front)."""
        return self.model[-1]

    def tensor(self, image: ImageInput, name: str = "picture") -> torch.Tensor:
        """One picture as the uint8 crop (3, H, W) the model sees, as in validation."""
        cfg = self.data_config
        square = square_of(upright_rgb(image, name), cache_side(cfg), cfg.interpolation)
        return self._eval_tf(square)

    def _tensors(self, images: Sequence[ImageInput], names: Sequence[str]) -> list[torch.Tensor]:
        """:meth:`tensor` of each picture, decoded on every core at once (in order; the first
        unreadable one raises its DataError, as one at a time would)."""
        if len(images) < 2:
            return [self.tensor(image, name) for image, name in zip(images, names, strict=True)]
        with ThreadPoolExecutor(min(decode_workers(), len(images))) as pool:
            return list(pool.map(self.tensor, images, names))

    def _scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits, pooled features and unfamiliarity (float32, on the CPU) of a batch of
        crops (N, 3, H, W) made by :meth:`tensor`: the forward pass alone."""
        x = self.plan.batch(x.pin_memory() if self.plan.pin_memory else x)
        with self.plan.autocast():
            z, f = self._with_features(x)
        f = f.float()
        far = None if self._distance is None else self._distance(f).cpu()
        return z.float().cpu(), f.cpu(), far

    @torch.inference_mode()
    def embeddings(
        self,
        pictures: Sequence[ImageInput],
        batch: int = 64,
        progress: Callable[[int, int], None] | None = None,
        logits: bool = False,
    ) -> np.ndarray:
        """The trained model's pooled features (the head's input) of ``pictures``, (n, d)
        float32, as in validation, or with ``logits`` its class scores (n, classes): what
        the training changed even when the whole backbone stayed frozen.
        ``progress(done, total)`` after each batch."""
        out: list[torch.Tensor] = []
        names = [_name(p, k) for k, p in enumerate(pictures)]
        for start in range(0, len(pictures), batch):
            chunk = list(pictures[start : start + batch])
            crops = torch.stack(self._tensors(chunk, names[start : start + batch]))
            out.append(self._scores(crops)[0 if logits else 1])
            if progress is not None:
                progress(start + len(chunk), len(pictures))
        if not out:
            return np.zeros((0, 0), np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    @torch.inference_mode()
    def guess_crops(self, crops: torch.Tensor, temperature: float = 1.0) -> Guesses:
        """:meth:`guess` of pictures already made into crops by :meth:`tensor` (stacked,
        (N, 3, H, W)): the forward pass alone, so a caller can decode pictures beforehand,
        outside whatever lets one forward pass run at a time."""
        if not temperature > 0:
            raise ValueError("temperature must be positive")
        z, _, far = self._scores(crops)
        probs = (z / temperature).softmax(1).numpy()
        return Guesses(probs, None if far is None else far.numpy())

    @torch.inference_mode()
    def outputs(
        self, images: Sequence[ImageInput], names: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Logits (N, classes), pooled features (N, D) and unfamiliarity (N,; None without a
        check) as float32, from one pass, decoded and scored one batch at a time."""
        if names is None:
            names = [_name(image, k) for k, image in enumerate(images)]
        logits, features, distances = [], [], []
        batch = self.plan.infer_batch
        for start in range(0, len(images), batch):
            chunk = range(start, min(start + batch, len(images)))
            x = torch.stack(self._tensors([images[k] for k in chunk], [names[k] for k in chunk]))
            z, f, d = self._scores(x)
            logits.append(z)
            features.append(f)
            if d is not None:
                distances.append(d)
        if not logits:
            empty = np.zeros(0, dtype=np.float32)
            return (
                np.zeros((0, len(self.classes)), dtype=np.float32),
                np.zeros((0, 0), dtype=np.float32),
                None if self._distance is None else empty,
            )
        far = torch.cat(distances).numpy() if distances else None
        return torch.cat(logits).numpy(), torch.cat(features).numpy(), far

    def logits(
        self, images: Sequence[ImageInput], names: Sequence[str] | None = None
    ) -> np.ndarray:
        """Logits (N, classes) as float32, decoded and scored one batch at a time."""
        return self.outputs(images, names)[0]

    def guess(
        self,
        images: Sequence[ImageInput],
        temperature: float = 1.0,
        names: Sequence[str] | None = None,
    ) -> Guesses:
        """Probabilities (softened by ``temperature``) and unfamiliarity, from one pass."""
        if not temperature > 0:
            raise ValueError("temperature must be positive")
        z, _, far = self.outputs(images, names)
        return Guesses((torch.from_numpy(z) / temperature).softmax(1).numpy(), far)

    def predict(
        self,
        images: Sequence[ImageInput],
        temperature: float = 1.0,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Class probabilities (N, classes), softened by ``temperature`` (calibration).

        ``names`` are used in error messages (default: file names, or "picture k").
        """
        if not temperature > 0:
            raise ValueError("temperature must be positive")
        z = torch.from_numpy(self.logits(images, names)) / temperature
        return z.softmax(1).numpy()


def _data_config(raw: dict) -> DataConfig:
    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def load_trained(
    run_dir: Path, device: str | None = None, plan: ComputePlan | None = None
) -> TrainedModel:
    """The run's best.pt as a ready model on ``device`` (default: the best one here).

    Raises RunError when the run has no readable checkpoint.
    """
    path = Path(run_dir) / checkpoint.BEST
    if not path.is_file():
        raise RunError(f"This run has no trained model yet ({path} is missing).")
    state = checkpoint.load(path)  # weights only: a crafted file runs no code
    meta = state["meta"]
    key = meta["config"]["model"]
    classes = [str(c) for c in meta["classes"]]
    plan = plan or plan_compute(device or "auto").exact()  # as the run's final scores
    model = create_model(get_spec(key), num_classes=len(classes), pretrained=False)
    checkpoint.load_weights(model, state["model"], path)
    raw = meta.get("data_config")
    try:
        data_config = _data_config(raw) if raw else DataConfig.of(model)
    except (TypeError, ValueError):
        raise checkpoint.unreadable(path) from None
    full = plan.prepare_model(nn.Sequential(Normalize(data_config), model)).eval()
    fam = familiarity.load(Path(run_dir))
    if fam is not None and len(fam.bank_labels) and fam.bank_labels.max() >= len(classes):
        fam = None  # not this model's
    return TrainedModel(full, classes, data_config, key, plan, fam)
