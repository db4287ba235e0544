"""Deploy to NVIDIA Triton: write a model repository entry for a validated `<name>-onnx` version.

For `champion deploy triton --model-name digits-cnn --repository DIR` (the alias `deploy` of
`digits-cnn-onnx` being version 3), DIR gets:

    DIR/digits-cnn/                  the folder Triton serves as model `digits-cnn`, champion's own
        .champion                    ownership marker (kind `triton-model`)
        .champion-triton.json        the versions this command wrote: the only ones `--keep` prunes
        config.pbtxt                 derived from the ONNX graph; `version_policy` names version 3 only
        labels.txt                   class i on line i (the export's preprocessing classes)
        3/model.onnx                 one-file model, hashed against the export record
        4/model.onnx/model.onnx      a model with external data: Triton's directory layout
        4/model.onnx/model.onnx.data

Triton serves the base name (without `-onnx`): the name users train and promote under, and the one
`champion serve` will use too. The int8 model the int8 gate registers, `<name>-onnx-int8`
(`champion.stages.quantize`), is deployed by that name and served as `<name>-int8`, so that it can sit in
one repository beside the float model. DIR may be `s3://bucket/prefix` (fsspec/s3fs; endpoint from
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`), which Triton reads directly.

Nothing half-written is ever visible to Triton. Locally a version is copied into a hidden
`.tmp-*` folder (Triton loads only numeric folders) and renamed into place; on S3, which has no
rename, the version's objects go first, then the record of what was written, then `labels.txt`,
and `config.pbtxt` last, so the config never names a version that is not complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from champion import files, names
from champion.errors import ChampionError, ConfigError, IntegrityError
from champion.deploy.triton_config import KINDS, LABELS, graph_tensors, labels_text, model_config
from champion.progress import say
from champion.registry import exports, integrity, tracking

# onnx and fsspec (s3fs) are imported inside the functions that use them: `champion --help` imports this
# module (through champion.cli.deploy), and s3fs is needed only for an s3:// repository.

KIND = "triton-model"  # the kind of champion's marker on DIR/<name>
MANIFEST = ".champion-triton.json"
CONFIG = "config.pbtxt"
MODEL_FILE = names.ONNX_FILE  # Triton's default_model_filename for the onnxruntime backend: a file, or a folder


@dataclass
class TritonDeployment:
    """What `deploy` did."""

    model_dir: str  # DIR/<name>, a path or an s3:// URI
    model_name: str  # the name Triton serves
    version: str  # the version of `<name>-onnx` that config.pbtxt names
    written: bool  # False when the version folder was already there (and verified)
    pruned: list[str] = field(default_factory=list)


def deploy(
    model_name: str,
    repository: str | Path,
    alias: str = tracking.DEPLOY_ALIAS,
    version: str | None = None,
    kind: str = "cpu",
    instances: int = 1,
    keep: int | None = None,
    quiet: bool = False,
) -> TritonDeployment:
    """Write `<name>-onnx` at `version` (or `@alias`) into the Triton model repository `repository`.

    Args:
        model_name: Registered model, with or without the `-onnx` suffix; Triton serves it without.
        repository: A local folder or `s3://bucket/prefix`.
        alias: Alias of `<name>-onnx` to deploy when no version is given.
        version: Version number of `<name>-onnx` to deploy (a lower one than before is a rollback).
        kind: `cpu` or `gpu`: where Triton runs the instances.
        instances: How many instances Triton runs.
        keep: Keep this many version folders of those this command wrote (the deployed one always
            among them, then the highest others) and delete the rest; None keeps everything.
        quiet: No progress on stderr.

    Raises:
        ConfigError: a bad option, a repository path that is a file, or a `DIR/<name>` that holds
            things champion did not write (checked before any work).
        ChampionError: unknown model, version or alias; a version that is not a validated ONNX model;
            a missing S3 bucket or unreachable endpoint.
        IntegrityError: the ONNX files (from the registry, or a version already in the repository)
            do not hash to what was recorded at export; nothing is written.
    """
    import onnx  # noqa: F401 - fail here, before any work, if the ONNX tooling is missing

    base, registry_name = names.served_names(model_name)
    _check_options(base, version, kind, instances, keep)
    target = _target(str(repository), base)
    target.check()  # a foreign folder or a missing bucket costs nothing
    tracking.setup_tracking(quiet)
    mv = exports.deployable(registry_name, alias, version)
    v = str(mv.version)
    with tempfile.TemporaryDirectory(prefix="champion-deploy-") as tmp:
        graph, record, digest, model_files = exports.verified_graph(mv, Path(tmp) / "registry")
        inputs, outputs = graph_tensors(graph)
        classes = record.classes
        config = model_config(
            base, v, inputs, outputs, len(classes), kind, instances,
            note=f"{mv.name} v{v}, export run {mv.tags.get('run_id')}, onnx sha256 {digest}",
        )  # fmt: skip
        labels = labels_text(classes)

        target.claim()
        manifest = target.read_manifest()
        existing = target.existing(v, Path(tmp) / "existing", recorded=v in manifest["versions"])
        if existing is not None:
            try:
                found, _ = integrity.exported_hash(existing, record.onnx_hash_scheme)
            except OSError as exc:
                found = f"unreadable ({type(exc).__name__}: {exc})"
            if found != digest:
                raise IntegrityError(
                    f"{target.where}/{v} is already there but its files hash to {found}, not to {digest} recorded at "
                    f"export: it was changed after champion wrote it. Nothing was changed; remove {target.where}/{v} "
                    "and deploy again"
                )
            say(f"{target.where}/{v} is already there and matches the export: not rewritten", quiet)
        else:
            say(f"writing {mv.name} v{v} to {target.where}/{v}", quiet)
            target.publish_version(v, graph.parent, model_files)
            manifest["versions"][v] = {"onnx_sha256": digest, "export_run_id": mv.tags.get("run_id"), "files": model_files}
            target.write_manifest(manifest)
        # Labels before the config: the config is what makes Triton (re)load, and it must find them whole.
        target.write_text(LABELS, labels)
        target.write_text(CONFIG, config)
        pruned = _prune(target, manifest, v, keep, quiet) if keep is not None else []
    return TritonDeployment(target.where, base, v, existing is None, pruned)


def _check_options(base: str, version: str | None, kind: str, instances: int, keep: int | None) -> None:
    if not base or not re.fullmatch(r"[A-Za-z0-9_.\-]+", base) or base in {".", ".."}:
        raise ConfigError(f"--model-name {base!r}: a registered model name of letters, digits, '.', '_' and '-' (it names a folder)")
    if version is not None and not re.fullmatch(r"[1-9][0-9]*", version):
        raise ConfigError(f"--version {version!r}: a model version number (1, 2, ...)")
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if instances < 1:
        raise ConfigError(f"--instances {instances}: at least 1")
    if keep is not None and keep < 1:
        raise ConfigError(f"--keep {keep}: at least 1 (the deployed version is always kept)")


def _layout(model_files: list[str]) -> list[tuple[str, str]]:
    """(file relative to the graph's folder, path under the version folder): one file, or Triton's folder layout."""
    if model_files == [MODEL_FILE]:
        return [(MODEL_FILE, MODEL_FILE)]
    return [(rel, f"{MODEL_FILE}/{rel}") for rel in model_files]


def _prune(target: _Target, manifest: dict[str, Any], deployed: str, keep: int, quiet: bool) -> list[str]:
    """Delete the version folders this command wrote beyond `keep` (the deployed one and the highest others)."""
    others = sorted((v for v in manifest["versions"] if v != deployed), key=int, reverse=True)
    doomed = others[keep - 1 :]
    for v in doomed:
        say(f"pruning {target.where}/{v} (--keep {keep})", quiet)
        target.remove_version(v)
        del manifest["versions"][v]
        target.write_manifest(manifest)
    return doomed


# --- where the repository lives --------------------------------------------------------------------


class _Target(Protocol):
    where: str

    def check(self) -> None: ...
    def claim(self) -> None: ...
    def read_manifest(self) -> dict[str, Any]: ...
    def write_manifest(self, manifest: dict[str, Any]) -> None: ...
    def existing(self, version: str, scratch: Path, recorded: bool) -> Path | None: ...
    def publish_version(self, version: str, src: Path, model_files: list[str]) -> None: ...
    def write_text(self, name: str, text: str) -> None: ...
    def remove_version(self, version: str) -> None: ...


def _target(repository: str, name: str) -> _Target:
    return _S3(repository, name) if repository.startswith("s3://") else _Local(Path(repository), name)


def _manifest(raw: str | None, where: str) -> dict[str, Any]:
    if raw is None:
        return {"format": 1, "versions": {}}
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("versions"), dict):
        raise ChampionError(f"{where}/{MANIFEST} is not champion's record of written versions: remove it by hand")
    return body


def _copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


class _Local:
    """A model repository on a local (or mounted) filesystem."""

    def __init__(self, root: Path, name: str):
        self.root = root
        self.dir = root / name
        self.where = str(self.dir)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--repository {self.root} is a file: give a folder (Triton's model repository) or s3://bucket/prefix")
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"{self.dir} is a file, not a model folder: remove it or choose another --repository")
        if files.is_owned(self.dir) and not files.is_owned(self.dir, KIND):
            raise ConfigError(f"{self.dir} is another kind of champion folder, not a Triton model folder: choose another --repository")
        occupied = self.dir.is_dir() and any(not p.name.startswith(files.TMP_PREFIX) and p.name != files.MARKER for p in self.dir.iterdir())
        if occupied and not files.is_owned(self.dir, KIND):
            raise ConfigError(
                f"{self.dir} already holds files that champion did not write: champion writes only into a new or empty "
                "model folder (and never deletes what it did not write). Choose another --repository, or move that folder"
            )

    def claim(self) -> None:
        files.claim(self.dir, KIND)

    def read_manifest(self) -> dict[str, Any]:
        path = self.dir / MANIFEST
        return _manifest(path.read_text() if path.is_file() else None, self.where)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        files.atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))

    def existing(self, version: str, scratch: Path, recorded: bool) -> Path | None:
        folder = self.dir / version
        if not folder.exists():
            return None  # a folder appears only whole (renamed in), so one that exists is complete
        return folder / MODEL_FILE / MODEL_FILE if (folder / MODEL_FILE).is_dir() else folder / MODEL_FILE

    def publish_version(self, version: str, src: Path, model_files: list[str]) -> None:
        with files.staging_dir(self.dir / version, what=f"model version {version}") as tmp:
            for rel, dest in _layout(model_files):
                (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
                _copy_file(src / rel, tmp / dest)

    def write_text(self, name: str, text: str) -> None:
        path = self.dir / name
        if not (path.is_file() and path.read_text() == text):  # a re-run leaves the files as they were
            files.atomic_write(path, text)

    def remove_version(self, version: str) -> None:
        files.remove_owned(self.dir / version, self.dir)


class _S3:
    """A model repository under `s3://bucket/prefix`, written object by object, config last."""

    def __init__(self, uri: str, name: str):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ConfigError(f"--repository {uri!r} names no bucket: write it as s3://bucket/prefix")
        self.bucket = bucket
        self.endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.base = "/".join(p for p in (bucket, prefix.strip("/"), name) if p)
        self.where = f"s3://{self.base}"
        self.fs = _s3_filesystem(self.endpoint)

    def _keys(self) -> set[str]:
        """Every object under DIR/<name>/, relative to it."""
        where = self.endpoint or "the default AWS S3 endpoint"
        self.fs.invalidate_cache()  # list the bucket as it is now
        try:
            found = self.fs.find(self.base, withdirs=False)
        except FileNotFoundError:
            raise ChampionError(
                f"S3 bucket {self.bucket!r} does not exist at {where}: create it, or check --repository and "
                "AWS_ENDPOINT_URL; nothing was written"
            ) from None
        except Exception as exc:  # noqa: BLE001 - re-raised with what was being done and where
            raise ChampionError(
                f"S3 failed while listing {self.where} at {where}: {type(exc).__name__}: {exc}. Check AWS_ENDPOINT_URL "
                "and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            ) from exc
        return {k[len(self.base) + 1 :] for k in found if k.startswith(self.base + "/")}

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Any S3 failure as one message that says what was being done, where."""
        try:
            yield
        except ChampionError:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised with what was being done and where
            raise ChampionError(
                f"S3 failed while {doing} ({self.endpoint or 'the default AWS S3 endpoint'}): {type(exc).__name__}: {exc}. "
                "Check AWS_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE); "
                f"config.pbtxt is written last, so Triton still serves what it served before"
            ) from exc

    def _read(self, rel: str) -> str | None:
        with self._errors(f"reading {self.where}/{rel}"):
            try:
                return self.fs.cat_file(f"{self.base}/{rel}").decode()
            except FileNotFoundError:
                return None

    def check(self) -> None:
        keys = self._keys()
        try:
            marker = json.loads(self._read(files.MARKER) or "null") if files.MARKER in keys else None
        except ValueError:
            marker = None
        kind = marker.get("kind") if isinstance(marker, dict) else None
        if keys and kind != KIND:
            raise ConfigError(
                f"{self.where} already holds objects that champion did not write as a Triton model folder: champion writes "
                "only into a new or empty prefix (and never deletes what it did not write). Choose another --repository"
            )

    def claim(self) -> None:
        if self._read(files.MARKER) is None:
            marker = {"what": f"champion {KIND}; champion may delete what it wrote here", "kind": KIND, "format": files.MARKER_VERSION}
            with self._errors(f"writing {self.where}/{files.MARKER}"):
                self.fs.pipe_file(f"{self.base}/{files.MARKER}", json.dumps(marker).encode())

    def read_manifest(self) -> dict[str, Any]:
        return _manifest(self._read(MANIFEST), self.where)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        with self._errors(f"writing {self.where}/{MANIFEST}"):
            self.fs.pipe_file(f"{self.base}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())

    def existing(self, version: str, scratch: Path, recorded: bool) -> Path | None:
        keys = sorted(k for k in self._keys() if k.startswith(f"{version}/"))
        if not keys:
            return None
        with self._errors(f"reading {self.where}/{version}"):
            if not recorded:
                # Objects of a version the record does not name: an upload that was cut off. Triton does not
                # load it (the config never named it); it is uploaded again whole, over the same keys. Nothing
                # is deleted: what else is there was not recorded as champion's.
                return None
            for key in keys:
                local = scratch / key
                local.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{self.base}/{key}", str(local))
        folder = scratch / version
        return folder / MODEL_FILE / MODEL_FILE if (folder / MODEL_FILE).is_dir() else folder / MODEL_FILE

    def publish_version(self, version: str, src: Path, model_files: list[str]) -> None:
        with self._errors(f"uploading {self.where}/{version}"):
            for rel, dest in _layout(model_files):
                self.fs.put_file(str(src / rel), f"{self.base}/{version}/{dest}")

    def write_text(self, name: str, text: str) -> None:
        if self._read(name) != text:
            with self._errors(f"writing {self.where}/{name}"):
                self.fs.pipe_file(f"{self.base}/{name}", text.encode())

    def remove_version(self, version: str) -> None:
        with self._errors(f"deleting {self.where}/{version}"):
            self.fs.rm(f"{self.base}/{version}", recursive=True)


def _s3_filesystem(endpoint: str | None) -> Any:
    import fsspec

    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"S3 endpoint {endpoint!r} (AWS_ENDPOINT_URL) is not a URL: write it as http(s)://host:port")
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    try:
        # skip_instance_cache: a cached instance would answer from listings older than this deploy.
        return fsspec.filesystem("s3", client_kwargs=client_kwargs, config_kwargs=files.S3_CLIENT_CONFIG, skip_instance_cache=True)
    except ImportError:
        raise ChampionError("an s3:// repository needs s3fs: pip install s3fs") from None
