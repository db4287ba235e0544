"""Regenerate docs/configuration.md from the config tree's descriptions (a test checks it is current).

Usage: .venv/bin/python scripts/config_docs.py
"""

from pathlib import Path

from champion.config import describe_keys, env_variable

HEADER = """# Configuration

One typed tree (`src/champion/config/`, pydantic), loaded from YAML (`--config`), every key
overridable with `--set dotted.key=value` (the value is read as YAML: `--set data.image_size=[64,64]`),
the shortcuts `--epochs`, `--learning-rate`, `--batch-size`, and environment variables
`CHAMPION_<SECTION>__<KEY>` (below). Unknown keys and bad values stop the command with exit code 2
before any work, naming the key (or the variable) and the allowed values. The resolved config is
logged to the training run as params (dotted keys) and as `config.yaml`; the step commands
`promote`, `export`, `validate` and `train --resume` read it back from there.

Shipped configs: `configs/default.yaml` (the built-in default: `mnist_cnn` on `digits`),
`configs/mnist.yaml` (the fast MNIST recipe), `configs/imagenette.yaml` (ResNet-18, the original
scripts' values). `champion run --help` prints the same keys, from the same descriptions.

## From the environment

Containers are configured by their environment, so every key can also be set as
`CHAMPION_<SECTION>__<KEY>`, deeper sections joined by `__` as well, a top-level key without one:

```bash
export CHAMPION_TRAINING__EPOCHS=3                      # training.epochs, an int
export CHAMPION_TRAINING__EARLY_STOPPING__PATIENCE=5    # training.early_stopping.patience
export CHAMPION_DATA__IMAGE_SIZE=[64,64]                # a list, as with --set
export CHAMPION_PROMOTION_CRITERIA__THRESHOLD=0.95
export CHAMPION_EXPERIMENT=nightly                      # the top-level key `experiment`
champion run --set training.epochs=5                    # --set still wins: 5 epochs
```

- **Precedence**, lowest first: built-in default < `--config` file < environment < `--set` and
  `--epochs` / `--learning-rate` / `--batch-size`.
- **Values are read as YAML**, exactly like `--set` values: `3` is an int, `false` a bool, `null`
  null, `[64,64]` a list, `{a.gz: 0123abcd}` a mapping (a `dict` key such as `data.checksums` is set
  whole). Quote to force text: `CHAMPION_MODEL__NAME='"2024"'`. An empty value counts as unset.
- **Names** follow pydantic-settings' conventions (`env_prefix="CHAMPION_"`,
  `env_nested_delimiter="__"`, matched in any case); pydantic-settings reads the variables, and
  each value is then read as YAML (its own decoding would pass `false` to `model.pretrained` as the
  file name "false").
- **Which variables are config.** Every `CHAMPION_<NAME>__...` variable is read as a config key:
  an unknown section or key, a section set as a value (`CHAMPION_MODEL=...`,
  `CHAMPION_TRAINING__EARLY_STOPPING=...`), a key below a value, a value that is not YAML, or two
  variables for one key stops the command with exit 2 before any work, naming every such variable:

  ```text
  error: invalid configuration in the environment:
    CHAMPION_TRAINING__EPOHCS: unknown key training.epohcs (allowed in training: epochs, learning_rate, ...)
  error: invalid configuration:
    CHAMPION_TRAINING__EPOCHS: training.epochs: Input should be a valid integer, ... (got 'three')
  ```

  `CHAMPION_<KEY>` without `__` is config only where KEY is a top-level key (`CHAMPION_EXPERIMENT`).
  Any other `CHAMPION_*` name without `__` is not config and is ignored by the configuration (the
  settings listed below use such names, so they can never collide with a config key).
- **Where it applies**: only where a config is resolved afresh: `champion run`, `champion train`,
  `champion config`, `champion data prepare | inspect | clear` and `champion runs` (its default
  experiment). The config
  logged with a training run is never changed by the environment of a later step: `promote`,
  `export`, `validate`, `card`, and the training of `train --resume`, judge and continue what was
  trained, by the stored policy. (`train --resume` without `--run-id` still finds the run by
  `experiment` and `model.name` as resolved from `--config`, the environment and `--set`.)
- **Recorded**: the values from the environment are part of the resolved config, so the run's
  params and `config.yaml` say what it trained with.

## What a command would run with: `champion config`

`champion config [--config FILE] [--set KEY=VALUE ...]` resolves the configuration as `champion run`
does (built-in default, the file, `CHAMPION_<SECTION>__<KEY>` variables, `--set`) and prints every
key as YAML, each value followed by a comment that says what set it, as LightningCLI's
`--print_config` and `yolo cfg` do:

```text
$ CHAMPION_TRAINING__BATCH_SIZE=32 champion config --config mine.yaml --set training.early_stopping.monitor=val_loss
...
training:
  epochs: 3                     # file mine.yaml
  learning_rate: 0.001          # default
  batch_size: 32                # environment CHAMPION_TRAINING__BATCH_SIZE
  ...
  early_stopping:
    monitor: val_loss           # --set
    mode: min                   # derived from other keys
    patience: 3                 # default
```

`derived from other keys` marks a value that nothing set and a rule filled in (a `mode` follows its
`monitor`). The comments are YAML comments, so the output is itself a config file that resolves
to the same configuration: `champion config ... > resolved.yaml && champion run --config resolved.yaml`.
An unknown key or a bad value is the same exit-2 error as for every other command.

## Keys

| key | environment variable | default | meaning |
|---|---|---|---|
"""

