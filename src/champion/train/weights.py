"""Pretrained weights: where they come from, and copying them into a network.

`model.pretrained` names where the weights come from:

* a local file: `*.safetensors`, or anything `torch.load(weights_only=True)` reads (a state dict of
  the network, of the whole classifier, or a Lightning checkpoint);
* a torchvision weights name such as `ResNet18_Weights.IMAGENET1K_V1`, read from the local torch hub
  cache only (nothing is downloaded: the error says where to put the file);
* `models:/<name>@<alias>` or `models:/<name>/<version>`: a warm start from a registered model.

Weights go into the network (`model.net`) only. The normalisation layer is never copied: it holds
the statistics of the data this model trains on and will serve, which are the ones it must keep.

What then trains (`model.approach`: freezing, parameter groups) is `champion.train.approach`; its
names are importable from here too.
"""

from __future__ import annotations

import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
from torch import nn
from torch.hub import HASH_REGEX

from champion.errors import ChampionError, ConfigError
from champion.registry import integrity, storage, tracking
from champion.train.approach import (  # noqa: F401 - re-exported: callers import the approach names from here
    APPROACHES,
    check_approach,
    configure_trainable,
    freeze_batchnorm_stats,
    head_name,
    param_groups,
)

# Full torchvision enum names only: "IMAGENET1K_V1" alone would need the architecture to resolve.
_TORCHVISION_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
# Where a state dict may sit inside a saved file: a bare network, the classifier (`net.`), a
# Lightning checkpoint of champion.train's LitClassifier (`model.net.`), a DDP-wrapped module.
_PREFIXES = ("", "net.", "model.net.", "module.", "module.net.")

# torchvision and safetensors are imported inside the functions that read those weights (torchvision is
# slow to import): a network trained from scratch, or warm-started from the registry, needs neither.


@dataclass
class WeightsInfo:
    """What `load_pretrained` did, for the run's tags and the user."""

    origin: str
    """What was loaded, e.g. "file:/abs/w.safetensors (sha256 ab12...)", or "none"."""
    loaded: int
    """Number of tensors copied into the network."""
    skipped: list[str]
    """Tensors of this network left as initialised: the head when the classes differ, or a first conv
    whose kernel does not fit (e.g. ResNet's 7x7 ImageNet stem in the 3x3 small-image variant)."""
    head_replaced: bool
    """The classification head kept its fresh initialisation."""
    adapted: list[str] = field(default_factory=list)
    """First-conv weights converted to this network's channel count (RGB summed to greyscale)."""


def load_pretrained(
    model: nn.Sequential, spec: str | bool, num_classes: int, classes: Sequence[str] | None = None
) -> WeightsInfo:
    """Copy pretrained weights into `model.net`, keeping the head fresh when the classes differ.

    Every tensor whose name and shape match is copied. The head's tensors are skipped (left freshly
    initialised) when their shape differs, i.e. the class count changed, or when the source is a
    registered model whose logged class names differ from `classes` (MNIST digits -> Fashion-MNIST
    has 10 classes on both sides, but digit 3's weights say nothing about dresses). The first conv
    is converted when only its input channels differ (RGB weights summed for greyscale, as timm
    does) and skipped when its kernel differs. Anything else that does not fit is an error, checked
    before a single tensor is copied, so a failed load leaves the model as it was. The source's
    `num_batches_tracked` counters are optional (pre-2018 torchvision files have none).

    Args:
        model: a classifier from `champion.models.build_classifier` (normalisation, then `net`).
        spec: `model.pretrained`: False, a file path, a torchvision weights name or a models:/ URI.
        num_classes: the class count of this model's data.
        classes: the class names of this model's data; compared with a registered model's.

    Raises:
        ConfigError: the spec names nothing loadable, or the weights do not fit this architecture.
        ChampionError: torchvision weights missing from the local cache.
        RegistryError: MLflow could not be reached or could not load the registered model.
    """
    if not spec:
        return WeightsInfo("none", 0, [], False)
    if spec is True:  # config already refuses it; a direct caller gets the same answer
        raise ConfigError("model.pretrained: true is ambiguous, give a file, a torchvision weights name or a models:/ URI")
    source_classes: list[str] | None = None
    if spec.startswith("models:/"):
        state, origin, source_classes = _from_registry(spec)
    elif Path(spec).expanduser().exists():
        state, origin = _from_file(Path(spec).expanduser().resolve())
    elif _TORCHVISION_NAME.match(spec):
        state, origin = _from_torchvision(spec)
    else:
        raise ConfigError(
            f"model.pretrained {spec!r}: no such file ({Path(spec).expanduser().resolve()}), and not a torchvision "
            "weights name (e.g. ResNet18_Weights.IMAGENET1K_V1) nor models:/<name>@<alias>"
        )
    classes_differ = classes is not None and source_classes is not None and list(classes) != list(source_classes)
    return _copy_into(model.net, state, origin, num_classes, replace_head=classes_differ)


