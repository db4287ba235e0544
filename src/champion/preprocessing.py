"""How an image becomes the model's input: one type that training, export, validation and serving share.

Training measures it (image size, channels, the training split's per-channel mean and std, class
names) and logs it with the model: the `preprocessing` entry of the MLflow model's metadata and of
the export record. The resize policy and the pixel cap are the training run's `data.resize` and
`data.max_image_pixels` params; serving reads both back, so an image file sent to `champion serve`
is prepared exactly as ingestion prepared the training images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from champion.config import DataConfig

# A run logged before these params existed was trained with the defaults.
DEFAULT_RESIZE: str = DataConfig.model_fields["resize"].default
DEFAULT_MAX_PIXELS: int = DataConfig.model_fields["max_image_pixels"].default
RESIZE_PARAM = "data.resize"
MAX_PIXELS_PARAM = "data.max_image_pixels"


@dataclass(frozen=True)
class Preprocessing:
    """What happens to an image before the model sees it (besides scaling uint8 to [0, 1]).

    The graph itself normalises with `mean`/`std` (the model's first layer), so a client only
    decodes, resizes and scales.
    """

    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    resize: str = DEFAULT_RESIZE  # data.resize: shorter_side (resize, then centre-crop) or stretch
    max_pixels: int = DEFAULT_MAX_PIXELS  # data.max_image_pixels: larger images are refused

    # What the model's metadata records; resize and max_pixels are the training run's params.
    RECORDED: ClassVar[tuple[str, ...]] = ("image_size", "channels", "mean", "std", "classes")

    def to_dict(self) -> dict[str, Any]:
        """The `preprocessing` metadata logged with the model (and copied into the export record)."""
        return {key: getattr(self, key) for key in self.RECORDED}

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any], params: Mapping[str, str] | None = None) -> Preprocessing:
        """Read back what `to_dict` recorded, with the training run's params for the resize policy."""
        params = params or {}
        h, w = recorded["image_size"]
        return cls(
            (int(h), int(w)),
            int(recorded["channels"]),
            tuple(float(m) for m in recorded.get("mean", ())),
            tuple(float(s) for s in recorded.get("std", ())),
            tuple(str(c) for c in recorded["classes"]),
            params.get(RESIZE_PARAM, DEFAULT_RESIZE),
            int(params.get(MAX_PIXELS_PARAM) or DEFAULT_MAX_PIXELS),
        )
