"""Model files on shared storage: written once, registered by reference, verified by content hash before use.

Large models are not copied around. With `tracking.artifact_location` set (an absolute folder on a
shared filesystem, or `s3://bucket/prefix`), `champion export` writes the ONNX model, an MLflow `onnx`
flavour folder, once, to `<location>/<name>-onnx/<export run id>/`, and Quality Gate 2 registers
`<name>-onnx` with that folder as the version's source (`create_model_version(source=...)`): the
registry holds the reference, nothing is copied. Without it a model lives in MLflow's artefact store
as its run's LoggedModel, which MLflow registers by reference too (`models:/<model id>` resolves to the
LoggedModel's own folder; MLflow 3 copies nothing when registering outside Databricks).

Either way every version champion registers carries the content hash and the size of its files
(tags: `model_sha256`/`model_size_bytes` on `<name>`, `onnx_sha256`/`onnx_size_bytes` on
`<name>-onnx`), and every consumer (Gate 1's re-evaluation of the champion, export, Gate 2, deploy
triton, serve) finds the files through `model_dir`: where they are when the store is a local or
mounted filesystem (no download, nothing written into the model's folder, so a read-only location
works), else downloaded through the store's own artefact repository. The hash is checked before use;
a file that changed is an IntegrityError (exit 1) naming both hashes.

Models are never loaded through `models:/...` URIs: MLflow then writes a `registered_model_meta` file
into the folder it loads from, and on a local store that is the model's own folder.
"""

from __future__ import annotations

import contextlib
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from champion import files, names
from champion.registry import integrity, tracking
from champion.errors import ChampionError, ConfigError, IntegrityError
from champion.progress import say

# MLflow is imported inside the functions that use it: `champion --help` and `champion serve` import
# this module, and MLflow takes seconds to import.

# Tags of a registered PyTorch version (`<name>`): the tree hash of its MLflow model folder.
SHA256_TAG = names.MODEL_SHA256
SIZE_TAG = names.MODEL_SIZE
SCHEME_TAG = names.MODEL_HASH_SCHEME
# Tags of a registered ONNX version (`<name>-onnx`): the ONNX files' tree hash (`integrity.onnx_sha256`)
# is the existing `onnx_sha256`; their size goes beside it.
ONNX_SHA256_TAG = names.ONNX_SHA256
ONNX_SIZE_TAG = names.ONNX_SIZE
# MLflow writes this into a model folder downloaded through `models:/`: bookkeeping, not the model.
REGISTERED_MODEL_META = "registered_model_meta"
MLMODEL = "MLmodel"
SERVER_SCHEMES = ("http", "https", "databricks")


@contextlib.contextmanager
def _storage_errors(doing: str, where: str) -> Iterator[None]:
    """Any failure to reach or write the shared storage as one message naming the place and the fix."""
    try:
        yield
    except ChampionError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with what was being done and where
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ChampionError(
            f"could not {doing} {where}: {type(exc).__name__}: {text}. Check that tracking.artifact_location is "
            "reachable and writable from here (for s3://: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "and MLFLOW_S3_ENDPOINT_URL for MinIO or another S3-compatible store)"
        ) from exc