def _copy_into(
    net: nn.Module, source: dict[str, torch.Tensor], origin: str, num_classes: int, replace_head: bool
) -> WeightsInfo:
    target = net.state_dict()
    source = _strip_prefix(source, target)
    heads = _head_keys(net, target, num_classes)
    first_conv = next((f"{n}.weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)

    copies: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    adapted: list[str] = []
    mismatched: list[str] = []
    missing: list[str] = []
    for key, dest in target.items():
        src = source.get(key)
        if key in heads and (src is None or src.shape != dest.shape or replace_head):
            skipped.append(key)
        elif src is None:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
        elif src.shape == dest.shape:
            copies[key] = src
        elif key == first_conv and src.dim() == 4 and src.shape[0] == dest.shape[0] and src.shape[2:] == dest.shape[2:]:
            copies[key] = _adapt_channels(src, dest.shape[1])
            adapted.append(key)
        elif key == first_conv:
            skipped.append(key)
        else:
            mismatched.append(f"{key!r} is {tuple(src.shape)} there but {tuple(dest.shape)} here")
    unexpected = [k for k in source if k not in target and not k.endswith("num_batches_tracked")]

    unfit = f"the weights from {origin} do not fit this architecture"
    if not source:
        raise ConfigError(f"{origin} holds no tensors")
    if not copies:
        raise ConfigError(
            f"nothing in {origin} matches this network: they are for another architecture "
            f"(their first tensors: {_few(list(source))}; this network's: {_few(list(target))})"
        )
    if mismatched:
        raise ConfigError(f"{unfit}: tensor {mismatched[0]}" + _more(mismatched))
    if missing:
        raise ConfigError(f"{unfit}: they lack {len(missing)} tensors it has, e.g. {_few(missing)}")
    if unexpected:
        raise ConfigError(f"{unfit}: they hold {len(unexpected)} tensors it has not, e.g. {_few(unexpected)}")

    with torch.no_grad():
        for key, src in copies.items():
            target[key].copy_(src)  # state_dict tensors share storage with the parameters and buffers
    head_replaced = any(k in heads for k in skipped)
    return WeightsInfo(origin, len(copies), skipped, head_replaced, adapted)


def _head_keys(net: nn.Module, target: dict[str, torch.Tensor], num_classes: int) -> set[str]:
    """State-dict keys of the head, and of auxiliary classifiers (torchvision's GoogLeNet, Inception v3)."""
    try:
        head = head_name(net)
    except ConfigError:
        return set()  # capsnet: its class-dependent tensors must match, as everything else
    layer = net.get_submodule(head)
    outputs = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if outputs != num_classes:  # a caller's mistake, not the user's: the model was built for other data
        raise ValueError(f"the head {head!r} has {outputs} outputs but num_classes is {num_classes}")
    prefixes = [f"{head}."] + [
        f"{n}." for n, m in net.named_modules() if isinstance(m, nn.Linear) and "aux" in n.lower()
    ]
    return {k for k in target if any(k.startswith(p) for p in prefixes)}


def _strip_prefix(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the tensors under whichever known prefix matches the network best, without the prefix.

    Tensors outside it (the classifier's `normalize.`, a checkpoint's other entries) are not ours.
    """
    best: dict[str, torch.Tensor] = {}
    best_hits = -1
    for prefix in _PREFIXES:
        stripped = {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}
        hits = sum(k in target for k in stripped)
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _adapt_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-conv weights for `channels` inputs: summed for one (a grey image is R = G = B), else tiled and rescaled."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-channels // weight.shape[1])
    # Rescaled so that an input whose channels are all equal gives the same activation as before.
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (" ..." if len(keys) > n else "")


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _tensors(obj: object, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, or of the `state_dict` entry of a checkpoint."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} holds a {type(obj).__name__}, not a state dict: save model.state_dict() instead")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _torch_load(path: Path) -> object:
    try:
        # weights_only: a weights file is data; unpickling arbitrary objects would run its code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"model.pretrained {path} holds objects other than tensors, and only weights are loaded "
            f"(torch.load with weights_only=True): save model.state_dict(), or use safetensors. "
            f"torch said: {str(exc).strip().splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"model.pretrained {path} is not a readable torch file: {exc}") from None


def _from_file(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise ConfigError(f"model.pretrained {path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"model.pretrained {path} is not a readable safetensors file: {exc}") from None
    else:
        state = _tensors(_torch_load(path), f"model.pretrained {path}")
    return state, f"file:{path} (sha256 {integrity.file_sha256(path)[:12]})"


def torchvision_cache_path(weights_name: str) -> tuple[Path, str]:
    """Where torch hub keeps the file of a torchvision weights enum, and the URL it comes from.

    The folder is `torch.hub.get_dir()/checkpoints`: $TORCH_HOME/hub/checkpoints, by default
    ~/.cache/torch/hub/checkpoints.

    Raises:
        ConfigError: not a torchvision weights name.
    """
    from torchvision.models import get_weight

    try:
        weights = get_weight(weights_name)
    except (ValueError, KeyError):
        raise ConfigError(
            f"model.pretrained {weights_name!r} is not a torchvision weights name: give the full enum name, e.g. "
            "ResNet18_Weights.IMAGENET1K_V1 (torchvision.models.get_model_weights('<architecture>') lists them)"
        ) from None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name, weights.url


def _from_torchvision(name: str) -> tuple[dict[str, torch.Tensor], str]:
    path, url = torchvision_cache_path(name)
    # Checked first: torchvision would otherwise try to download, which hangs or fails obscurely offline.
    if not path.is_file():
        raise ChampionError(
            f"torchvision weights {name} are not in the local torch hub cache: expected {path}. "
            f"Nothing is downloaded here; on a connected machine fetch {url} (e.g. curl -LO {url}) "
            f"and copy it to {path.parent}/ (the folder is $TORCH_HOME/hub/checkpoints)."
        )
    # torch hub verifies the hash prefix in the file name only while downloading, never for a file
    # already in the cache; it is checked here so that a truncated or swapped copy is reported.
    sha = integrity.file_sha256(path)
    expected = HASH_REGEX.search(path.name)
    origin = f"torchvision:{name} ({path}, sha256 {sha[:12]})"
    if expected and not sha.startswith(expected.group(1)):
        note = f"sha256 does not match the prefix {expected.group(1)} published in the file name"
        # Not fatal: the structural checks still catch another architecture, and a user may place
        # their own conversion there on purpose; the origin tag records it either way.
        warnings.warn(f"{path}: {note}; it is not the file torchvision publishes at {url}", stacklevel=3)
        origin = f"{origin[:-1]}; {note})"
    state = _tensors(_torch_load(path), str(path))
    return _densenet_keys(state), origin


def _densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's DenseNet files use pre-0.4 key names ('norm.1.weight'); rename as torchvision does."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    renamed = {}
    for key, value in state.items():
        m = pattern.match(key)
        renamed[m.group(1) + m.group(2) if m else key] = value
    return renamed


def _from_registry(uri: str) -> tuple[dict[str, torch.Tensor], str, list[str] | None]:
    m = _REGISTRY_URI.match(uri)
    if not m:
        raise ConfigError(f"model.pretrained {uri!r}: use models:/<name>@<alias> or models:/<name>/<version>")

    name, alias, version = m["name"], m["alias"], m["version"]
    with tracking.registry_errors(f"resolve {uri}"):
        try:
            mv = (
                tracking.client().get_model_version_by_alias(name, alias)
                if alias
                else tracking.client().get_model_version(name, version)
            )
        except Exception as exc:
            if tracking.is_not_found(exc) or "not found" in str(exc).lower():
                raise ChampionError(f"model.pretrained {uri}: no such registered model version or alias") from None
            raise
    # The resolved version is loaded, not the alias: the alias may move meanwhile, and the origin
    # must name what was actually copied. Hash-checked, and read in place from a local store.
    with tempfile.TemporaryDirectory(prefix="champion-pretrained-") as scratch:
        loaded, metadata = storage.load_registered(mv, Path(scratch))
    if not isinstance(loaded, nn.Module):
        raise ConfigError(f"model.pretrained {uri} is a {type(loaded).__name__}, not a torch module")
    net = getattr(loaded, "net", loaded)
    classes = (metadata.get("preprocessing") or {}).get("classes")
    origin = f"{uri} (version {mv.version}, run {tracking.version_run_id(mv)})"
    return dict(net.state_dict()), origin, list(classes) if classes else None
