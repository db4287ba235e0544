"""CapsNet: squash, routing, both losses against hand-computed values, training, ONNX export and parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from champion.train.capsnet import (
    CapsNet,
    capsnet,
    margin_loss,
    reconstruction_loss,
    rescale01,
    route,
    squash,
)
from champion.errors import ConfigError


def tiny(channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)) -> CapsNet:
    # 4 capsule channels of 8D on a 6x6 grid: 144 primary capsules, same code path as the paper's sizes.
    return CapsNet(channels, num_classes, image_size, conv_channels=16, primary_caps_channels=4,
                   decoder_widths=(32, 64))  # fmt: skip


def test_squash_matches_hand_computed_values() -> None:
    v = squash(torch.tensor([3.0, 4.0]))  # |s| = 5: scale 25 / 26, direction (0.6, 0.8)
    torch.testing.assert_close(v, torch.tensor([25 / 26 * 0.6, 25 / 26 * 0.8]))
    # Along another axis: the columns are the capsules.
    cols = squash(torch.tensor([[3.0, 0.0], [4.0, 1.0]]), dim=0)
    torch.testing.assert_close(cols, torch.tensor([[25 / 26 * 0.6, 0.0], [25 / 26 * 0.8, 0.5]]))
    torch.testing.assert_close(squash(torch.tensor([0.0, 10.0])), torch.tensor([0.0, 100 / 101]))  # long: towards 1


def test_squash_of_zero_is_zero_with_a_finite_gradient() -> None:
    s = torch.zeros(2, 3, 8, requires_grad=True)
    v = squash(s)
    assert torch.equal(v, torch.zeros_like(v))
    v.sum().backward()
    assert torch.isfinite(s.grad).all()


def _reference_routing(u_hat: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedure 1 of the paper written with explicit loops, for one example (children, parents, D)."""
    n_in, n_out, _ = u_hat.shape
    b = [[0.0] * n_out for _ in range(n_in)]
    for _ in range(iterations):
        c = [[math.exp(b[i][j]) / sum(math.exp(x) for x in b[i]) for j in range(n_out)] for i in range(n_in)]
        v = [squash(sum(c[i][j] * u_hat[i, j] for i in range(n_in))) for j in range(n_out)]
        b = [[b[i][j] + float(u_hat[i, j] @ v[j]) for j in range(n_out)] for i in range(n_in)]
    return torch.stack(v), torch.tensor(c, dtype=torch.float64)


def test_routing_follows_the_papers_procedure() -> None:
    torch.manual_seed(0)
    u_hat = torch.randn(2, 5, 3, 4)
    v, c = route(u_hat, 3)
    for n in range(2):
        ref_v, ref_c = _reference_routing(u_hat[n].double(), 3)
        torch.testing.assert_close(v[n].double(), ref_v)
        torch.testing.assert_close(c[n].double(), ref_c)
    # One iteration has seen no agreement yet: every child splits its vote evenly among the parents.
    _, c1 = route(u_hat, 1)
    torch.testing.assert_close(c1, torch.full_like(c1, 1 / 3))


def test_paper_sizes_route_1152_primary_capsules_to_16d_class_capsules() -> None:
    torch.manual_seed(0)
    net = capsnet(1, 10, (28, 28))
    assert net.num_primary_caps == 32 * 6 * 6 == 1152
    assert net.weight.shape == (1152, 10, 16, 8)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        u_hat = net.prediction_vectors(x)
        assert u_hat.shape == (2, 1152, 10, 16)
        v, c = route(u_hat, 3)
        scores, v_net = net.forward_with_capsules(x)
    assert v.shape == (2, 10, 16) and scores.shape == (2, 10)
    torch.testing.assert_close(v_net, v)
    torch.testing.assert_close(scores, v.norm(dim=-1))
    # Couplings are a softmax over the parents (classes), not over the children.
    assert c.shape == (2, 1152, 10)
    torch.testing.assert_close(c.sum(2), torch.ones(2, 1152))
    assert not torch.allclose(c.sum(1), torch.ones(2, 10))
    assert not torch.allclose(c, torch.full_like(c, 0.1))  # three iterations moved them off uniform


