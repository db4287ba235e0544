"""Config from the environment, as containers are configured: `CHAMPION_<SECTION>__<KEY>` variables.

Which variables are config, which key each one sets, and its value read as YAML (like `--set`);
each key keeps the variable that set it, so that an error names the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from champion.config.dotted import read_value
from champion.config.schema import Config
from champion.errors import ConfigError

# Config from the environment, as containers are configured: CHAMPION_<SECTION>__<KEY>, deeper
# sections joined by `__` as well; a top-level key such as `experiment` is CHAMPION_EXPERIMENT.
# These are pydantic-settings' conventions (env_prefix, env_nested_delimiter, names in any case).
ENV_PREFIX = "CHAMPION_"
ENV_DELIMITER = "__"


def env_variable(dotted: str) -> str:
    """The environment variable that sets a key: training.early_stopping.patience -> CHAMPION_TRAINING__EARLY_STOPPING__PATIENCE."""
    return ENV_PREFIX + ENV_DELIMITER.join(dotted.split(".")).upper()


@dataclass(frozen=True)
class EnvSetting:
    """One config key set by an environment variable."""

    variable: str  # the name as it is written in the environment, for messages
    key: str  # the dotted config key
    value: Any  # read as YAML, like a --set value


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _env_key(variable: str, parts: list[str]) -> str:
    """The dotted key that the `__`-separated parts of a variable's name denote.

    Raises:
        ConfigError: a part names no key, a key below a value, or a whole section.
    """
    model: type[BaseModel] | None = Config
    path: list[str] = []
    for part in parts:
        name = part.lower()
        if model is None:
            whole = ".".join(path)
            raise ConfigError(
                f"{variable}: {whole} is a value, not a section: set it whole, e.g. {env_variable(whole)}=<YAML value>"
            )
        if name not in model.model_fields:
            allowed = ", ".join(model.model_fields)
            if path:
                raise ConfigError(f"{variable}: unknown key {'.'.join([*path, name])} (allowed in {'.'.join(path)}: {allowed})")
            raise ConfigError(
                f"{variable}: unknown section {name} (sections and top-level keys: {allowed}); every "
                f"{ENV_PREFIX}<NAME>{ENV_DELIMITER}... variable is read as config: rename a variable meant for something else"
            )
        path.append(name)
        model = _section_model(model.model_fields[name].annotation)
    dotted = ".".join(path)
    if model is not None:
        first = next(iter(model.model_fields))
        raise ConfigError(
            f"{variable}: {dotted} is a section: set its keys one by one, e.g. {env_variable(f'{dotted}.{first}')}"
        )
    return dotted


def env_settings(environ: Mapping[str, str]) -> list[EnvSetting]:
    """The config keys that `environ` sets, in pydantic-settings' `CHAMPION_<SECTION>__<KEY>` form.

    pydantic-settings' EnvSettingsSource supplies the conventions and reads the variables (prefix,
    `__` nesting, names matched in any case, empty values ignored as if unset); its own decoding is
    not used. It reads JSON only for list and section fields and hands every other value on as text
    (so `false` would reach the `bool | str` field `model.pretrained` as the string "false"), drops a
    variable that names no field and passes an unknown nested one on without its name. Here every
    value is read as YAML, like a `--set` value, and each key keeps the variable that set it, so that
    errors name the variable.

    Which variables are config: every `CHAMPION_<NAME>__...` one (an unknown key there is an error,
    never a silent no-op), and `CHAMPION_<KEY>` where KEY is a top-level key (`experiment`). Any other
    `CHAMPION_*` name without `__` (CHAMPION_API_KEY, CHAMPION_WORKFLOW_MODE,
    CHAMPION_ONNX_EXTERNAL_DATA_BYTES) is not config and is ignored here.

    Raises:
        ConfigError: naming every variable with an unknown key, a section instead of a key, a value
            that is not YAML, or a key that two variables set (names differing only in case).
    """
    from pydantic_settings import EnvSettingsSource  # lazy: ~25 ms, only when the environment is read (not for --help, nor a logged run's config)

    class _Source(EnvSettingsSource):
        def _load_env_vars(self) -> Mapping[str, str | None]:
            # The names as written (the parent lowercases them), so a message names the variable the
            # user set; the prefix and the keys are still matched in any case below.
            return {k: v for k, v in environ.items() if not (self.env_ignore_empty and v == "")}

    source = _Source(
        Config, case_sensitive=False, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, env_ignore_empty=True
    )
    fold = (lambda text: text) if source.case_sensitive else str.lower
    prefix = fold(source.env_prefix)
    found: dict[str, EnvSetting] = {}
    errors: list[str] = []
    for variable, raw in sorted(source.env_vars.items()):
        name = fold(variable)
        if not name.startswith(prefix) or raw is None:
            continue
        rest = name[len(prefix) :]
        if source.env_nested_delimiter not in rest and rest not in Config.model_fields:
            continue  # not a config key: another setting of champion's (CHAMPION_API_KEY, ...)
        try:
            key = _env_key(variable, rest.split(source.env_nested_delimiter))
            setting = EnvSetting(variable, key, read_value(raw, f"{variable}={raw!r}"))
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if key in found:
            errors.append(f"{found[key].variable} and {variable} both set {key}: keep one")
            continue
        found[key] = setting
    if errors:
        raise ConfigError("invalid configuration in the environment:\n  " + "\n  ".join(errors))
    return list(found.values())

