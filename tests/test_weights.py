"""Pretrained weights from files, the torch hub cache and the MLflow registry; what each approach trains."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

from champion.errors import ChampionError, ConfigError
from champion.train.models import Preprocessing, build_classifier
from champion.train.weights import (
    check_approach,
    configure_trainable,
    freeze_batchnorm_stats,
    head_name,
    load_pretrained,
    param_groups,
)

DIGITS = tuple(str(i) for i in range(10))


def classifier(name: str = "mnist_cnn", classes: tuple[str, ...] = DIGITS, channels: int = 1, size: int = 28) -> nn.Sequential:
    pre = Preprocessing((size, size), channels, (0.5,) * channels, (0.25,) * channels, classes)
    return build_classifier(name, pre)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


class Payload:
    """Not a tensor: a weights-only load must refuse to unpickle it."""


@pytest.mark.parametrize(
    "name, head",
    [("mnist_cnn", "13"), ("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"), ("squeezenet1_1", "classifier.1")],
)
def test_head_name(name: str, head: str) -> None:
    net = classifier(name, channels=3, size=32).net
    assert head_name(net) == head
    assert net.get_submodule(head)(torch.zeros(1, *_head_input(net.get_submodule(head)))).shape[1] == 10


def _head_input(layer: nn.Module) -> tuple[int, ...]:
    return (layer.in_features,) if isinstance(layer, nn.Linear) else (layer.in_channels, 1, 1)


def test_capsnet_has_no_head_to_train_alone() -> None:
    with pytest.raises(ConfigError, match="baseline"):
        head_name(classifier("capsnet").net)


def _save(path: Path, state: dict[str, torch.Tensor]) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)


@pytest.mark.parametrize(
    "file, wrap",
    [
        ("w.safetensors", lambda model: model.net.state_dict()),  # bare network
        ("w.pt", lambda model: model.state_dict()),  # whole classifier: 'net.' keys
        ("last.ckpt", lambda model: {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}),
    ],
)
def test_load_from_file(tmp_path: Path, file: str, wrap) -> None:
    source = classifier()
    path = tmp_path / file
    _save(path, wrap(source))
    target = classifier()
    info = load_pretrained(target, str(path), 10)
    assert info.origin.startswith(f"file:{path} (sha256 ")
    assert (info.loaded, info.skipped, info.head_replaced) == (len(target.net.state_dict()), [], False)
    src, dst = source.net.state_dict(), target.net.state_dict()
    assert same(src, dst, dst)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"weights": classifier().net.state_dict(), "payload": Payload()}, path)
    with pytest.raises(ConfigError, match="weights_only=True") as err:
        load_pretrained(classifier(), str(path), 10)
    assert str(path) in str(err.value)


def test_new_classes_replace_the_head(tmp_path: Path) -> None:
    source, target = classifier(), classifier(classes=("a", "b", "c"))
    fresh_head = {k: v.clone() for k, v in target.net.state_dict().items() if k.startswith("13.")}
    path = tmp_path / "w.safetensors"
    _save(path, source.net.state_dict())
    info = load_pretrained(target, str(path), 3)
    assert info.head_replaced and info.skipped == ["13.weight", "13.bias"]
    src, dst = source.net.state_dict(), target.net.state_dict()
    backbone = [k for k in dst if not k.startswith("13.")]
    assert info.loaded == len(backbone) and same(src, dst, backbone)
    assert same(fresh_head, dst, fresh_head)


def _narrow_cnn() -> dict[str, torch.Tensor]:
    from champion.train.models import mnist_cnn

    return mnist_cnn(1, 10, (28, 28), width=8).state_dict()


@pytest.mark.parametrize(
    "make_source, message",
    [
        (_narrow_cnn, r"'1.weight' is \(8,\) there but \(16,\) here"),  # the first conv (0) is skipped, its BN is not
        (lambda: {**classifier().net.state_dict(), "extra.weight": torch.zeros(2)}, "tensors it has not, e.g. 'extra.weight'"),
        (lambda: classifier("resnet18").net.state_dict(), "nothing in .* matches this network"),
    ],
)
def test_weights_of_another_architecture_are_refused(tmp_path: Path, make_source, message: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(make_source(), path)
    target = classifier()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ConfigError, match=message):
        load_pretrained(target, str(path), 10)
    assert same(before, target.state_dict(), before)  # checked before anything was copied


@pytest.mark.parametrize("spec", ["nowhere/w.pt", "Foo_Weights.IMAGENET1K_V1", "models:/only-a-name"])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(ConfigError, match="model.pretrained"):
        load_pretrained(classifier(), spec, 10)


@pytest.mark.parametrize("size, first_conv", [(64, "adapted"), (28, "skipped")])
def test_torchvision_weights_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, first_conv: str
) -> None:
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target = classifier("resnet18", classes=("a", "b", "c"), size=size)  # greyscale: conv1 takes 1 channel
    with pytest.raises(ChampionError, match="not in the local torch hub cache") as err:
        load_pretrained(target, "ResNet18_Weights.IMAGENET1K_V1", 3)
    assert err.value.exit_code == 1
    assert str(expected) in str(err.value) and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(err.value)

    # Placed by hand: an ImageNet-shaped ResNet-18, but not the published file, so its hash differs.
    expected.parent.mkdir(parents=True)
    imagenet = resnet18().state_dict()
    torch.save(imagenet, expected)
    with pytest.warns(UserWarning, match="does not match the prefix f37072fd"):
        info = load_pretrained(target, "ResNet18_Weights.IMAGENET1K_V1", 3)
    assert info.origin.startswith(f"torchvision:ResNet18_Weights.IMAGENET1K_V1 ({expected}, sha256 ")
    assert info.head_replaced and "fc.weight" in info.skipped
    dst = target.net.state_dict()
    assert same(imagenet, dst, [k for k in dst if not k.startswith(("fc.", "conv1."))])
    if first_conv == "adapted":  # same 7x7 stem: RGB filters summed for greyscale
        assert info.adapted == ["conv1.weight"]
        assert torch.allclose(dst["conv1.weight"], imagenet["conv1.weight"].sum(1, keepdim=True))
    else:  # the small-image 3x3 stem cannot take the 7x7 filters
        assert "conv1.weight" in info.skipped and info.adapted == []


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[nn.Sequential]:
    """A 10-digit mnist_cnn registered as `digits` with alias `champion`, in a SQLite store under tmp_path."""
    import mlflow

    from champion.registry import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.setup_tracking()
    try:
        experiment = mlflow.create_experiment("pretrain", artifact_location=(tmp_path / "art").as_uri())
        model = classifier()
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pytorch.log_model(
                model,
                name="model",
                serialization_format="pickle",
                pip_requirements=["torch"],
                metadata={"preprocessing": {"classes": list(DIGITS)}},
                registered_model_name="digits",
            )
        tracking.client().set_registered_model_alias("digits", "champion", "1")
        yield model
    finally:
        mlflow.set_tracking_uri(None)


def test_warm_start_from_a_registered_model(registered: nn.Sequential, tmp_path: Path) -> None:
    src = registered.net.state_dict()
    backbone = [k for k in src if not k.startswith("13.")]

    fashion3 = classifier(classes=("shirt", "shoe", "bag"))
    info = load_pretrained(fashion3, "models:/digits@champion", 3)
    assert info.origin.startswith("models:/digits@champion (version 1, run ")
    assert info.head_replaced and info.skipped == ["13.weight", "13.bias"]
    assert same(src, fashion3.net.state_dict(), backbone)

    # Ten classes on both sides, but other ones: the digit head means nothing for them.
    fashion10 = classifier(classes=tuple(f"item{i}" for i in range(10)))
    assert load_pretrained(fashion10, "models:/digits/1", 10, classes=[f"item{i}" for i in range(10)]).head_replaced

    digits = classifier()
    info = load_pretrained(digits, "models:/digits@champion", 10, classes=DIGITS)
    assert not info.head_replaced and same(src, digits.net.state_dict(), src)

    with pytest.raises(ChampionError, match="no such registered model version or alias"):
        load_pretrained(digits, "models:/digits@nobody", 10)
    # Read in place, never through models:/ (which writes MLflow's registered_model_meta into the model's folder).
    assert list(tmp_path.rglob("registered_model_meta")) == []


def test_a_registered_model_whose_files_changed_is_not_a_warm_start(registered: nn.Sequential) -> None:
    from champion.registry import integrity, storage, tracking
    from champion.errors import IntegrityError

    c = tracking.client()
    tags = {storage.SHA256_TAG: "0" * 64, storage.SIZE_TAG: "1", storage.SCHEME_TAG: integrity.SCHEME}
    for key, value in tags.items():  # as if the files had been replaced after registration
        c.set_model_version_tag("digits", "1", key, value)
    with pytest.raises(IntegrityError, match="is not the model that was registered"):
        load_pretrained(classifier(), "models:/digits@champion", 10, classes=DIGITS)


def test_feature_extraction_trains_only_the_head() -> None:
    model = classifier()
    counts = configure_trainable(model, "feature_extraction", None)
    head = model.net.get_submodule(head_name(model.net))
    head_params = {id(p) for p in head.parameters()}
    assert counts == {"trainable": sum(p.numel() for p in head.parameters()), "frozen": counts["frozen"]}
    assert counts["frozen"] == sum(p.numel() for p in model.parameters()) - counts["trainable"] > 0
    groups = param_groups(model, "feature_extraction", 0.1)
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == head_params

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    model.train()
    assert freeze_batchnorm_stats(model) == 3
    torch.manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.rand(8, 1, 28, 28)), torch.randint(0, 10, (8,))).backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"net.13.weight", "net.13.bias"}  # BN running stats and counters untouched


def test_fine_tuning_uses_a_lower_backbone_learning_rate() -> None:
    model = classifier("resnet18")
    configure_trainable(model, "feature_extraction", None)
    counts = configure_trainable(model, "fine_tuning", None)  # undoes the freeze
    assert counts["frozen"] == 0 and freeze_batchnorm_stats(model) == 0
    groups = param_groups(model, "fine_tuning", 0.01)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", pytest.approx(0.001)), ("head", 0.01)]
    assert groups[1]["params"] == [model.net.fc.weight, model.net.fc.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.Adam(groups)  # every parameter in exactly one group


@pytest.mark.parametrize(
    "approach, pretrained, frozen, error",
    [
        ("baseline", False, None, None),
        ("baseline", "w.pt", None, None),  # warm start
        ("feature_extraction", "w.pt", "backbone", None),
        ("fine_tuning", "models:/digits@champion", None, None),
        ("feature_extraction", False, None, "model.pretrained is not set"),
        ("fine_tuning", False, None, "model.pretrained is not set"),
        ("fine_tuning", "w.pt", "backbone", "contradicts"),
        ("baseline", False, "backbone", "needs model.pretrained"),
    ],
)
def test_check_approach(approach: str, pretrained: str | bool, frozen: str | None, error: str | None) -> None:
    if error is None:
        check_approach(approach, pretrained, frozen)
        # Accepted up front means training sets it up as asked (run.py does this next, before any run opens):
        # which parameters learn, and in which optimizer groups.
        trains, named = {"baseline": ("all", ["all"]), "feature_extraction": ("head", ["all"]),
                         "fine_tuning": ("all", ["backbone", "head"])}[approach]  # fmt: skip
        model = classifier()
        configure_trainable(model, approach, frozen)
        every = {n for n, _ in model.named_parameters()}
        head = {n for n in every if n.startswith(f"net.{head_name(model.net)}.")}
        assert {n for n, p in model.named_parameters() if p.requires_grad} == (head if trains == "head" else every)
        assert [g["name"] for g in param_groups(model, approach, 0.1)] == named
    else:
        with pytest.raises(ConfigError, match=error) as err:
            check_approach(approach, pretrained, frozen)
        assert err.value.exit_code == 2
