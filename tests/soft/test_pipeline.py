from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import numpy as np
import pytest

from finecut.errors import ConfigError, ImageError, WeightsError
from finecut.soft import FAITHFUL, FAST, SoftConfig, soft_segment
from tests.soft._synthetic import blocks


def _check_invariants(alphas: np.ndarray, shape: tuple[int, int], n_layers: int) -> None:
    assert alphas.dtype == np.float32
    assert alphas.shape == (*shape, n_layers)
    assert alphas.min() >= 0.0 and alphas.max() <= 1.0
    assert np.abs(alphas.sum(2) - 1.0).max() < 1e-3
    assert alphas.max((0, 1)).min() >= 0.05  # no empty layer


@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_blocks_give_one_layer_per_block(mode: str) -> None:
    image, feats, labels = blocks()
    result = soft_segment(image, feats, n_layers=4, mode=mode, preprocessed=True)
    _check_invariants(result.alphas, labels.shape, 4)
    assert result.mode == mode
    # each layer is one block: mean alpha > 0.95 inside it, < 0.05 in the others
    per_block = np.array(
        [[result.alphas[labels == b, k].mean() for k in range(4)] for b in range(4)]
    )
    assert sorted(per_block.argmax(1).tolist()) == [0, 1, 2, 3]
    assert np.sort(per_block, axis=1)[:, -1].min() > 0.95
    assert np.sort(per_block, axis=1)[:, :-1].max() < 0.05
    expected = {"features", "superpixels", "affinities", "laplacian", "eigenvectors"}
    expected |= {"constrained", "grouping", "relaxed"}
    if mode == "fast":
        expected.add("lift")
    assert set(result.timings) == expected
    assert result.seconds == pytest.approx(sum(result.timings.values()))


def test_two_layers_merge_blocks() -> None:
    image, feats, labels = blocks()
    result = soft_segment(image, feats, n_layers=2, preprocessed=True)
    _check_invariants(result.alphas, labels.shape, 2)
    hard = result.alphas.argmax(2)
    for b in range(4):  # no block is cut between the two layers
        assert len(np.unique(hard[labels == b])) == 1


def test_more_layers_than_regions_returns_fewer(caplog: pytest.LogCaptureFixture) -> None:
    image, feats, labels = blocks()
    with caplog.at_level(logging.WARNING, logger="finecut.soft.pipeline"):
        result = soft_segment(image, feats, n_layers=7, preprocessed=True)
    _check_invariants(result.alphas, labels.shape, result.n_layers)
    assert result.n_layers == 4
    assert "7 layers asked, the image gave 4" in caplog.text


