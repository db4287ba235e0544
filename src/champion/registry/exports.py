"""The export record (`metadata.json`) and the one check that an exported ONNX model is the one recorded.

`champion export` writes an `ExportRecord` beside the ONNX model it logs; the int8 gate writes one
for the int8 model it derives. Quality Gate 2, the int8 gate, `deploy triton` and `serve` read it
back and `verify` the files they were handed against its content hash before they trust them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from champion import names
from champion.errors import ChampionError, IntegrityError
from champion.registry import integrity, storage, tracking

# Present only on some records: a float export's build details, an int8 export's lineage. Omitted when unset.
_OPTIONAL = ("parameter_bytes", "torch_version", "onnx_version", "float_export_run_id", "float_onnx_sha256", "quantization")


@dataclass(kw_only=True)
class ExportRecord:
    """What an export run recorded about the model it exported (the `metadata.json` artefact)."""

    parent_run_id: str | None = None  # the training run
    parent_model_name: str
    parent_model_version: str
    parent_model_uri: str | None = None
    export_reason: str = "champion"  # or "rollback": exported while another version held @champion
    current_champion_version: str | None = None
    data_digest: str | None = None  # the data the model trained on
    preprocessing: dict[str, Any]  # champion.preprocessing.Preprocessing.to_dict()
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    opset: int | None = None
    formats: list[str] = field(default_factory=list)
    onnx_sha256: str | None = None  # integrity.exported_hash of the ONNX files
    onnx_hash_scheme: str | None = None  # None: records from before the scheme was named
    onnx_files: list[str] | None = None
    onnx_size_bytes: int | None = None
    model_location: str | None = None
    external_data: bool = False
    parameter_bytes: int | None = None
    torch_version: str | None = None
    onnx_version: str | None = None
    float_export_run_id: str | None = None  # int8 records: the float export they were quantized from
    float_onnx_sha256: str | None = None
    quantization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this release does not know, kept as read

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportRecord:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        record = cls(**{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known})
        record.parent_model_version = str(record.parent_model_version)
        return record

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in _OPTIONAL:
            if out[key] is None:
                del out[key]
        return {**out, **self.extra}

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.preprocessing.get("classes", [])]

    def int8(self, *, float_export_run_id: str, float_onnx_sha256: str, onnx_sha256: str, onnx_files: list[str], quantization: dict) -> ExportRecord:
        """The record of an int8 model quantized from this export: the same lineage, its own files."""
        return dataclasses.replace(
            self, parameter_bytes=None, torch_version=None, formats=["onnx_int8"], float_export_run_id=float_export_run_id,
            float_onnx_sha256=float_onnx_sha256, onnx_sha256=onnx_sha256, onnx_hash_scheme=integrity.SCHEME,
            onnx_files=onnx_files, external_data=False, quantization=quantization,
        )  # fmt: skip

    def log(self) -> None:
        """Log as the active run's `metadata.json`."""
        import mlflow  # lazy: the registry's readers (serve) never log

        mlflow.log_dict(self.to_dict(), names.EXPORT_RECORD)


def read(export_run_id: str) -> ExportRecord:
    """The record an export (or int8) run logged."""
    return ExportRecord.from_dict(json.loads(tracking.read_artifact(export_run_id, names.EXPORT_RECORD)))


def resolve_version(name: str, alias: str | None = None, version: str | None = None):
    """The model version named by alias or number, with a clear error when there is none."""
    return tracking.model_version(name, alias, version, "run `champion promote --run-id RUN_ID` first, or check --model-name/--version")


def require_gate1_pass(mv) -> None:
    """Refuse a model version that holds no Quality Gate 1 pass record (registered by hand, or rejected).

    Raises:
        ChampionError: the version's tag `gate1.result` is not `passed`.
    """
    if mv.tags.get(names.GATE1_RESULT) != "passed":
        raise ChampionError(
            f"{mv.name} v{mv.version} holds no Quality Gate 1 pass record (tag gate1.result=passed): it was not "
            "registered by `champion promote`, so it cannot be exported or deployed. Judge its run with "
            f"`champion promote --run-id {tracking.version_run_id(mv)}` and export the version that registers"
        )


class Remedy(NamedTuple):
    """What the caller's user should do when `verify` fails (the end of each message)."""

    incomplete: str  # files missing or unreadable
    changed: str  # files that hash to something else


