"""Regenerate docs/configuration.md from the config tree's descriptions (a test checks it is current).

Usage: .venv/bin/python scripts/config_docs.py
"""

from pathlib import Path

from champion.config import describe_keys

HEADER = """# Configuration

One typed tree (`src/champion/config.py`, pydantic), loaded from YAML (`--config`), every key
overridable with `--set dotted.key=value` (the value is read as YAML: `--set data.image_size=[64,64]`)
and the shortcuts `--epochs`, `--learning-rate`, `--batch-size`. Unknown keys and bad values stop the
command with exit code 2 before any work, naming the key and the allowed values. The resolved config
is logged to the training run as params (dotted keys) and as `config.yaml`; the step commands
`promote`, `export`, `validate` and `train --resume` read it back from there.

Shipped configs: `configs/default.yaml` (the built-in default: `mnist_cnn` on `digits`),
`configs/mnist.yaml` (the fast MNIST recipe), `configs/imagenette.yaml` (ResNet-18, the original
scripts' values). `champion run --help` prints the same keys, from the same descriptions.

| key | default | meaning |
|---|---|---|
"""


def render() -> str:
    return HEADER + "".join(f"| `{k}` | `{d}` | {desc} |\n" for k, d, desc in describe_keys())


if __name__ == "__main__":
    (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").write_text(render())
