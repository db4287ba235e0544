"""Which model `predict` and `evaluate` run: `--model-name` with `--alias` or `--version`, or a
`models:/` URI, always a validated ONNX export opened as `champion serve` opens it."""

from __future__ import annotations

from champion import names
from champion.deploy.model import ServedModel, load_model
from champion.errors import ConfigError


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(registered name, alias, version) of `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    rest = uri.removeprefix("models:/")
    if rest == uri or not rest:
        raise ConfigError(f"--model-uri {uri!r}: write models:/NAME@ALIAS or models:/NAME/VERSION")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        found = (name, alias or None, None)
    else:
        name, _, version = rest.rpartition("/")
        if not version.isdigit():
            raise ConfigError(f"--model-uri {uri!r}: the version must be a number (models:/NAME/3), or use models:/NAME@ALIAS")
        found = (name, None, version)
    if not found[0] or not (found[0].endswith(names.ONNX_SUFFIX) or found[0].endswith(names.INT8_SUFFIX)):
        raise ConfigError(
            f"--model-uri {uri!r}: predict and evaluate run a validated ONNX export, registered as "
            f"NAME{names.ONNX_SUFFIX} (or NAME{names.INT8_SUFFIX}); e.g. models:/{found[0] or 'NAME'}{names.ONNX_SUFFIX}@{names.DEPLOY_ALIAS}"
        )
    if found[1] is None and found[2] is None:
        raise ConfigError(f"--model-uri {uri!r} names no alias")
    return found


def open_model(model_name: str | None, alias: str, version: str | None, model_uri: str | None, quiet: bool = False) -> ServedModel:
    """The model to run, downloaded and checked against its recorded hash."""
    if model_uri is not None:
        if model_name is not None or version is not None:
            raise ConfigError("--model-uri names the model and its version: give it without --model-name or --version")
        model_name, uri_alias, version = parse_model_uri(model_uri)
        alias = uri_alias or alias
    return load_model(model_name, alias, version, quiet)