def test_sizes_follow_channels_and_image_size() -> None:
    net = tiny(channels=3, num_classes=4, image_size=(32, 40))
    assert net.num_primary_caps == 4 * 8 * 12  # 24x32 after conv1, 8x12 after the strided conv
    scores, v = net.forward_with_capsules(torch.randn(2, 3, 32, 40))
    assert scores.shape == (2, 4) and v.shape == (2, 4, 16)
    assert net.reconstruct(v).shape == (2, 3, 32, 40)
    with pytest.raises(ConfigError, match="at least 17x17"):
        tiny(image_size=(16, 28))


def test_margin_loss_matches_a_hand_computed_value() -> None:
    lengths = torch.tensor([[0.95, 0.3], [0.2, 0.05]])
    targets = torch.tensor([0, 1])
    # Example 0: present class above m+ costs 0; absent 0.5 * (0.3 - 0.1)^2 = 0.02.
    # Example 1: present (0.9 - 0.05)^2 = 0.7225; absent 0.5 * (0.2 - 0.1)^2 = 0.005.
    expected = (0.02 + 0.7225 + 0.005) / 2
    assert margin_loss(lengths, targets).item() == pytest.approx(expected)
    assert margin_loss(torch.tensor([[0.9, 0.1]]), torch.tensor([0])).item() == 0.0


def test_reconstruction_loss_sums_squared_errors_per_image() -> None:
    recon = torch.zeros(2, 1, 2, 2)
    images = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5)])
    assert reconstruction_loss(recon, images).item() == pytest.approx((4 * 1.0 + 4 * 0.25) / 2)


def test_total_loss_is_margin_plus_0_0005_reconstruction() -> None:
    torch.manual_seed(0)
    net = tiny()
    images01 = torch.rand(3, 1, 28, 28)
    x = (images01 - 0.5) / 0.25
    y = torch.tensor([1, 4, 7])
    out = net.loss(x, y, images01)
    scores, v = net.forward_with_capsules(x)
    margin = margin_loss(scores, y)
    recon = reconstruction_loss(net.reconstruct(v, y), images01)
    torch.testing.assert_close(out.scores, scores)
    torch.testing.assert_close(out.margin, margin)
    torch.testing.assert_close(out.reconstruction, recon)
    torch.testing.assert_close(out.total, margin + 0.0005 * recon)
    assert 0.0005 * out.reconstruction.item() > 1e-3  # large enough that the check above means something
    # Without images01 the target is rebuilt from the normalised input; exact when pixels span [0, 1].
    images01[:, :, 0, 0], images01[:, :, 0, 1] = 0.0, 1.0
    x = (images01 - 0.5) / 0.25
    torch.testing.assert_close(rescale01(x), images01)
    torch.testing.assert_close(net.loss(x, y).total, net.loss(x, y, images01).total)


def test_decoder_sees_only_the_masked_capsule() -> None:
    torch.manual_seed(0)
    net = tiny(num_classes=3)
    v = torch.randn(2, 3, 16) * 0.3
    y = torch.tensor([0, 2])
    others = v.clone()
    others[0, 1:] = torch.randn(2, 16)
    others[1, :2] = torch.randn(2, 16)
    torch.testing.assert_close(net.reconstruct(v, y), net.reconstruct(others, y))
    # At inference the longest capsule (the prediction) is kept.
    predicted = v.norm(dim=-1).argmax(1)
    torch.testing.assert_close(net.reconstruct(v), net.reconstruct(v, predicted))


def test_tiny_capsnet_learns_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = tiny()
    images01 = torch.rand(16, 1, 28, 28)
    x, y = (images01 - 0.5) / 0.25, torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = net.loss(x, y, images01)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(out.total.item())
    assert all(p.grad is not None for p in net.parameters())  # the decoder trains too, through the loss
    assert losses[-1] < 0.8 * losses[0], losses


def test_onnx_export_has_a_dynamic_batch_and_matches_onnx_runtime(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    net = tiny().eval()
    path = tmp_path / "capsnet.onnx"
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(2, 1, 28, 28),), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    # Only the classifier path is exported: conv1, primary capsules and the routing weights, no decoder.
    exported = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    decoder = sum(p.numel() for p in net.decoder.parameters())
    assert exported == sum(p.numel() for p in net.parameters()) - decoder

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xb = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            ref = net(xb).numpy()
        got = session.run(None, {"input": xb.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - ref).max() < 1e-4
        assert (got.argmax(1) == ref.argmax(1)).all()
