"""Every registered architecture: forward, backward, ONNX export and parity in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from champion.errors import ConfigError
from champion.stages.export import _to_onnx
from champion.train.models import Preprocessing, build_classifier, list_models
from champion.stages.validate import compare


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("channels, size", [(1, (28, 28)), (3, (32, 40))])
def test_architecture_trains_and_exports(name: str, channels: int, size: tuple[int, int], tmp_path: Path) -> None:
    import onnxruntime as ort

    pre = Preprocessing(size, channels, (0.5,) * channels, (0.25,) * channels, ("a", "b", "c"))
    model = build_classifier(name, pre)
    x = torch.rand(4, channels, *size)
    logits = model(x)
    assert logits.shape == (4, 3)
    if hasattr(model.net, "loss"):  # its own objective trains parts (capsnet's decoder) forward does not use
        model.net.loss(model.normalize(x), torch.tensor([0, 1, 2, 0]), images01=x).total.backward()
    else:
        logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    path = tmp_path / "m.onnx"
    _to_onnx(model, x[:2], path, opset=17, external=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch axis is dynamic
        xb = torch.rand(batch, channels, *size)
        with torch.inference_mode():
            ref = model(xb).numpy()
        got = session.run(None, {"input": xb.numpy()})[0]
        row = compare(ref, got, atol=1e-5, rtol=1e-3)
        assert row["within_tolerance"] and row["top1_identical"], row


def test_torchvision_models_by_name_adapt_to_channels() -> None:
    pre = Preprocessing((32, 32), 1, (0.5,), (0.25,), ("a", "b"))
    model = build_classifier("mobilenet_v3_small", pre).eval()
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_unknown_architecture_lists_the_choices() -> None:
    pre = Preprocessing((28, 28), 1, (0.5,), (0.25,), ("a", "b"))
    with pytest.raises(ConfigError, match="mnist_cnn"):
        build_classifier("no_such_net", pre)


def test_compare_detects_tolerance_and_top1_failures() -> None:
    ref = np.array([[1.0, 2.0], [3.0, 1.5]], np.float32)
    assert compare(ref, ref, 0, 0)["within_tolerance"]
    off = ref + np.float32(1e-3)
    assert not compare(ref, off, atol=1e-5, rtol=0)["within_tolerance"]
    assert compare(ref, off, atol=1e-5, rtol=1e-3)["within_tolerance"]  # 1e-3 <= 1e-5 + 1e-3 * |ref|
    flipped = ref[:, ::-1].copy()
    row = compare(ref, flipped, atol=10, rtol=0)
    assert row["within_tolerance"] and not row["top1_identical"] and row["top1_agreement"] == 0.0