def verify(onnx_file: Path, record: ExportRecord, what: str, remedy: Remedy, *, validated: bool = False, tagged: str | None = None) -> tuple[str, list[str]]:
    """The hash of the ONNX files at `onnx_file` and the files it covers, once shown to be `record`'s.

    Args:
        onnx_file: The graph file; external data files beside it are covered too.
        record: The export record that holds the expected hash.
        what: How messages name the model (`digits-cnn-onnx v3`, `the ONNX model of export run …`).
        remedy: The end of each message.
        validated: The model has passed Quality Gate 2 (the messages say "exported and validated").
        tagged: The registered version's `onnx_sha256` tag, which must agree with the record.

    Raises:
        IntegrityError: the files are missing, unreadable, or not the ones exported.
    """
    expected = record.onnx_sha256
    if validated and (not expected or (tagged and tagged != expected)):
        raise IntegrityError(f"{what}: the version's onnx_sha256 tag ({tagged}) and metadata.json ({expected}) disagree; {remedy.incomplete}")
    try:
        actual, files = integrity.exported_hash(onnx_file, record.onnx_hash_scheme)
    except OSError as exc:
        raise IntegrityError(f"{what} is incomplete in the artefact store ({type(exc).__name__}: {exc}); {remedy.incomplete}") from None
    if actual != expected:
        claim, recorded = ("the model that was exported and validated", "the export") if validated else ("the one exported", "metadata.json")
        raise IntegrityError(f"{what} is not {claim}: its files ({', '.join(files)}) hash to {actual}, {recorded} recorded {expected}. {remedy.changed}")
    return actual, files


def onnx_graph(mv, dest: Path) -> tuple[Path, ExportRecord]:
    """A registered ONNX version's graph file and its export record.

    The graph is read where it is when the version's source is on this machine's filesystem (a shared
    `tracking.artifact_location`, or a local store: nothing copied, nothing written there, so a read-only
    location works), and downloaded under `dest` otherwise (`champion.registry.storage`).
    """
    import mlflow  # lazy: start-up time of the commands that never load a model

    local = storage.version_dir(mv, dest)
    try:
        flavors = mlflow.models.Model.load(str(local)).flavors
    except Exception:  # noqa: BLE001 - no MLmodel at all: said plainly below
        flavors = {}
    if "onnx" not in flavors:
        have = ", ".join(sorted(flavors)) or "no MLflow model"
        raise ChampionError(f"{mv.name} v{mv.version} holds no ONNX model ({have}): deploy a version registered by `champion validate`")
    graph = local / flavors["onnx"]["data"]
    if graph.name != names.ONNX_FILE or not graph.is_file():
        raise ChampionError(f"{mv.name} v{mv.version}: expected its ONNX graph as {names.ONNX_FILE}, found {flavors['onnx']['data']!r}")
    record = read(mv.tags[names.RUN_ID])
    if not record.classes:
        raise ChampionError(f"export run {mv.tags[names.RUN_ID]} records no class names (metadata.json preprocessing.classes)")
    return graph, record


def deployable(registered: str, alias: str, version: str | None):
    """The version of `<name>-onnx` (or `<name>-onnx-int8`) to deploy or serve: it must hold its gate's pass record."""
    int8 = registered.endswith(names.INT8_SUFFIX)
    gate_tag = names.INT8_GATE_RESULT if int8 else names.GATE2_RESULT
    how, registered_by, gate = (
        ("when an int8 model passes the int8 gate (`champion run` with export.formats holding onnx_int8, or `champion quantize`)",
         "champion quantize", "int8 gate")
        if int8 else
        ("when an export passes Quality Gate 2 (`champion run`, or `champion export` then `champion validate`)",
         "champion validate", "Quality Gate 2")
    )  # fmt: skip
    mv = tracking.model_version(registered, alias, version, f"it is registered {how}; check --model-name, --alias and --version")
    if mv.tags.get(gate_tag) != "passed" or not mv.tags.get(names.RUN_ID):
        raise ChampionError(
            f"{registered} v{mv.version} holds no {gate} pass record (tags {gate_tag}=passed, run_id): it "
            f"was not registered by `{registered_by}`, so it is not deployed"
        )
    return mv


_DEPLOY_REMEDY = Remedy("nothing was written", "The artefact store was changed; nothing was written. Export and validate again")


def verified_graph(mv, dest: Path) -> tuple[Path, ExportRecord, str, list[str]]:
    """A deployable version's graph file, its export record, and the hash and names of its files, once verified."""
    graph, record = onnx_graph(mv, dest)
    digest, files = verify(graph, record, f"{mv.name} v{mv.version}", _DEPLOY_REMEDY, validated=True, tagged=mv.tags.get(names.ONNX_SHA256))
    return graph, record, digest, files
