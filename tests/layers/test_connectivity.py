"""Tests of the SparseMask building blocks (finecut.layers.connectivity)."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from finecut.errors import ConfigError
from finecut.layers.connectivity import (
    PRUNE_THRESHOLD,
    SEARCH_BN_MOMENTUM,
    SPARSE_LOSS_WEIGHT,
    DecoderGraph,
    DenseDecoderStage,
    StageSpec,
    fully_dense_graph,
    keep_mask,
    prune,
    sparse_loss,
    upsample_sum,
)

EPS_LOG = math.log(1e-10)  # the official eps inside every log


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _randomise_bn(norm: torch.nn.BatchNorm2d, seed: int, affine: bool = True) -> None:
    """Give a BN non-trivial running statistics (and affine parameters) for eval-mode tests."""
    g = _gen(seed)
    c = norm.num_features
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        norm.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
        if affine:
            norm.weight.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
            norm.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# Theorems 1 and 2 of the supplementary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [1, 3])
def test_theorem1_concat_conv_equals_sum_of_split_convs(kernel: int) -> None:
    channels = [3, 5, 2, 7]
    features = [_randn(2, c, 6, 5, seed=i) for i, c in enumerate(channels)]
    weight = _randn(4, sum(channels), kernel, kernel, seed=99)
    concat = F.conv2d(torch.cat(features, dim=1), weight, padding=kernel // 2)
    parts = torch.split(weight, channels, dim=1)
    summed = sum(F.conv2d(f, w, padding=kernel // 2) for f, w in zip(features, parts, strict=True))
    torch.testing.assert_close(summed, concat, rtol=0, atol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((4, 5), (8, 10)), ((4, 5), (12, 15)), ((4, 5), (7, 13)), ((3, 3), (10, 4)), ((1, 1), (6, 7))],
)
def test_theorem2_bilinear_upsampling_commutes_with_1x1_conv(
    align_corners: bool, in_size: tuple[int, int], out_size: tuple[int, int]
) -> None:
    x = _randn(2, 6, *in_size, seed=1)
    weight = _randn(3, 6, 1, 1, seed=2)
    up_then_conv = F.conv2d(
        F.interpolate(x, size=out_size, mode="bilinear", align_corners=align_corners), weight
    )
    conv_then_up = F.interpolate(
        F.conv2d(x, weight), size=out_size, mode="bilinear", align_corners=align_corners
    )
    torch.testing.assert_close(conv_then_up, up_then_conv, rtol=0, atol=1e-12)
    # the library's fusion step is the right-hand side
    fused = upsample_sum([F.conv2d(x, weight)], out_size, align_corners=align_corners)
    torch.testing.assert_close(fused, up_then_conv, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# upsample_sum
# --------------------------------------------------------------------------------------------------


def test_upsample_sum_known_answer_and_scales() -> None:
    a = torch.full((1, 2, 1, 1), 3.0, dtype=torch.float64)  # a global-pool term: constant map
    b = torch.arange(2 * 4 * 4, dtype=torch.float64).view(1, 2, 4, 4)
    scales = torch.tensor([0.5, 2.0], dtype=torch.float64)
    out = upsample_sum([a, b], (4, 4), scales)
    torch.testing.assert_close(out, 1.5 + 2.0 * b)  # b already has the size: not resampled


def test_upsample_sum_gradcheck() -> None:
    a = _randn(1, 2, 2, 3, seed=3).requires_grad_()
    b = _randn(1, 2, 3, 2, seed=4).requires_grad_()
    scales = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: upsample_sum([a, b], (5, 4), s), (a, b, scales))


def test_upsample_sum_errors() -> None:
    a = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match="at least one term"):
        upsample_sum([], (4, 4))
    with pytest.raises(ValueError, match=r"terms\[1\] must have shape \(B, C, H, W\) = \(1, 2"):
        upsample_sum([a, torch.zeros(1, 3, 3, 3)], (4, 4))
    with pytest.raises(ValueError, match=r"scales must have shape \(M,\) = \(1,\)"):
        upsample_sum([a], (4, 4), torch.ones(2))
    with pytest.raises(ValueError, match="size must be"):
        upsample_sum([a], (0, 4))


# --------------------------------------------------------------------------------------------------
# DenseDecoderStage
# --------------------------------------------------------------------------------------------------

CHANNELS = (5, 3, 4, 6)
SIZES = ((2, 3), (4, 5), (1, 1), (7, 9))  # one at the target size, one 1x1 (like G)
TARGET = (7, 9)


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    return [
        _randn(2, c, *hw, seed=seed + i, dtype=dtype)
        for i, (c, hw) in enumerate(zip(CHANNELS, SIZES, strict=True))
    ]


def _stage(learn: bool, **kwargs) -> DenseDecoderStage:
    torch.manual_seed(0)
    stage = DenseDecoderStage(CHANNELS, out_channels=8, learn_connections=learn, **kwargs).double()
    _randomise_bn(stage.norm, seed=10)
    for k, norm in enumerate(stage.connection_norms or []):
        _randomise_bn(norm, seed=20 + k, affine=False)
    return stage


@pytest.mark.parametrize("relu6_inputs", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
def test_stage_equals_naive_concat_reference(align_corners: bool, relu6_inputs: bool) -> None:
    stage = _stage(False, align_corners=align_corners, relu6_inputs=relu6_inputs).eval()
    inputs = _inputs()
    if relu6_inputs:
        inputs = [3 * x for x in inputs]  # exercise both ends of ReLU6
    act = F.relu6 if relu6_inputs else (lambda t: t)
    upsampled = [
        F.interpolate(act(x), size=TARGET, mode="bilinear", align_corners=align_corners)
        for x in inputs
    ]
    big_weight = torch.cat([conv.weight for conv in stage.convs], dim=1)
    reference = stage.norm(F.conv2d(torch.cat(upsampled, dim=1), big_weight))
    torch.testing.assert_close(stage(inputs, TARGET), reference, rtol=0, atol=1e-10)


def test_learned_stage_equals_reference_in_eval_mode() -> None:
    stage = _stage(True).eval()
    with torch.no_grad():
        stage.connection_weights.copy_(torch.tensor([0.0, 0.3, 1.0, 1.9]))
    inputs = _inputs()
    reference = 0
    for x, conv, norm, w in zip(
        inputs, stage.convs, stage.connection_norms, stage.connection_weights, strict=True
    ):
        up = F.interpolate(x, size=TARGET, mode="bilinear", align_corners=False)
        reference = reference + w * norm(conv(up))  # BN in eval mode is affine: commutes with up
    reference = stage.norm(reference)
    torch.testing.assert_close(stage(inputs, TARGET), reference, rtol=0, atol=1e-10)


def test_stage_output_shape_and_noncontiguous_input() -> None:
    stage = _stage(True).eval()
    inputs = _inputs()
    expected = stage(inputs, TARGET)
    assert expected.shape == (2, 8, *TARGET)
    noncontig = [x.transpose(2, 3).contiguous().transpose(2, 3) for x in inputs]
    noncontig[0] = inputs[0].to(memory_format=torch.channels_last)
    assert not noncontig[1].is_contiguous()
    torch.testing.assert_close(stage(noncontig, TARGET), expected, rtol=0, atol=1e-12)


def test_stage_follows_input_dtype() -> None:
    stage = DenseDecoderStage([2, 3], out_channels=4, learn_connections=True).eval()
    out = stage([torch.randn(1, 2, 2, 2), torch.randn(1, 3, 4, 4)], (4, 4))
    assert out.dtype == torch.float32
    out64 = stage.double()(
        [torch.randn(1, 2, 2, 2).double(), torch.randn(1, 3, 4, 4).double()], (4, 4)
    )
    assert out64.dtype == torch.float64


def test_noise_only_in_training() -> None:
    stage = _stage(True)
    inputs = _inputs()
    stage.eval()
    torch.testing.assert_close(stage.connection_scales(), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(stage(inputs, TARGET), stage(inputs, TARGET), rtol=0, atol=0)

    stage.train()
    torch.manual_seed(1)
    first = stage(inputs, TARGET)
    second = stage(inputs, TARGET)
    assert not torch.allclose(first, second)

    quiet = _stage(True, noise_std=0.0).train()
    torch.testing.assert_close(quiet(inputs, TARGET), quiet(inputs, TARGET), rtol=0, atol=0)


def test_noise_is_gaussian_with_requested_std_and_clamped() -> None:
    stage = DenseDecoderStage([1] * 50, out_channels=1, learn_connections=True, noise_std=0.1)
    stage.train()
    torch.manual_seed(0)
    noise = torch.cat([stage.connection_scales() - 1.0 for _ in range(200)])  # 10000 draws
    assert abs(noise.mean().item()) < 0.005
    assert abs(noise.std().item() - 0.1) < 0.005
    with torch.no_grad():
        stage.connection_weights.fill_(2.0)
    scales = stage.connection_scales()
    assert scales.max().item() == 2.0 and (scales < 2.0).any()


def test_clamp_connections_keeps_weights_in_range() -> None:
    stage = DenseDecoderStage([2, 2, 2], out_channels=4, learn_connections=True)
    with torch.no_grad():
        stage.connection_weights.copy_(torch.tensor([-1.0, 0.5, 3.0]))
    stage.clamp_connections_()
    assert stage.connection_weights.tolist() == [0.0, 0.5, 2.0]
    assert stage.connection_weights.requires_grad

    # a big optimiser step followed by clamping stays in [0, 2]
    stage = _stage(True).train()
    opt = torch.optim.SGD([p for p in stage.parameters() if p.requires_grad], lr=100.0)
    stage(_inputs(), TARGET).pow(2).mean().backward()
    opt.step()
    stage.clamp_connections_()
    w = stage.connection_weights
    assert w.min().item() >= 0.0 and w.max().item() <= 2.0


def test_frozen_affine_connection_bn() -> None:
    stage = DenseDecoderStage([2, 3], out_channels=4, learn_connections=True)
    for norm in stage.connection_norms:
        assert norm.momentum == SEARCH_BN_MOMENTUM
        assert not any(p.requires_grad for p in norm.parameters())
        assert torch.equal(norm.weight, torch.ones(4)) and torch.equal(norm.bias, torch.zeros(4))
    assert stage.norm.momentum == SEARCH_BN_MOMENTUM
    trainable = {name for name, p in stage.named_parameters() if p.requires_grad}
    assert trainable == {
        "convs.0.weight",
        "convs.1.weight",
        "connection_weights",
        "norm.weight",
        "norm.bias",
    }

    plain = DenseDecoderStage([2, 3], out_channels=4)
    assert plain.connection_weights is None and plain.connection_norms is None
    assert plain.kept == (0, 1)


def test_kept_uses_the_pruning_threshold() -> None:
    stage = DenseDecoderStage([1, 1, 1, 1], out_channels=2, learn_connections=True)
    with torch.no_grad():
        stage.connection_weights.copy_(torch.tensor([0.0, 1e-3, 3e-3, 1.5]))
    assert stage.kept == (2, 3)


@pytest.mark.parametrize("learn", [False, True])
def test_gradients_reach_every_parameter_without_nan(learn: bool) -> None:
    stage = _stage(learn).train()
    inputs = [x.requires_grad_() for x in _inputs()]
    out = stage(inputs, TARGET)
    loss = out.pow(2).mean()
    if learn:
        loss = loss + SPARSE_LOSS_WEIGHT * sparse_loss([stage.connection_weights])
    loss.backward()
    assert torch.isfinite(out).all()
    for name, p in stage.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for x in inputs:
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_stage_gradcheck_eval_mode() -> None:
    stage = DenseDecoderStage([2, 3], out_channels=2, learn_connections=True).double().eval()
    _randomise_bn(stage.norm, 1)
    a = _randn(1, 2, 2, 2, seed=5).requires_grad_()
    b = _randn(1, 3, 3, 2, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: stage([a, b], (4, 3)), (a, b))


def test_state_dict_round_trip() -> None:
    stage = _stage(True).eval()
    with torch.no_grad():
        stage.connection_weights.copy_(torch.tensor([0.1, 0.2, 1.7, 0.0]))
    buffer = io.BytesIO()
    torch.save(stage.state_dict(), buffer)
    buffer.seek(0)
    loaded = DenseDecoderStage(CHANNELS, out_channels=8, learn_connections=True).double()
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    loaded.eval()
    assert "connection_weights" in stage.state_dict()
    assert "connection_norms.0.running_var" in stage.state_dict()
    torch.testing.assert_close(loaded(_inputs(), TARGET), stage(_inputs(), TARGET), rtol=0, atol=0)


def test_stage_errors() -> None:
    stage = DenseDecoderStage([2, 3], out_channels=4)
    with pytest.raises(ValueError, match=r"expected 2 inputs with channels \[2, 3\], got 1"):
        stage([torch.zeros(1, 2, 2, 2)], (4, 4))
    with pytest.raises(ValueError, match=r"inputs\[1\] must have shape \(B, 3, H, W\)"):
        stage([torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 2, 2)], (4, 4))
    with pytest.raises(ValueError, match=r"inputs\[0\] must have shape \(B, 2, H, W\)"):
        stage([torch.zeros(2, 2, 2), torch.zeros(1, 3, 2, 2)], (4, 4))
    with pytest.raises(ValueError, match="size must be"):
        stage([torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2)], (4,))
    with pytest.raises(ValueError, match="in_channels must be a non-empty"):
        DenseDecoderStage([], out_channels=4)
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        DenseDecoderStage([2], noise_std=-1.0)


# --------------------------------------------------------------------------------------------------
# sparse_loss
# --------------------------------------------------------------------------------------------------


def _w(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_sparse_loss_all_ones_is_two_log_two_per_stage_summed() -> None:
    # v = 0.5 everywhere: entropy log 2, mean 0.5 so CE(alpha, 0.5) = log 2 whatever alpha
    weights = [
        torch.ones(2, dtype=torch.float64),
        torch.ones(4, dtype=torch.float64),
        torch.ones(10, dtype=torch.float64),
    ]
    expected = 3 * 2 * math.log(2)
    assert sparse_loss(weights).item() == pytest.approx(expected, abs=1e-8)


def test_sparse_loss_all_zero_and_all_two() -> None:
    # n = 4, alpha = 0.5; n = 10, alpha = 0.2. Entropy is 0 (up to eps), CE is eps-limited.
    assert sparse_loss([torch.zeros(4, dtype=torch.float64)]).item() == pytest.approx(
        -0.5 * EPS_LOG, rel=1e-8
    )
    assert sparse_loss([torch.zeros(10, dtype=torch.float64)]).item() == pytest.approx(
        -0.2 * EPS_LOG, rel=1e-8
    )
    assert sparse_loss([torch.full((10,), 2.0, dtype=torch.float64)]).item() == pytest.approx(
        -0.8 * EPS_LOG, rel=1e-8
    )
    # out-of-range weights are clamped like 0 and 2
    assert sparse_loss([_w(-1.0, 3.0)]).item() == pytest.approx(
        sparse_loss([_w(0.0, 2.0)]).item(), abs=1e-12
    )


def test_sparse_loss_hand_computed_mixed_and_minimum() -> None:
    # w = (0.5, 1.5): v = (0.25, 0.75), entropy H(0.25) each; mean 0.5, alpha 0.5 -> CE = log 2
    expected = _binary_entropy(0.25) + math.log(2)
    assert sparse_loss([_w(0.5, 1.5)]).item() == pytest.approx(expected, abs=1e-8)
    # n = 8, alpha = 0.25: exactly two connections at 2 is the binary optimum, loss H(0.25)
    two_up = sparse_loss([_w(2, 2, 0, 0, 0, 0, 0, 0)]).item()
    one_up = sparse_loss([_w(2, 0, 0, 0, 0, 0, 0, 0)]).item()
    three_up = sparse_loss([_w(2, 2, 2, 0, 0, 0, 0, 0)]).item()
    assert two_up == pytest.approx(_binary_entropy(0.25), abs=1e-8)
    assert one_up == pytest.approx(-(0.25 * math.log(0.125) + 0.75 * math.log(0.875)), abs=1e-8)
    assert two_up < one_up and two_up < three_up


def test_sparse_loss_gradcheck() -> None:
    a = _w(0.3, 1.1, 1.7).requires_grad_()
    b = _w(0.9, 0.2, 1.5, 1.2, 0.6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: sparse_loss([a, b]), (a, b))


def test_sparse_loss_descent_keeps_about_two_connections_per_stage() -> None:
    """Gradient descent on the sparse loss alone (clamping after each step, as in the search)
    drives one or two connections per stage to 2 and every other one to 0. With alpha = 0.5 (n = 2,
    4) the optimum is reached exactly; in larger stages a single survivor is a local minimum that
    descent can settle in, so "about two" is what the loss guarantees."""
    g = _gen(1)
    sizes = (2, 4, 8, 16)
    weights = [
        torch.nn.Parameter(1 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64))
        for n in sizes
    ]
    opt = torch.optim.SGD(weights, lr=3.0)
    for _ in range(200):
        opt.zero_grad()
        sparse_loss(weights).backward()
        opt.step()
        with torch.no_grad():
            for w in weights:
                w.clamp_(0, 2)
    up = [int((w > 1.99).sum()) for w in weights]
    down = [int((w < PRUNE_THRESHOLD).sum()) for w in weights]
    assert [u + d for u, d in zip(up, down, strict=True)] == list(sizes)  # fully binary
    assert up[0] == 1 and up[1] == 2
    assert all(1 <= u <= 2 for u in up)
    assert [len(keep_mask(w).nonzero()) for w in weights] == up


def test_sparse_loss_errors() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        sparse_loss([])
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(n_l,\)"):
        sparse_loss([torch.ones(2), torch.ones(2, 2)])
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape \(n_l,\) with n_l >= 1"):
        sparse_loss([torch.ones(0)])


def test_sparse_loss_weight_constant() -> None:
    assert SPARSE_LOSS_WEIGHT == 0.01
    assert PRUNE_THRESHOLD == 1e-3


# --------------------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------------------


def test_fully_dense_graph_structure() -> None:
    graph = fully_dense_graph(3)
    assert [s.name for s in graph.stages] == ["D2", "D1", "D0"]
    assert graph.stage("D2").inputs == ("E2", "G")
    assert graph.stage("D1").inputs == ("E2", "E1", "G", "D2")
    assert graph.stage("D0").inputs == ("E2", "E1", "E0", "G", "D2", "D1")
    assert graph.stage("D0").size_from == "E0"
    assert graph.final == "D0"
    assert graph.consumers("D2") == ("D1", "D0")
    # MobileNet-V2's 9 features: stage l has 2 (n - l) connections
    mnv2 = fully_dense_graph(9)
    assert [len(s.inputs) for s in mnv2.stages] == [2 * (9 - level) for level in range(8, -1, -1)]
    channels = (32, 16, 24, 32, 64, 96, 160, 320, 1280)
    assert mnv2.in_channels("D7", channels, 64) == (1280, 320, 1280, 64)


def test_graph_dict_round_trip_through_yaml() -> None:
    graph = fully_dense_graph(3)
    text = yaml.safe_dump(graph.to_dict())
    assert DecoderGraph.from_dict(yaml.safe_load(text)) == graph


def test_graph_validation() -> None:
    with pytest.raises(ConfigError, match="unknown decoder graph keys: extra"):
        DecoderGraph.from_dict({"stages": [], "extra": 1})
    with pytest.raises(ConfigError, match="unknown decoder stage keys: depth"):
        DecoderGraph.from_dict(
            {"stages": [{"name": "D0", "inputs": ["E0"], "size_from": "E0", "depth": 3}]}
        )
    with pytest.raises(ConfigError, match="neither a source"):
        DecoderGraph((StageSpec("D1", ("D0",), "E1"), StageSpec("D0", ("E0",), "E0")))
    with pytest.raises(ConfigError, match="repeated or names a source"):
        DecoderGraph((StageSpec("D0", ("E0",), "E0"), StageSpec("D0", ("E1",), "E0")))
    with pytest.raises(ConfigError, match="has no inputs"):
        StageSpec("D0", (), "E0")
    with pytest.raises(ConfigError, match="lists an input twice"):
        StageSpec("D0", ("E0", "E0"), "E0")
    with pytest.raises(ConfigError, match="needs at least one stage"):
        DecoderGraph(())


# --------------------------------------------------------------------------------------------------
# prune
# --------------------------------------------------------------------------------------------------


def _inputs_of(result, name: str) -> tuple[str, ...]:
    return result.graph.stage(name).inputs


def test_keep_mask_threshold() -> None:
    w = _w(0.0, 2e-3, 2.1e-3, -1.0, 5.0, 1e-4)
    assert keep_mask(w).tolist() == [False, False, True, True, True, False]
    assert keep_mask(w, threshold=1e-5).tolist() == [False, True, True, True, True, True]


def test_prune_threshold_and_orphan_stage() -> None:
    graph = fully_dense_graph(2)  # D1: (E1, G); D0: (E1, E0, G, D1)
    result = prune(graph, [_w(1.0, 0.0), _w(0.0, 1.5, 2e-3, 0.5)])
    assert _inputs_of(result, "D1") == ("E1",)
    assert _inputs_of(result, "D0") == ("E0", "D1")
    assert result.connections == {"D1": ((0,),), "D0": ((1,), (3,))}
    # D0 drops D1: D1 has no consumer and is removed
    result = prune(graph, [_w(1.0, 1.0), _w(0.0, 1.5, 0.0, 0.0)])
    assert [s.name for s in result.graph.stages] == ["D0"]
    assert result.removed == ("D1",)
    # mapping by stage name works the same
    by_name = prune(graph, {"D1": _w(1.0, 1.0), "D0": _w(0.0, 1.5, 0.0, 0.0)})
    assert by_name.graph == result.graph


def test_prune_orphans_cascade_until_stable() -> None:
    graph = fully_dense_graph(3)  # D2: (E2, G); D1: (E2, E1, G, D2); D0: (E2, E1, E0, G, D2, D1)
    # D2 feeds only D1, D1 feeds nobody: D1 goes, then D2
    result = prune(graph, [_w(1, 1), _w(0, 1, 0, 1), _w(0, 0, 1, 1, 0, 0)])
    assert [s.name for s in result.graph.stages] == ["D0"]
    assert _inputs_of(result, "D0") == ("E0", "G")
    assert result.removed == ("D1", "D2")


def test_prune_empty_stage_cascades_to_consumers() -> None:
    graph = fully_dense_graph(3)
    # D2 keeps nothing; D1 took only D2, so D1 loses every input too
    result = prune(graph, [_w(0, 0), _w(0, 0, 0, 1), _w(0, 0, 1, 0, 1, 1)])
    assert [s.name for s in result.graph.stages] == ["D0"]
    assert _inputs_of(result, "D0") == ("E0",)
    assert result.connections["D0"] == ((2,),)


def test_prune_final_stage_without_inputs_is_an_error() -> None:
    graph = fully_dense_graph(2)
    with pytest.raises(ValueError, match="final stage 'D0' lost every input"):
        prune(graph, [_w(1, 1), _w(0, 0, 0, 1e-4)])
    with pytest.raises(ValueError, match=r"weights of stage 'D1' must have shape \(2,\)"):
        prune(graph, [_w(1, 1, 1), _w(1, 1, 1, 1)])
    with pytest.raises(ValueError, match="expected connection weights for 2 stages, got 1"):
        prune(graph, [_w(1, 1)])
    with pytest.raises(ValueError, match=r"no connection weights for stages \['D0'\]"):
        prune(graph, {"D1": _w(1, 1)})


def test_prune_duplicate_stage_rewired_to_the_first() -> None:
    # D3 keeps {E3}; D2 keeps {E3} too (a duplicate); D1 takes D3, D0 takes D2 and D1.
    # D2 is removed and D0's D2 connection (index 6) now reads D3.
    graph4 = fully_dense_graph(4)  # D0 inputs: E3 E2 E1 E0 G D3 D2 D1 -> indices 0..7
    d3 = _w(1, 0)  # E3 G
    d2 = _w(1, 0, 0, 0)  # E3 E2 G D3
    d1 = _w(0, 0, 1, 0, 1, 0)  # E3 E2 E1 G D3 D2
    d0 = _w(0, 0, 0, 1, 0, 0, 1, 1)
    result = prune(graph4, [d3, d2, d1, d0])
    assert [s.name for s in result.graph.stages] == ["D3", "D1", "D0"]
    assert _inputs_of(result, "D0") == ("E0", "D3", "D1")
    assert result.connections["D0"] == ((3,), (6,), (7,))
    assert result.replaced == {"D2": "D3"}
    graph = fully_dense_graph(3)  # D0 inputs: E2 E1 E0 G D2 D1 -> indices 0..5
    # a consumer that took both keeps one connection with both indices merged
    result = prune(graph, [_w(1, 0), _w(1, 0, 0, 0), _w(0, 0, 1, 0, 1, 1)])
    assert _inputs_of(result, "D0") == ("E0", "D2")
    assert result.connections["D0"] == ((2,), (4, 5))
    # switched off: both stay
    result = prune(
        graph,
        [_w(1, 0), _w(1, 0, 0, 0), _w(0, 0, 1, 0, 1, 1)],
        remove_duplicates=False,
        remove_subsets=False,
    )
    assert [s.name for s in result.graph.stages] == ["D2", "D1", "D0"]


def test_prune_chained_duplicates_reach_a_fixed_point() -> None:
    graph = fully_dense_graph(5)
    # D3 duplicates D4 ({E4}); D2 takes {D3} -> rewired to {D4}, now duplicating D1 = {D4};
    # so D1 goes too and D0's D1 connection is merged into its D2 connection.
    d4 = _w(1, 0)  # E4 G
    d3 = _w(1, 0, 0, 0)  # E4 E3 G D4
    d2 = _w(0, 0, 0, 0, 0, 1)  # E4 E3 E2 G D4 D3
    d1 = _w(0, 0, 0, 0, 0, 1, 0, 0)  # E4 E3 E2 E1 G D4 D3 D2
    d0 = _w(0, 0, 0, 0, 1, 0, 0, 0, 1, 1)  # E4 E3 E2 E1 E0 G D4 D3 D2 D1
    result = prune(graph, [d4, d3, d2, d1, d0])
    assert [s.name for s in result.graph.stages] == ["D4", "D2", "D0"]
    assert _inputs_of(result, "D2") == ("D4",)
    assert result.connections["D2"] == ((5,),)
    assert _inputs_of(result, "D0") == ("E0", "D2")
    assert result.connections["D0"] == ((4,), (8, 9))
    assert result.replaced == {"D3": "D4", "D1": "D2"}


def test_prune_subset_stage() -> None:
    graph = fully_dense_graph(3)
    # D2 = {E2} is a subset of D1 = {E2, E1}, and D2's only consumer (D0) also takes D1
    weights = [_w(1, 0), _w(1, 1, 0, 0), _w(0, 0, 1, 0, 1, 1)]
    result = prune(graph, weights)
    assert [s.name for s in result.graph.stages] == ["D1", "D0"]
    assert _inputs_of(result, "D0") == ("E0", "D1")
    assert result.connections["D0"] == ((2,), (5,))
    assert [s.name for s in prune(graph, weights, remove_subsets=False).graph.stages] == [
        "D2",
        "D1",
        "D0",
    ]
    # not removed when the later stage consumes it (its consumers are not all D1's consumers)
    weights = [_w(1, 0), _w(1, 0, 0, 1), _w(0, 0, 1, 0, 1, 1)]
    assert [s.name for s in prune(graph, weights).graph.stages] == ["D2", "D1", "D0"]
    # the official rule only removes the earlier stage: a later subset stage stays
    weights = [_w(1, 1), _w(1, 0, 0, 0), _w(0, 0, 1, 0, 1, 1)]
    assert [s.name for s in prune(graph, weights).graph.stages] == ["D2", "D1", "D0"]


# --------------------------------------------------------------------------------------------------
# from_pruned and a whole searched decoder
# --------------------------------------------------------------------------------------------------


def test_from_pruned_reproduces_searched_stage_in_eval_mode() -> None:
    searched = _stage(True).eval()
    with torch.no_grad():
        searched.connection_weights.copy_(torch.tensor([1.3, 0.0, 0.7, 1e-3]))
    kept = searched.kept
    assert kept == (0, 2)
    pruned = DenseDecoderStage.from_pruned(searched, [(k,) for k in kept]).eval()
    assert pruned.in_channels == (5, 4) and pruned.connection_weights is None
    inputs = _inputs()
    with torch.no_grad():
        searched.connection_weights[3] = 0.0  # what the pruned stage drops must contribute 0
    expected = searched(inputs, TARGET)
    torch.testing.assert_close(pruned([inputs[0], inputs[2]], TARGET), expected, rtol=0, atol=1e-10)


def test_from_pruned_merges_rewired_connections() -> None:
    searched = DenseDecoderStage([3, 3, 2], out_channels=4, learn_connections=True).double()
    for k, norm in enumerate(searched.connection_norms):
        _randomise_bn(norm, seed=k, affine=False)
    _randomise_bn(searched.norm, seed=7)
    with torch.no_grad():
        searched.connection_weights.copy_(torch.tensor([0.4, 1.6, 0.0]))
    searched.eval()
    x = _randn(1, 3, 3, 3, seed=1)
    z = _randn(1, 2, 2, 2, seed=2)
    merged = DenseDecoderStage.from_pruned(searched, [(0, 1)]).eval()
    torch.testing.assert_close(merged([x], (5, 5)), searched([x, x, z], (5, 5)), rtol=0, atol=1e-10)

    fresh = DenseDecoderStage.from_pruned(searched, [(0,)], copy_weights=False)
    assert not torch.equal(fresh.convs[0].weight, searched.convs[0].weight)
    with pytest.raises(ValueError, match="different channel counts"):
        DenseDecoderStage.from_pruned(searched, [(0, 2)])
    with pytest.raises(ValueError, match=r"indices \[3\] out of range"):
        DenseDecoderStage.from_pruned(searched, [(3,)])
    with pytest.raises(ValueError, match="at least one connection"):
        DenseDecoderStage.from_pruned(searched, [])


def _run_decoder(graph: DecoderGraph, stages: dict, features: list[Tensor]) -> Tensor:
    values = {f"E{i}": f for i, f in enumerate(features)}
    values["G"] = F.adaptive_avg_pool2d(features[-1], 1)
    for spec in graph.stages:
        size = tuple(values[spec.size_from].shape[-2:])
        values[spec.name] = stages[spec.name]([values[n] for n in spec.inputs], size)
    return values[graph.final]


def test_search_prune_retrain_pipeline() -> None:
    """A 3-feature FDN: search forward/backward, prune, and the pruned decoder matches in eval."""
    encoder_channels = (4, 6, 8)
    features = [
        _randn(2, c, 16 // 2**i, 16 // 2**i, seed=i) for i, c in enumerate(encoder_channels)
    ]
    graph = fully_dense_graph(3)
    torch.manual_seed(0)
    searched = {
        s.name: DenseDecoderStage(
            graph.in_channels(s.name, encoder_channels, 8), 8, learn_connections=True
        ).double()
        for s in graph.stages
    }
    params = [p for m in searched.values() for p in m.parameters() if p.requires_grad]
    out = _run_decoder(graph, searched, features)
    loss = out.pow(2).mean() + SPARSE_LOSS_WEIGHT * sparse_loss(
        [searched[s.name].connection_weights for s in graph.stages]
    )
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)

    weights = {"D2": _w(1.2, 0.0), "D1": _w(0.0, 0.8, 0.0, 1.5), "D0": _w(0, 0, 1.1, 0.3, 0, 1.9)}
    for name, w in weights.items():
        with torch.no_grad():
            searched[name].connection_weights.copy_(w)
        searched[name].eval()
        for norm in [searched[name].norm, *searched[name].connection_norms]:
            _randomise_bn(norm, seed=len(name), affine=False)
    result = prune(graph, weights)
    assert _inputs_of(result, "D0") == ("E0", "G", "D1")
    pruned = {
        name: DenseDecoderStage.from_pruned(searched[name], result.connections[name]).eval()
        for name in result.connections
    }
    expected = _run_decoder(graph, searched, features)
    torch.testing.assert_close(
        _run_decoder(result.graph, pruned, features), expected, rtol=0, atol=1e-10
    )
