"""Training approaches: what trains, and at which learning rate.

`model.approach` decides what trains: `baseline` everything (from scratch, or a warm start when
weights are given), `feature_extraction` only the head, `fine_tuning` everything with a lower
learning rate for the backbone (`param_groups`). `model.frozen_layers=backbone` freezes the
backbone under any approach that allows it. The head is the network's classification layer
(`head_name`); loading pretrained weights (`champion.train.weights`) keeps it fresh when the
classes differ.
"""

from __future__ import annotations

from torch import nn

from champion.errors import ConfigError

APPROACHES = ("baseline", "feature_extraction", "fine_tuning")


def head_name(net: nn.Module) -> str:
    """Dotted name of the classification head inside the bare network.

    The head is the last `nn.Linear` in module order (resnet18: 'fc', mnist_cnn: its last index,
    mobilenet_v3_small: 'classifier.3'); all-convolutional nets without one (SqueezeNet) end in a 1x1
    conv that outputs the class scores, so the last `nn.Conv2d` is taken there.

    Raises:
        ConfigError: the network has its own objective (capsnet: the class capsules are the head and
            the decoder's last layer is not), or nothing that could be a head.
    """
    if hasattr(net, "loss"):
        raise ConfigError(
            f"{type(net).__name__} has no separate classification head (its class capsules are the head), "
            "so model.approach feature_extraction and fine_tuning do not apply to it: use baseline "
            "(model.pretrained still warm-starts it)"
        )
    for kind in (nn.Linear, nn.Conv2d):
        names = [name for name, module in net.named_modules() if isinstance(module, kind)]
        if names:
            return names[-1]
    raise ConfigError(f"{type(net).__name__} has no linear or convolutional layer to use as its classification head")


def configure_trainable(model: nn.Sequential, approach: str, frozen_layers: str | None) -> dict[str, int]:
    """Freeze the backbone for feature extraction (or `frozen_layers='backbone'`); else train everything.

    Frozen parameters get `requires_grad=False`. Their batch-norm layers must also stop updating
    their running statistics, which `requires_grad` does not do: call `freeze_batchnorm_stats`
    whenever the model is put in train mode (see there).

    Returns:
        {'trainable': n, 'frozen': n}, counted in parameter elements.

    Raises:
        ConfigError: an unknown approach, or a network without a separate head to train.
    """
    if approach not in APPROACHES:
        raise ConfigError(f"model.approach {approach!r}: use one of {', '.join(APPROACHES)}")
    freeze = approach == "feature_extraction" or frozen_layers == "backbone"
    head = f"{head_name(model.net)}." if freeze else ""
    for name, param in model.net.named_parameters():
        param.requires_grad_(not freeze or name.startswith(head))
    counts = {"trainable": 0, "frozen": 0}
    for param in model.parameters():
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    return counts


def freeze_batchnorm_stats(module: nn.Module) -> int:
    """Put every batch norm whose parameters are all frozen in eval mode; returns how many.

    In train mode a batch norm normalises with the batch's statistics and moves its running ones,
    even with frozen weights; a frozen backbone must see its inputs exactly as it was trained to.
    `nn.Module.train()` resets this, so call it each time after the model is put in train mode: in
    champion.train.module, `LitClassifier.train(mode)` calls it after `super().train(mode)`
    (Lightning calls train() at the start of fitting and, in 2.2+, restores per-module modes after
    validation). Overriding there rather than on the classifier keeps the logged model plain torch.
    Batch norms without affine parameters have nothing to tell and follow the model's mode.
    """
    count = 0
    for m in module.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            m.eval()
            count += 1
    return count


def param_groups(
    model: nn.Sequential, approach: str, lr: float, backbone_lr_factor: float = 0.1
) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters; frozen ones are never passed.

    fine_tuning: the backbone at `lr * backbone_lr_factor` (small steps keep the pretrained features),
    the head at `lr`. Otherwise one group at `lr`. Groups carry a 'name' (backbone, head, all) for
    learning-rate logging. A scheduler given one `max_lr` (OneCycleLR) overrides per-group rates:
    pass it `[g['lr'] for g in groups]`.

    Raises:
        ConfigError: nothing is trainable.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("no trainable parameters: every layer is frozen")
    if approach != "fine_tuning":
        return [{"name": "all", "params": [p for _, p in trainable], "lr": lr}]
    head = f"net.{head_name(model.net)}."
    groups = [
        {"name": "backbone", "params": [p for n, p in trainable if not n.startswith(head)], "lr": lr * backbone_lr_factor},
        {"name": "head", "params": [p for n, p in trainable if n.startswith(head)], "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def check_approach(approach: str, pretrained: str | bool, frozen_layers: str | None = None) -> None:
    """Cross-field rules of `model.approach`, `model.pretrained` and `model.frozen_layers`, checked up front.

    feature_extraction and fine_tuning start from pretrained weights by definition. baseline with
    weights is allowed: a warm start, every layer trained at the full learning rate. A frozen
    backbone needs weights too (random features are no backbone), and contradicts fine_tuning.

    Raises:
        ConfigError: the combination cannot mean what was asked.
    """
    if approach not in APPROACHES:
        raise ConfigError(f"model.approach {approach!r}: use one of {', '.join(APPROACHES)}")
    if approach != "baseline" and not pretrained:
        raise ConfigError(
            f"model.approach={approach} starts from pretrained weights, but model.pretrained is not set: give a "
            "file, a torchvision weights name (e.g. ResNet18_Weights.IMAGENET1K_V1) or models:/<name>@<alias>, "
            "or use model.approach=baseline to train from scratch"
        )
    if frozen_layers == "backbone" and approach == "fine_tuning":
        raise ConfigError(
            "model.frozen_layers=backbone contradicts model.approach=fine_tuning (all layers trainable): "
            "use model.approach=feature_extraction to train only the head"
        )
    if frozen_layers == "backbone" and not pretrained:
        raise ConfigError("model.frozen_layers=backbone needs model.pretrained: a random backbone would stay random")
