"""Checkpoints: the folder each run owns, how a checkpoint file is written, and the record of which
data a checkpoint trained on.

Every checkpoint champion writes carries, under the key `champion`, the digest of its training
data (which pins the images, the split fractions and the seed), so an export-only run can prove
that the validation split it is scored on was never trained on.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from champion import files, ingest
from champion.config import Config
from champion.errors import ChampionError, ConfigError

# Where every checkpoint champion writes records the data it trained on (see `provenance`).
PROVENANCE_KEY = "champion"
PROVENANCE_FORMAT = 1


def checkpoint_dir(cfg: Config, run_id: str) -> Path:
    """Where a run's checkpoints live: `<training.checkpoint.dirpath>/<run_id>/` (best-*.ckpt, last.ckpt)."""
    return Path(cfg.training.checkpoint.dirpath).expanduser().resolve() / run_id


class ReplacingCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (a Trainer plugin), writing each file beside its final name and
    renaming it into place (`files.replacing`).

    Lightning's own writes a temporary file in the system's temp folder and moves it, which across
    file systems is a copy: a full disk left a truncated checkpoint under its final name, where
    `--resume` and export-only read it. Here a full disk is a DiskFullError naming the folder, and
    no file appears under its final name unless it is whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:  # not champion's: Lightning's own answer (a TypeError)
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        # In memory first, as Lightning does: torch's file writer loses the errno of a full disk.
        torch.save(checkpoint, buffer)
        path = Path(path)
        with files.replacing(path, what=f"checkpoint {path.name}") as tmp:
            tmp.write_bytes(buffer.getbuffer())


def provenance(cfg: Config, data: ingest.Dataset, run_id: str | None) -> dict[str, Any]:
    """What a checkpoint records about its training data: the digest pins the images and the split.

    The data digest covers the source's content, the image settings, the split fractions and the
    seed, so equal digests mean the same validation images, unseen by training.
    """
    return {
        "format": PROVENANCE_FORMAT,
        "data_digest": data.digest,
        "data_source": data.source,
        "validation_split": cfg.data.validation_split,
        "test_split": cfg.data.test_split,
        "seed": cfg.training.seed,
        "run_id": run_id,
    }


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint, read without unpickling code (tensors and plain values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise ChampionError(f"checkpoint {path} could not be read as a Lightning checkpoint: {type(exc).__name__}: {exc}") from exc


def check_unseen_validation(path: Path, saved: dict[str, Any], data: ingest.Dataset) -> None:
    """Export-only evaluates on the validation split: refuse unless the checkpoint provably never trained on it."""
    record = saved.get(PROVENANCE_KEY)
    if not isinstance(record, dict) or "data_digest" not in record:
        raise ChampionError(
            f"checkpoint {path} does not record which data it trained on (it was not written by champion train, "
            "or by a version before checkpoints carried it), so its validation accuracy could include images it "
            "trained on. Use a checkpoint written by this version of champion train, or train a new run."
        )
    if record["data_digest"] != data.digest:
        raise ChampionError(
            f"checkpoint {path} trained on data with digest {record['data_digest']} "
            f"(source {record.get('data_source')}, validation_split {record.get('validation_split')}, "
            f"seed {record.get('seed')}), but the data prepared now has digest {data.digest}: its validation "
            "split may hold images the checkpoint trained on. Export-only needs the same data, split and seed "
            "the checkpoint trained with (the run's config.yaml), or train a new run on this data."
        )


# Names champion's ModelCheckpoint gives its files: a folder holding only these is a run's own
# checkpoint folder written before folders carried an ownership marker.
_CHECKPOINT_NAME = re.compile(r"(last|best-epoch=\d+)(-v\d+)?\.ckpt")


def claim_checkpoint_dir(cfg: Config, run_id: str) -> Path:
    """Make `<dirpath>/<run_id>/` this run's own folder, or refuse one holding anything else.

    ModelCheckpoint overwrites and prunes files by name in its folder, so it is never pointed at a
    folder that holds files this run did not write.
    """
    folder = checkpoint_dir(cfg, run_id)

    def written_by_this_run(path: Path) -> bool:
        return all(_CHECKPOINT_NAME.fullmatch(p.name) for p in path.iterdir())

    try:
        return files.claim(folder, f"checkpoints of run {run_id}", adopt=written_by_this_run)
    except ConfigError as exc:  # the run has started by now: an error of the run, not of usage
        raise ChampionError(str(exc)) from exc