def local_path(location: str) -> Path | None:
    """The folder a location names on this machine (a plain path or file:// URI), or None when it is remote."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and location[1:3] in (":\\", ":/")):  # a Windows drive
        return Path(location)
    return None


def check_location(location: str, tracking_uri: str) -> None:
    """Refuse, before anything is written, a local `tracking.artifact_location` that the registry would refuse.

    A tracking server accepts a local path as a version's source only inside the artefact folder of the
    version's run, which an export's shared folder is not: it needs a location it does not resolve on its
    own disk, such as s3://.

    Raises:
        ConfigError: a local folder while MLFLOW_TRACKING_URI is a server.
    """
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme in SERVER_SCHEMES and local_path(location) is not None:
        raise ConfigError(
            f"tracking.artifact_location={location} is a local folder, but the tracking server at {tracking.redact(tracking_uri)} "
            "refuses local model sources outside a run's artefacts: set it to s3://bucket/prefix (the registry then "
            "holds the s3:// reference), or leave it unset to keep models in the server's artefact store"
        )


def export_location(root: str, registered_name: str, run_id: str) -> str:
    """Where an export run writes its model under `root`: one folder per run, never written twice."""
    return f"{root.rstrip('/')}/{registered_name}/{run_id}"


@contextlib.contextmanager
def writing(location: str) -> Iterator[Path]:
    """Yield an empty folder to save a model into; on a clean exit it becomes `location`, whole.

    A local location is filled in a hidden `.tmp-*` folder beside it and renamed into place (the same
    files, the same inodes: nothing is copied). A remote one (s3://) is filled in a local temporary
    folder and uploaded through MLflow's artefact repository for that scheme (MLFLOW_S3_ENDPOINT_URL
    applies), `MLmodel` last, so that a folder holding `MLmodel` is complete; the hash recorded with the
    model, checked before any use, covers whatever an interrupted upload left. Either way an existing
    location is refused: a model is written once.

    Raises:
        ChampionError: the location exists already, or cannot be written.
    """
    path = local_path(location)
    if path is not None:
        if path.exists():
            raise ChampionError(f"{path} exists already: models on tracking.artifact_location are written once, never over")
        with contextlib.ExitStack() as stack:
            with _storage_errors("write the model to", str(path)):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = stack.enter_context(files.staging_dir(path))
            yield tmp
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with _storage_errors("reach", location):
        repo = get_artifact_repository(location)
        taken = repo.list_artifacts("")
    if taken:
        raise ChampionError(f"{location} holds objects already: models on tracking.artifact_location are written once, never over")
    with tempfile.TemporaryDirectory(prefix="champion-upload-") as tmp:
        yield Path(tmp)
        local = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        local.sort(key=lambda p: p.relative_to(tmp).as_posix() == MLMODEL)  # MLmodel last
        with _storage_errors("upload the model to", location):
            for file in local:
                rel = file.parent.relative_to(tmp).as_posix()
                repo.log_artifact(str(file), None if rel == "." else rel)


def resolve(uri: str) -> str:
    """The artefact location a model URI stands for (`models:/...`, `runs:/...`; any other URI is one)."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    with tracking.registry_errors(f"resolve {uri}"):
        if ModelsArtifactRepository.is_models_uri(uri):
            return ModelsArtifactRepository.get_underlying_uri(uri)  # a look-up only: nothing is downloaded
        if RunsArtifactRepository.is_runs_uri(uri):
            return RunsArtifactRepository.get_underlying_uri(uri)
    return uri


def model_dir(uri: str, scratch: Path) -> Path:
    """The local folder holding the MLflow model at `uri`: in place when it is on this machine's filesystem.

    In place means nothing is copied and nothing is written there. A remote model (s3://,
    mlflow-artifacts:/ through a server) is downloaded under `scratch` by the artefact repository of its
    own location, never through `models:/`, which would add `registered_model_meta` (inside
    `shared_downloads`, once for the block instead).

    Raises:
        IntegrityError: the location holds no MLflow model (`MLmodel` missing).
        RegistryError: the registry or the artefact store could not be reached.
    """
    location = resolve(uri)
    path = local_path(location)
    if path is None:
        path = _download(location, scratch)
    if not (path / MLMODEL).is_file():
        raise IntegrityError(
            f"{location} (the files of {uri}) holds no MLflow model ({MLMODEL} missing): it was removed or never "
            "finished writing. Register the model again"
        )
    return path


# Remote model folders downloaded inside `shared_downloads`, by (tracking URI, location). A location holds
# one model, written once, so the stages of one `champion run` (Gate 1, export, Gate 2) fetch each model
# once instead of once per stage, and each still checks the hash before use: through a tracking server
# a download is a listing and a request per file. Outside the block (separate commands, `champion
# serve`) every use downloads afresh, so a store changed since is always read as it is now.
_shared: list[tuple[Path, dict[tuple[str, str], Path]]] = []  # (the block's folder, its copies): one block at most


@contextlib.contextmanager
def shared_downloads() -> Iterator[None]:
    """Within the block, each remote model is downloaded once (into a temporary folder removed after)."""
    if _shared:  # already inside one: the outer block owns the copies
        yield
        return
    with tempfile.TemporaryDirectory(prefix="champion-models-") as root:
        _shared.append((Path(root), {}))
        try:
            yield
        finally:
            _shared.clear()


