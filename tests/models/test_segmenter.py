"""Segmenter: every downsampling x decoder variant, SPN head, configs, pruning."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from finecut.errors import ConfigError
from finecut.layers import DecoderGraph, StageSpec, prune
from finecut.models.segmenter import (
    DOWNSAMPLE_MODES,
    Segmenter,
    SegmenterConfig,
    StridedPool,
    load_config,
    pruned_segmenter,
    save_config,
)

# D4 <- E4, G; D2 <- E2, D4; D0 <- E0, E1, D2: a small hand-made "pruned" decoder
SMALL_GRAPH = DecoderGraph(
    (
        StageSpec("D4", ("E4", "G"), "E4"),
        StageSpec("D2", ("E2", "D4"), "E2"),
        StageSpec("D0", ("E0", "E1", "D2"), "E0"),
    )
)
DECODERS = {
    "fdn": {},
    "fdn-search": {"search": True},
    "pruned": {"decoder": "pruned", "graph": SMALL_GRAPH},
}


def _model(seed: int = 0, **kwargs) -> Segmenter:
    torch.manual_seed(seed)
    return Segmenter(SegmenterConfig(**kwargs), pretrained=False)


def _check_backward(model: Segmenter, size=(64, 64)) -> None:
    model.train()
    image = torch.rand(2, 3, *size)
    logits = model(image)
    assert logits.shape == (2, model.config.num_classes, *size)
    assert torch.isfinite(logits).all()
    (logits.square().mean() + logits[:, 0].mean()).backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen affine of SparseMask's per-connection BN
            continue
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("downsample", DOWNSAMPLE_MODES)
def test_forward_backward_every_variant(downsample: str, decoder: str) -> None:
    model = _model(downsample=downsample, **DECODERS[decoder])
    _check_backward(model)
    if downsample == "strided":
        assert model.replaced_layers == ()
    else:  # the 5 stride-2 convs of EfficientNet-Lite0
        assert len(model.replaced_layers) == 5
        assert all(
            isinstance(model.encoder.get_submodule(n), StridedPool) for n in model.replaced_layers
        )


def test_predicted_p_and_odd_sizes() -> None:
    model = _model(downsample="poly", poly_p="predicted")
    _check_backward(model, size=(65, 47))


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "mobilenet_v2"])
def test_pooling_after_the_activation(encoder: str) -> None:
    model = _model(encoder=encoder, downsample="poly", pool_after="activation")
    assert len(model.replaced_layers) == 5
    assert not any(n.endswith("conv") for n in model.replaced_layers[1:])  # whole blocks
    _check_backward(model, size=(63, 64))


def test_pooling_after_the_activation_needs_blocks() -> None:
    with pytest.raises(ConfigError, match="pool_after: conv"):
        _model(encoder="resnet50", downsample="max", pool_after="activation")


def test_spn_head_every_parameter_gets_a_gradient() -> None:
    model = _model(spn_head=True, search=True)
    torch.nn.init.normal_(model.spn.out[-1].weight, std=0.1)  # leave the zero start
    _check_backward(model)


def test_spn_head_starts_as_identity_then_refines() -> None:
    with_spn = _model(seed=3, spn_head=True).eval()
    without = copy.deepcopy(with_spn)
    without.spn = None
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(with_spn(image), without(image), rtol=0, atol=0)
        torch.nn.init.normal_(with_spn.spn.out[-1].weight, std=0.1)
        assert not torch.allclose(with_spn(image), without(image))


@pytest.mark.parametrize("pool_after", ["conv", "activation"])
def test_pooling_keeps_the_encoder_weights(pool_after: str) -> None:
    strided = _model(seed=1, downsample="strided").encoder.state_dict()
    for mode in ("max", "poly"):
        pooled = _model(seed=1, downsample=mode, pool_after=pool_after).encoder.state_dict()
        for key, value in pooled.items():
            if ".pool." in key:  # P-pooling exponents are new
                continue
            torch.testing.assert_close(value, strided[key.replace(".layer.", ".")])


def test_state_dict_round_trip(tmp_path: Path) -> None:
    kwargs = {"downsample": "poly", "search": True, "spn_head": True}
    model = _model(seed=0, **kwargs)
    with torch.no_grad():
        model.spn.out[-1].weight.normal_()
    model.train()
    model(torch.rand(2, 3, 64, 64))  # move the BN statistics
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = _model(seed=1, **kwargs)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(image), model.eval()(image))


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    cfg = SegmenterConfig(downsample="max", decoder="pruned", graph=SMALL_GRAPH, spn_head=True)
    path = save_config(tmp_path / "model.yaml", cfg.to_dict())
    loaded = SegmenterConfig.from_dict(load_config(path))
    assert loaded == cfg
    assert isinstance(loaded.graph, DecoderGraph)
    assert SegmenterConfig.from_dict(SegmenterConfig().to_dict()) == SegmenterConfig()


def test_config_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown segmenter config keys: colour, spn"):
        SegmenterConfig.from_dict({"spn": True, "colour": 1})
    with pytest.raises(ConfigError, match="downsample"):
        SegmenterConfig(downsample="stride")
    with pytest.raises(ConfigError, match="needs a graph"):
        SegmenterConfig(decoder="pruned")
    with pytest.raises(ConfigError, match="unknown decoder graph keys"):
        SegmenterConfig.from_dict({"decoder": "pruned", "graph": {"stages": [], "x": 1}})


def test_pruned_decoder_from_prune_result() -> None:
    searched = _model(seed=2, search=True)
    searched.train()
    searched(torch.rand(2, 3, 64, 64))  # BN statistics of every connection
    weights = searched.decoder.connection_weights()
    with torch.no_grad():  # keep about two inputs per stage
        for w in weights.values():
            w.zero_()
            w[:2] = torch.tensor([1.5, 0.7])[: w.numel()]
    result = prune(searched.decoder.graph, weights)
    pruned = pruned_segmenter(searched, result)
    assert pruned.config.decoder == "pruned" and not pruned.config.search
    assert pruned.decoder_num_parameters() < searched.decoder_num_parameters() / 3
    # the folded weights reproduce the searched model in eval mode
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            pruned.eval()(image), searched.eval()(image), atol=1e-4, rtol=1e-4
        )
    # the config alone (what `finecut prune` writes) builds the same architecture
    rebuilt = Segmenter(SegmenterConfig.from_dict(pruned.config.to_dict()), pretrained=False)
    assert rebuilt.decoder_num_parameters() == pruned.decoder_num_parameters()
    rebuilt.load_state_dict(pruned.state_dict())
    full = _model(seed=2)
    assert rebuilt.decoder_num_parameters() < full.decoder_num_parameters() / 3


def test_search_mode_sparse_loss_and_clamp() -> None:
    model = _model(search=True)
    loss = model.sparse_loss()
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    weights = model.decoder.connection_weights()
    assert all(w.grad is not None for w in weights.values())
    with torch.no_grad():
        for w in weights.values():
            w.fill_(3.0)
    model.clamp_connections_()
    assert all(float(w.detach().max()) == 2.0 for w in weights.values())
    with pytest.raises(ValueError, match="search mode"):
        _model().sparse_loss()


def test_bfloat16_autocast_forward_backward() -> None:
    """What training on CUDA runs (autocast), exercised on the CPU: dtypes fit, grads finite."""
    model = _model(downsample="poly", poly_p="predicted", spn_head=True, search=True)
    torch.nn.init.normal_(model.spn.out[-1].weight, std=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.rand(2, 3, 64, 64))
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 11, 64, 64)
    logits.float().square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_graph_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="invalid segmenter config"):
        SegmenterConfig.from_dict({"decoder": "pruned", "graph": {"stages": [{"name": "D0"}]}})
    deep = {"stages": [{"name": "D0", "inputs": ["E7"], "size_from": "E0"}]}
    with pytest.raises(ConfigError, match="only 5 features"):
        Segmenter(SegmenterConfig(decoder="pruned", graph=deep), pretrained=False)


# ----------------------------------------------------------------- test-time augmentation


def test_multiscale_probs_known_answers() -> None:
    """One pass at scale 1 is the softmax; the flip adds the mirrored pass mirrored back; several
    scales are the mean of the single-scale results; a position-blind model on a constant image
    gives the same at every scale; bad scales are refused."""
    from finecut.errors import ConfigError
    from finecut.models.segmenter import multiscale_probs

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).double()
    x = torch.rand(2, 3, 12, 20, dtype=torch.float64)
    with torch.no_grad():
        one = multiscale_probs(conv, x)
        assert torch.allclose(one, conv(x).float().softmax(1))
        assert torch.allclose(one.sum(1), torch.ones(2, 12, 20))
        flipped = multiscale_probs(conv, x, flip=True)
        mirror = conv(x.flip(-1)).float().softmax(1).flip(-1)
        assert torch.allclose(flipped, (one + mirror) / 2)
        assert not torch.allclose(flipped, one)  # the conv is not mirror-symmetric
        several = multiscale_probs(conv, x, (0.5, 1.0, 1.5))
        parts = [multiscale_probs(conv, x, (s,)) for s in (0.5, 1.0, 1.5)]
        assert torch.allclose(several, sum(parts) / 3)
        assert several.shape == (2, 5, 12, 20)
        pointwise = torch.nn.Conv2d(3, 4, 1).double()
        flat = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
        assert torch.allclose(
            multiscale_probs(pointwise, flat, (0.5, 2.0), flip=True),
            multiscale_probs(pointwise, flat),
            atol=1e-6,
        )
    for bad in ((), (0.0,), (1.0, -1.0), (float("nan"),)):
        with pytest.raises(ConfigError, match="scales"):
            multiscale_probs(conv, x, bad)


def test_resize_by_known_answers() -> None:
    """Shrinking averages areas, the same size is the input itself, enlarging is bilinear."""
    import torch.nn.functional as F

    from finecut.models.resize import resize_by

    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    half = resize_by(x, 0.5)
    assert torch.equal(half, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]], dtype=torch.float64))
    assert resize_by(x, 1.1) is x  # 4 * 1.1 rounds to 4
    big = resize_by(x, 1.5)
    want = F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False)
    assert torch.equal(big, want)
    assert resize_by(x, 0.01).shape == (1, 1, 1, 1)
