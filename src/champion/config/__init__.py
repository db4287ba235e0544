"""The typed configuration tree: YAML files, `CHAMPION_<SECTION>__<KEY>` environment variables,
`--set dotted.key=value` overrides, one validation pass.

What lives where: `schema` (the pydantic models: names, defaults, rules and descriptions of every
key), `dotted` (dotted keys and `--set` values), `environment` (which variables set which keys) and
`loading` (`load_config`, `describe_keys`). Everything is importable from `champion.config`.
"""

from champion.config.dotted import SEED_FLAGS, flatten, parse_override, set_dotted
from champion.config.environment import ENV_DELIMITER, ENV_PREFIX, EnvSetting, env_settings, env_variable
from champion.config.loading import describe_keys, load_config
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
    "S3Config",
    "Section",
    "Strategy",
    "TrackingConfig",
    "TrainingConfig",
    "describe_keys",
    "env_settings",
    "env_variable",
    "flatten",
    "load_config",
    "parse_override",
    "set_dotted",
]