ENVIRONMENT = """
## Environment variables champion reads

Besides the configuration's `CHAMPION_<SECTION>__<KEY>` variables (and `CHAMPION_EXPERIMENT`), all
listed above:

| variable | meaning |
|---|---|
| `MLFLOW_TRACKING_URI` | The MLflow tracking server or store; unset: `sqlite:///<working directory>/mlflow.db`. |
| `MLFLOW_TRACKING_USERNAME`, `MLFLOW_TRACKING_PASSWORD` | Basic-auth credentials for the MLflow server (read by MLflow); the user name is also the `who` of registry history events when the server does not say. |
| `MLFLOW_TRACKING_TOKEN` | Bearer token for the MLflow server (read by MLflow). |
| `CHAMPION_API_KEY` | An API key sent to the tracking server's host in a request header (for gateways in front of MLflow). |
| `AM_SC_API_KEY` | The same key under the name the original scripts read; `CHAMPION_API_KEY` wins when both are set. |
| `CHAMPION_API_KEY_HEADER` | The header that carries the API key (default `X-Api-Key`). |
| `CHAMPION_WORKFLOW_MODE` | `1` in a workflow step: a gate rejection exits 0 (`RESULT=failed` says it), a server that could not be reached exits 75 so that only such failures are retried. |
| `CHAMPION_WORKFLOW_STEP_ID` | Names a workflow step across its retries (`<workflow uid>-train`), so a retried `train` resumes or closes the run of its earlier try. |
| `CHAMPION_LEASE_TTL_SECONDS`, `CHAMPION_LEASE_WAIT_SECONDS` | The registry lease that keeps two promotions of one model apart: how long a lease lives unrenewed (60) and how long to wait for one (600). |
| `CHAMPION_TIMINGS` | A file to which a command writes its stages' wall and CPU times as JSON when it exits (`bench/mnist_pipeline.py` reads it). |
| `CHAMPION_ONNX_EXTERNAL_DATA_BYTES` | Parameter bytes from which ONNX tensors go to an external-data file (default 2 GiB - 128 MiB). |
| `XDG_CACHE_HOME` | The data cache is `$XDG_CACHE_HOME/champion` unless `data.cache_dir` is set (default `~/.cache/champion`). |
| `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` | S3-compatible endpoint for `s3://` data and Triton repositories, unless `data.s3.endpoint_url` is set; credentials and region are botocore's usual variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ...). |
| `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, `NODE_RANK`, `LOCAL_RANK`, `KUBERNETES_PORT`, `SLURM_PROCID`, ... | Which process of a multi-process or multi-node training this is, as Lightning's cluster environments read them; see [training.md](training.md). |
"""


def render() -> str:
    rows = "".join(f"| `{k}` | `{env_variable(k)}` | `{d}` | {desc} |\n" for k, d, desc in describe_keys())
    return HEADER + rows + ENVIRONMENT


if __name__ == "__main__":
    (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").write_text(render())