def _download(location: str, scratch: Path) -> Path:
    """The remote model folder at `location` on this machine: the block's copy inside `shared_downloads`,
    else downloaded under `scratch`."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    key = (mlflow.get_tracking_uri(), location)
    root, copies = _shared[0] if _shared else (None, {})
    if (kept := copies.get(key)) is not None and (kept / MLMODEL).is_file():
        return kept
    target = Path(tempfile.mkdtemp(dir=root)) if root is not None else scratch
    target.mkdir(parents=True, exist_ok=True)
    with tracking.registry_errors(f"download the model at {location}"):
        path = Path(get_artifact_repository(location).download_artifacts("", dst_path=str(target)))
    copies[key] = path
    return path


def version_dir(mv, scratch: Path) -> Path:
    """`model_dir` of a registered model version (its source, as the registry resolves it)."""
    return model_dir(f"models:/{mv.name}/{mv.version}", scratch)


def model_files(folder: Path) -> list[str]:
    """Every file of an MLflow model folder (relative paths), MLflow's `registered_model_meta` left out."""
    found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(rel for rel in found if rel != REGISTERED_MODEL_META)


def content(folder: Path) -> tuple[str, int]:
    """The tree hash (`integrity.SCHEME`) and the total size in bytes of a model folder's files."""
    names = model_files(folder)
    return integrity.tree_sha256(folder, names), sum((folder / n).stat().st_size for n in names)


def content_tags(folder: Path) -> dict[str, str]:
    """The tags a registered PyTorch version carries: its files' tree hash, the scheme, their size."""
    digest, size = content(folder)
    return {SHA256_TAG: digest, SIZE_TAG: str(size), SCHEME_TAG: integrity.SCHEME}


def verify(folder: Path, mv) -> str | None:
    """Check a version's files against the hash it was registered with; the hash, or None when none was.

    Versions registered before champion recorded hashes carry none: they are used, with a note.

    Raises:
        IntegrityError: the files hash to something else (both hashes named), or cannot be read.
    """
    expected = mv.tags.get(SHA256_TAG)
    what = f"{mv.name} v{mv.version}"
    if expected is None:
        say(f"note: {what} was registered without a content hash ({SHA256_TAG}): its files are used unverified")
        return None
    scheme = mv.tags.get(SCHEME_TAG)
    if scheme != integrity.SCHEME:
        raise IntegrityError(f"{what} records a content hash of unknown scheme {scheme!r}: upgrade champion")
    try:
        actual, size = content(folder)
    except OSError as exc:
        raise IntegrityError(f"{what} is unreadable at {folder} ({type(exc).__name__}: {exc}); it cannot be used") from None
    if actual != expected:
        raise IntegrityError(
            f"{what} is not the model that was registered: its files at {folder} hash to {actual} ({size} bytes), "
            f"the registry recorded {expected} ({mv.tags.get(SIZE_TAG, '?')} bytes). The model's storage was changed "
            "after registration; it is not used. Restore the files, or train and promote again"
        )
    return actual


def load_pytorch(mv, scratch: Path) -> tuple[Any, dict[str, Any]]:
    """A registered PyTorch version, verified, and its preprocessing (the `preprocessing` metadata).

    Read in place from a local store (so a read-only one works), downloaded under `scratch` otherwise.

    Raises:
        IntegrityError: the files are not the registered ones.
        RegistryError: the registry or the artefact store could not be reached.
    """
    model, metadata = load_registered(mv, scratch)
    pre = metadata.get("preprocessing")
    if pre is None:
        raise ChampionError(f"{mv.name} v{mv.version} records no preprocessing metadata: it was not logged by `champion train`")
    return model, pre


def load_registered(mv, scratch: Path) -> tuple[Any, dict[str, Any]]:
    """A registered PyTorch version, verified, and its MLflow model metadata (empty when it has none).

    Read in place from a local store (nothing is written into the model's folder, as loading
    `models:/` would), downloaded under `scratch` otherwise.

    Raises:
        IntegrityError: the files are not the registered ones.
        RegistryError: the registry or the artefact store could not be reached.
    """
    import mlflow

    folder = version_dir(mv, scratch)
    verify(folder, mv)
    with tracking.registry_errors(f"load {mv.name} v{mv.version} from {folder}"):
        metadata = mlflow.models.Model.load(str(folder)).metadata or {}
        return mlflow.pytorch.load_model(str(folder), map_location="cpu"), metadata


def register(name: str, model_uri: str, run_id: str, tags: dict[str, str]):
    """Register the model at `model_uri` as a new version of `name`, by reference (nothing is copied).

    A LoggedModel (`models:/<model id>`) goes through `mlflow.register_model`, which links the version to
    it; a location on shared storage becomes the version's source, linked to `run_id`.
    """
    import mlflow

    if model_uri.startswith("models:/"):
        return mlflow.register_model(model_uri, name, tags=tags)
    c = tracking.client()
    try:
        c.create_registered_model(name)
    except Exception as exc:
        if getattr(exc, "error_code", None) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return c.create_model_version(name, model_uri, run_id=run_id, tags=tags)
