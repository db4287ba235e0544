"""Static int8 quantization of an exported ONNX model, calibrated on images the int8 gate never sees.

ONNX Runtime's recipe for CPU inference: `quant_pre_process` (shape inference and graph
optimisation), then `quantize_static` in QDQ format (QuantizeLinear/DequantizeLinear pairs around
each quantized operator, which ONNX Runtime fuses into integer kernels), with uint8 activations and
int8 weights, per-channel weights by default. Activation ranges are read from calibration images
fed through `CalibrationImages`.

Calibration images are the training split of the data the model was trained on (or, with
`export.int8.calibration_source`, every image of another source); the int8 gate evaluates on the
validation split. `calibration_set` makes the two disjoint twice over: by item (training and
validation indices of one cache entry, which `splits.split` draws apart) and by content (a
calibration image byte-identical to a validation image, a duplicate in the data, is dropped), and
says so in the report.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from champion import ingest
from champion.config import DataConfig, Int8Config
from champion.errors import ChampionError, ExportError

# onnxruntime is imported inside the functions that use it (seconds to import): `champion run` imports
# the int8 gate's modules at start-up, and only an int8 export needs it. `quantize` looks
# `quantize_static` up at call time, where tests replace it.

# Calibration batches: large enough to amortise a session run, small enough for large images.
CALIBRATION_BATCH = 32


@dataclass
class CalibrationSet:
    """Calibration images (uint8, N C H W) and the record of where they came from."""

    images: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def _digests(images: np.ndarray) -> list[bytes]:
    """A content digest per image: equal images, equal digests."""
    return [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest() for row in images]


def calibration_set(
    settings: Int8Config, data_cfg: DataConfig, seed: int, data, progress=None
) -> CalibrationSet:  # fmt: skip
    """Pick the calibration images, disjoint from `data`'s validation split by item and by content.

    Args:
        settings: `export.int8` of the training run's config.
        data_cfg: The training run's data config (a `calibration_source` is read with its settings).
        seed: The training seed: the same images are picked every time.
        data: The training run's data set (`ingest.prepare`) holding at least the train and val splits.
        progress: Passed to `ingest.prepare` for a `calibration_source`.

    Raises:
        ChampionError: no calibration image is left (an empty training split, or a source that holds
            only validation images).
            Also when the training and validation splits share an item (never, by construction; checked
            because the gate's verdict rests on it).
    """
    x_val, _ = data.split("val")
    val_digests = set(_digests(x_val))
    if settings.calibration_source is None:
        train_idx, val_idx = data.splits["train"], data.splits["val"]
        shared = np.intersect1d(train_idx, val_idx)
        if shared.size:
            raise ChampionError(
                f"the training and validation splits of data cache entry {data.digest} share {shared.size} items, so no "
                f"calibration image could be shown unseen by the int8 gate; remove the entry (champion data clear {data.digest}) and run again"
            )
        # Positions within the training split (the k-th training item of the cache entry), so the
        # report names the same images whether the entry was read whole or in part.
        positions = np.sort(np.random.default_rng(seed).permutation(len(train_idx))[: settings.calibration_samples])
        candidates = data.images[train_idx[positions]]
        by_index = True
        source = {
            "source": data.source, "data_digest": data.digest, "split": "train",
            "train_size": int(len(train_idx)), "val_size": int(len(val_idx)),
            "positions": positions.tolist(),
        }  # fmt: skip
    else:
        other = ingest.prepare(data_cfg.model_copy(update={"source": settings.calibration_source}), seed, progress)
        positions = np.sort(np.random.default_rng(seed).permutation(len(other.labels))[: settings.calibration_samples])
        candidates = np.asarray(other.images[positions])
        source = {"source": other.source, "data_digest": other.digest, "split": "all", "size": int(len(other.labels)),
                  "positions": positions.tolist()}  # fmt: skip
        by_index = None  # another source: no index is shared with the validation split's, content decides
    keep = np.array([d not in val_digests for d in _digests(candidates)], dtype=bool)
    images = candidates[keep]
    if not len(images):
        where = settings.calibration_source or f"the training split of {data.source}"
        raise ChampionError(
            f"no calibration images: {where} holds {len(candidates)} picked images, none of them unlike every validation "
            "image. Calibrate on images the int8 gate does not evaluate on (export.int8.calibration_source, or more training data)"
        )
    report = {
        **source,
        "samples": int(len(images)),
        "requested": settings.calibration_samples,
        "dropped_identical_to_validation": int((~keep).sum()),
        # by_index: no calibration item is a validation item (checked above); by_content: no
        # calibration image equals a validation image (the equal ones were dropped).
        "disjoint_from_validation": {"by_index": by_index, "by_content": True},
        "method": settings.calibration_method,
        "per_channel": settings.per_channel,
    }
    return CalibrationSet(images, report)


def _calibration_reader(images: np.ndarray):
    """ONNX Runtime's CalibrationDataReader over uint8 images, scaled to [0, 1] as every input is."""
    from onnxruntime.quantization import CalibrationDataReader

    class CalibrationImages(CalibrationDataReader):
        def __init__(self, images: np.ndarray, input_name: str) -> None:
            self.images = images
            self.input_name = input_name
            self.batches: Iterator[int] = iter(range(0, len(images), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            if start is None:
                return None
            batch = self.images[start : start + CALIBRATION_BATCH]
            return {self.input_name: (batch.astype(np.float32) / 255.0)}

        def __len__(self) -> int:
            return len(self.images)

    return CalibrationImages


def quantize(float_onnx: Path, out: Path, images: np.ndarray, settings: Int8Config) -> None:
    """Write the int8 (QDQ) version of `float_onnx` to `out`, calibrated on `images`.

    Raises:
        ExportError: ONNX Runtime could not pre-process or quantize the graph.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    prepared = out.parent / f"{out.stem}.pre.onnx"
    try:
        quant_pre_process(str(float_onnx), str(prepared))
        input_name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        reader = _calibration_reader(images)(images, input_name)
        quantize_static(
            str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
            # uint8 activations and int8 weights: ONNX Runtime's advice for x86 CPUs (with or without VNNI).
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[settings.calibration_method],
        )  # fmt: skip
    except (OSError, MemoryError):
        raise  # the machine (disk, memory), not the graph: the int8 gate reports an error, never a rejection
    except Exception as exc:  # noqa: BLE001 - re-raised as a user-facing error naming the step
        raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400] if str(exc) else ''}") from exc
    finally:
        prepared.unlink(missing_ok=True)