def test_default_five_layers_on_a_busier_image() -> None:
    rng = np.random.default_rng(3)
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    labels = (yy // 16) * 4 + xx // 16  # 12 tiles
    palette = rng.random((12, 3))
    image = np.clip(palette[labels] + 0.02 * rng.standard_normal((h, w, 3)), 0, 1)
    feats = rng.random((12, 3))[labels]
    result = soft_segment(image, feats, preprocessed=True)
    _check_invariants(result.alphas, (h, w), 5)


def test_raw_features_and_uint8_image() -> None:
    image, _, labels = blocks()
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((4, 9))[labels] * 3 + 0.1 * rng.standard_normal((*labels.shape, 9))
    result = soft_segment((image * 255).round().astype(np.uint8), raw, n_layers=4)
    _check_invariants(result.alphas, labels.shape, 4)
    assert result.features.shape == (*labels.shape, 3)
    assert result.features.min() >= 0 and result.features.max() <= 1


def test_colour_only_is_an_explicit_choice() -> None:
    image, _, labels = blocks()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chosen, so no warning
        result = soft_segment(image, "none", n_layers=4)
    _check_invariants(result.alphas, labels.shape, 4)


@pytest.mark.parametrize("features", [None, "auto", "embedding"])
def test_without_features_the_embedding_network_is_used(monkeypatch, features) -> None:
    """soft_segment(image) computes features like `finecut soft --features auto`."""
    import finecut.soft.semantic as semantic

    image, feats, labels = blocks()
    seen = []

    def fake_embedding(rgb, *, weights=None, device=None):
        seen.append((rgb.dtype, rgb.shape, weights, device))
        return np.repeat(feats, 3, axis=2)  # raw (H, W, 9) "embeddings"

    monkeypatch.setattr(semantic, "embedding_features", fake_embedding)
    kwargs = {} if features is None else {"features": features}
    result = soft_segment(image, n_layers=4, device="cpu", **kwargs)
    assert seen == [(np.dtype(np.uint8), (*labels.shape, 3), None, "cpu")]
    _check_invariants(result.alphas, labels.shape, 4)


def test_without_embedding_weights_auto_warns_and_embedding_refuses(monkeypatch) -> None:
    import finecut.soft.semantic as semantic

    monkeypatch.setattr(semantic, "has_embedded_embedding", lambda: False)
    image, _, labels = blocks()
    with pytest.warns(UserWarning, match="no embedded embedding network"):
        result = soft_segment(image, n_layers=4)
    _check_invariants(result.alphas, labels.shape, 4)
    with pytest.raises(WeightsError, match="features='none'"):
        soft_segment(image, "embedding", n_layers=4)


def test_unknown_features_name_is_refused() -> None:
    image, _, _ = blocks()
    with pytest.raises(ConfigError, match="one of auto, embedding, none"):
        soft_segment(image, "colour")


def test_auto_features_are_the_embedded_network_s() -> None:
    """The real network, once: soft_segment(image) == soft_segment(image, embed(image))."""
    from finecut.models.embedding import DEFAULT_EMBEDDING_WEIGHTS, load_embedding_model
    from finecut.soft.semantic import DEFAULT_EMBEDDING, has_embedded_embedding

    assert DEFAULT_EMBEDDING == DEFAULT_EMBEDDING_WEIGHTS
    if not has_embedded_embedding():
        pytest.skip("this finecut ships no embedding weights")
    image, _, _ = blocks()
    rgb = (image * 255).round().astype(np.uint8)
    auto = soft_segment(rgb, n_layers=3, device="cpu")
    given = soft_segment(rgb, load_embedding_model().embed(rgb), n_layers=3)
    np.testing.assert_allclose(auto.features, given.features, atol=1e-6)
    np.testing.assert_allclose(auto.alphas, given.alphas, atol=1e-5)


@pytest.mark.parametrize("mode", ["fast", "faithful"])
def test_progress_and_determinism(mode: str) -> None:
    image, feats, _ = blocks(seed=5)
    calls: list[tuple[str, int, int]] = []
    a = soft_segment(
        image, feats, mode=mode, preprocessed=True, progress=lambda *c: calls.append(c)
    )
    b = soft_segment(image, feats, mode=mode, preprocessed=True)
    np.testing.assert_array_equal(a.alphas, b.alphas)
    assert [c[0] for c in calls] == list(a.timings)
    assert [c[1] for c in calls] == list(range(1, len(calls) + 1))
    assert all(c[2] == len(calls) for c in calls)


def test_custom_config() -> None:
    image, feats, labels = blocks()
    config = SoftConfig(graph="superpixels", n_eigenvectors=8, relaxed_outer=2, relaxed_cg=10)
    result = soft_segment(image, feats, n_layers=4, preprocessed=True, config=config)
    assert result.mode == "custom"
    _check_invariants(result.alphas, labels.shape, 4)
    assert FAITHFUL.graph == "pixels" and FAST.graph == "superpixels"
    assert FAITHFUL.n_eigenvectors == FAST.n_eigenvectors == 100
    with pytest.raises(ConfigError, match="graph"):
        SoftConfig(graph="grid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_eigenvectors"):
        SoftConfig(n_eigenvectors=0)
    with pytest.raises(ConfigError, match="grouping_weighting"):
        SoftConfig(grouping_weighting="area")


@pytest.mark.parametrize(
    ("image", "features", "kwargs", "match"),
    [
        (np.zeros((16, 16)), None, {}, r"image must be \(H, W, 3\)"),
        (np.zeros((16, 16, 4)), None, {}, r"image must be \(H, W, 3\)"),
        (np.zeros((4, 16, 3)), None, {}, "at least 8x8"),
        (np.full((16, 16, 3), 2.0), None, {}, r"float image must be in \[0, 1\]"),
        (np.full((16, 16, 3), np.nan), None, {}, "NaN"),
        (np.zeros((16, 16, 3), bool), None, {}, "dtype bool"),
        (np.zeros((16, 16, 3)), np.zeros((15, 16, 3)), {}, r"features must be \(H, W, D\)"),
        (np.zeros((16, 16, 3)), np.zeros((16, 16, 4)), {"preprocessed": True}, "3 channels"),
        (np.zeros((16, 16, 3)), np.full((16, 16, 3), 3.0), {"preprocessed": True}, r"\[0, 1\]"),
        (np.zeros((16, 16, 3)), np.full((16, 16, 8), np.inf), {}, "NaN or infinite"),
    ],
)
def test_bad_inputs_raise_image_error(image, features, kwargs, match) -> None:
    with pytest.raises(ImageError, match=match):
        soft_segment(image, features, **kwargs)


def test_bad_options_raise_config_error() -> None:
    image, feats, _ = blocks()
    with pytest.raises(ConfigError, match="mode"):
        soft_segment(image, feats, mode="slow")  # type: ignore[arg-type]
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="n_layers"):
            soft_segment(image, feats, n_layers=bad)  # type: ignore[arg-type]


def test_import_stays_free_of_torch() -> None:
    import subprocess
    import sys

    code = "import sys, finecut.soft; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_grouping_dims_reach_the_kmeans_steps_and_leave_the_features_alone(monkeypatch) -> None:
    import finecut.soft.grouping as grouping_module
    import finecut.soft.pipeline as pipeline_module

    rng = np.random.default_rng(3)
    image, feats, labels = blocks()
    raw = np.concatenate([feats, 0.1 * rng.standard_normal((*labels.shape, 9))], axis=2)
    seen: list[int] = []
    original = pipeline_module.weighted_kmeans

    def recording(features, *args, **kwargs):
        seen.append(features.shape[1])
        return original(features, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "weighted_kmeans", recording)
    monkeypatch.setattr(grouping_module, "weighted_kmeans", recording)
    base = soft_segment(image, raw, n_layers=4, config=replace(FAST, grouping_dims=3))
    assert seen and set(seen) == {3}
    seen.clear()
    wide = soft_segment(image, raw, n_layers=4, config=replace(FAST, grouping_dims=6))
    assert seen and set(seen) == {6}  # initial segments and grouping (segments' mean features)
    np.testing.assert_array_equal(wide.features, base.features)  # the paper's 3-D features
    _check_invariants(wide.alphas, labels.shape, wide.n_layers)
    with pytest.raises(ConfigError, match="grouping_dims"):
        SoftConfig(grouping_dims=0)
