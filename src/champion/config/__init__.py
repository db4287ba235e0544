"""The typed configuration tree: YAML files, `CHAMPION_<SECTION>__<KEY>` environment variables,
`--set dotted.key=value` overrides, one validation pass.

What lives where: `schema` (the pydantic models: names, defaults, rules and descriptions of every
key), `dotted` (dotted keys and `--set` values), `environment` (which variables set which keys),
`loading` (`load_config`; `resolve`, the config and what set each key; `describe_keys`) and `show`
(the resolved config as a config file, each value marked with what set it). Everything is importable
from `champion.config`.
"""

from champion.config.dotted import SEED_FLAGS, flatten, parse_override, set_dotted
from champion.config.environment import ENV_DELIMITER, ENV_PREFIX, EnvSetting, env_settings, env_variable
from champion.config.loading import Resolved, describe_keys, load_config, resolve
from champion.config.show import annotated_yaml
from champion.config.schema import (
    MONITOR_MODES,
    Accelerator,
    AugmentConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    EarlyStoppingConfig,
    ExportConfig,
    Int8Config,
    ModelConfig,
    Precision,
    PromotionConfig,
    S3Config,
    Section,
    Strategy,
    TrackingConfig,
    TrainingConfig,
)

__all__ = [
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "MONITOR_MODES",
    "SEED_FLAGS",
    "Accelerator",
    "AugmentConfig",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "EarlyStoppingConfig",
    "EnvSetting",
    "ExportConfig",
    "Int8Config",
    "ModelConfig",
    "Precision",
    "PromotionConfig",
    "Resolved",
    "S3Config",
    "Section",
    "Strategy",
    "TrackingConfig",
    "TrainingConfig",
    "annotated_yaml",
    "describe_keys",
    "env_settings",
    "env_variable",
    "flatten",
    "load_config",
    "parse_override",
    "resolve",
    "set_dotted",
]
