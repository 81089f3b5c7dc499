"""The learned keep decision: region features, the model file, and undoing distrusted regions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from finecut.errors import WeightsError
from finecut.refine.keep import (
    FEATURES,
    KeepModel,
    KeepTrees,
    apply_keep,
    load_keep_model,
    region_features,
)

from .test_support import _photo, _square  # the same square photo as the edge check's tests


def _model(bias: float, weight: np.ndarray | None = None) -> KeepModel:
    f = len(FEATURES)
    return KeepModel(np.zeros(f), np.ones(f), np.zeros(f) if weight is None else weight, bias, 0.5)


def test_region_features_of_a_shifted_square() -> None:
    # the output moves the square 3 rows down: two changed strips, 3 x 30 px each; the one
    # below is added, the one above removed
    coarse = _square()
    prob = _square(shift_rows=3).astype(np.float32)
    crm = prob * 0.9
    box, labels, f = region_features(_photo(), coarse, prob, crm)
    assert f.shape == (2, len(FEATURES))
    col = {name: i for i, name in enumerate(FEATURES)}
    assert sorted(np.exp(f[:, col["log_area"]]) - 1) == pytest.approx([90, 90])
    assert sorted(f[:, col["added"]]) == [0.0, 1.0]
    # the CRM (0.9 where the output is 1, 0 elsewhere) agrees with every changed pixel; its
    # confidence is 0.8 in the added strip and 1 in the removed one
    assert f[:, col["crm_agrees"]] == pytest.approx([1, 1])
    added = f[:, col["added"]] == 1
    assert f[added, col["crm_confidence"]] == pytest.approx([0.8])
    assert f[~added, col["crm_confidence"]] == pytest.approx([1.0])
    # the input's boundary is on the square's edge, the output's 3 px off it: the ratio < 1
    assert (f[:, col["log_support_ratio"]] < -1).all()
    assert (f[:, col["has_in_boundary"]] == 1).all() and (f[:, col["has_out_boundary"]] == 1).all()
    # each strip reaches 3 px (within a pixel, the 3x3 distance transform) from the outline
    assert (np.expm1(f[:, col["log_reach"]]) <= 4.5).all()
    # the added strip has the background's colour, the removed one the object's: both changes
    # go against the colour evidence
    assert f[:, col["colour_evidence"]] == pytest.approx([-1, -1], abs=0.01)
    assert labels.max() == 2 and (labels > 0).sum() == 180
    assert np.array_equal((labels > 0), (prob > 0.5)[box] != coarse[box])


def test_colour_evidence_supports_a_change_onto_the_object() -> None:
    # the input is 3 rows short of the square: the output adds the missing strip, which has the
    # object's colour
    coarse = _square()
    coarse[20:23] = False
    prob = _square().astype(np.float32)
    _, _, f = region_features(_photo(), coarse, prob, prob)
    assert len(f) == 1
    assert f[0, FEATURES.index("colour_evidence")] == pytest.approx(1.0, abs=0.01)
    assert f[0, FEATURES.index("log_support_ratio")] > 1


def test_no_change_no_regions() -> None:
    coarse = _square()
    box, labels, f = region_features(_photo(), coarse, coarse.astype(np.float32), coarse * 1.0)
    assert f.shape == (0, len(FEATURES))
    out = apply_keep(_photo(), coarse, coarse.astype(np.float32), coarse * 1.0, _model(-10))
    assert np.array_equal(out > 0.5, coarse)


def test_apply_keep_keeps_or_undoes_by_the_model() -> None:
    coarse = _square()
    prob = _square(shift_rows=3).astype(np.float32)
    kept = apply_keep(_photo(), coarse, prob, prob, _model(10.0))
    assert np.array_equal(kept, prob)
    undone = apply_keep(_photo(), coarse, prob, prob, _model(-10.0))
    assert np.array_equal(undone > 0.5, coarse)
    # per region: weight only on "added" keeps the added strip and undoes the removed one
    w = np.zeros(len(FEATURES))
    w[FEATURES.index("added")] = 40.0
    mixed = apply_keep(_photo(), coarse, prob, prob, _model(-20.0, w)) > 0.5
    assert np.array_equal(mixed, coarse | _square(shift_rows=3))
    # a threshold argument overrides the model's own
    assert np.array_equal(apply_keep(_photo(), coarse, prob, prob, _model(0.0), 0.4), prob)
    assert np.array_equal(apply_keep(_photo(), coarse, prob, prob, _model(0.0), 0.6) > 0.5, coarse)


def test_save_and_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    f = len(FEATURES)
    m = KeepModel(rng.normal(size=f), rng.uniform(1, 2, f), rng.normal(size=f), 0.3, 0.6)
    path = tmp_path / "keep.safetensors"
    m.save(path)
    back = load_keep_model(path)
    for a in ("mean", "std", "weight"):
        assert np.array_equal(getattr(back, a), getattr(m, a))
    assert (back.bias, back.threshold) == (0.3, 0.6)
    x = rng.normal(size=(5, f))
    assert np.allclose(back.probability(x), m.probability(x))


def test_bad_model_files_are_weights_errors(tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_keep_model(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_keep_model(bad)
    good = tmp_path / "good.safetensors"
    _model(0.0).save(good)
    with pytest.raises(WeightsError, match="corrupt"):
        load_keep_model(good, expected_sha256="0" * 64)


def _trees() -> KeepTrees:
    """Two hand-made trees. Tree 0: x0 <= 1 ? (x3 <= 0 ? -1 : +2) : +0.5 (node 1 is the inner
    node; NaN in x0 goes right). Tree 1: a single split x15 <= 0.25 ? -0.25 : +0.75, padded
    with leaves to tree 0's five nodes."""
    feature = np.array([[0, 3, 0, 0, 0], [15, 0, 0, 0, 0]])
    split = np.array([[1.0, 0.0, 0, 0, 0], [0.25, 0, 0, 0, 0]])
    left = np.array([[1, 3, 0, 0, 0], [1, 0, 0, 0, 0]])
    right = np.array([[2, 4, 0, 0, 0], [2, 0, 0, 0, 0]])
    value = np.array([[0, 0, 0.5, -1.0, 2.0], [0, -0.25, 0.75, 0, 0]])
    is_leaf = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], bool)
    missing_left = np.zeros((2, 5), bool)
    return KeepTrees(feature, split, left, right, value, is_leaf, missing_left, 0.1, 0.5)


def test_trees_give_the_hand_computed_sum() -> None:
    x = np.zeros((4, len(FEATURES)))
    x[0, [0, 3, 15]] = [0.5, -1.0, 0.0]  # -1 - 0.25
    x[1, [0, 3, 15]] = [1.0, 0.5, 1.0]  # 1 <= 1 goes left: +2 + 0.75
    x[2, [0, 3, 15]] = [3.0, -9.0, 0.25]  # +0.5 - 0.25
    x[3, [0, 15]] = [np.nan, 0.3]  # NaN goes right: +0.5 + 0.75
    raw = _trees().raw(x)
    assert np.allclose(raw, 0.1 + np.array([-1.25, 2.75, 0.25, 1.25]))
    assert np.allclose(_trees().probability(x), 1 / (1 + np.exp(-raw)))
    assert _trees().raw(np.zeros((0, len(FEATURES)))).shape == (0,)
    # walked in chunks of rows, the same sums
    many = np.random.default_rng(0).normal(size=(1000, len(FEATURES)))
    assert np.array_equal(_trees().raw(many, chunk=64), _trees().raw(many))


def test_trees_round_trip_and_bad_tree_files(tmp_path) -> None:
    path = tmp_path / "trees.safetensors"
    replace(_trees(), threshold=0.7, tile=0.05).save(path)
    back = load_keep_model(path)
    assert isinstance(back, KeepTrees) and (back.threshold, back.tile) == (0.7, 0.05)
    x = np.random.default_rng(0).normal(size=(50, len(FEATURES)))
    assert np.array_equal(back.probability(x), _trees().probability(x))

    def bad(name: str, **changes) -> None:
        p = tmp_path / f"{name}.safetensors"
        replace(_trees(), **changes).save(p)
        with pytest.raises(WeightsError, match="malformed|shape|integers"):
            load_keep_model(p)

    t = _trees()
    loop = t.left.copy()
    loop[0, 1] = 0  # a child that points back to the root: a walk that never ends
    bad("loop", left=loop)
    far = t.right.copy()
    far[1, 0] = 99  # past the end of the arrays
    bad("far", right=far)
    feat = t.feature.copy()
    feat[0, 0] = len(FEATURES)  # no such feature
    bad("feature", feature=feat)
    bad("shape", value=t.value[:, :4])
    bad("nan", value=np.where(t.is_leaf, np.nan, 0.0))


def test_trees_match_scikit_learn() -> None:
    # the exported trees give scikit-learn's own probabilities, NaN features included
    pytest.importorskip("sklearn")
    from sklearn.ensemble import HistGradientBoostingClassifier

    from finecut.train.keep import trees_from_sklearn

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, len(FEATURES)))
    y = ((x[:, 0] * x[:, 1] > 0) ^ (rng.random(3000) < 0.1)).astype(int)
    x[rng.random(x.shape) < 0.02] = np.nan
    clf = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=9, random_state=0)
    clf.fit(x, y)
    trees = trees_from_sklearn(clf, 0.6)
    test = rng.normal(size=(500, len(FEATURES)))
    test[rng.random(test.shape) < 0.05] = np.nan
    assert np.allclose(trees.probability(test), clf.predict_proba(test)[:, 1], atol=1e-12)
    assert trees.threshold == 0.6


def test_the_embedded_model_loads_with_its_recorded_sha() -> None:
    from finecut.refine.keep import default_keep_model
    from finecut.weights import WEIGHTS_DIR, load_manifest, sha256_file

    manifest = load_manifest("refine_keep")
    assert sha256_file(WEIGHTS_DIR / manifest["file"]) == manifest["sha256"]
    assert manifest["features"] == list(FEATURES)
    assert manifest["command"].startswith("finecut train keep")
    assert "duts_holdout" in manifest["exclude"]  # the hold-out chose the threshold
    # the earlier logistic model, loadable by its file; the default is the trees (below)
    m = load_keep_model(WEIGHTS_DIR / manifest["file"], manifest["sha256"])
    assert m.weight.shape == (len(FEATURES),) and m.threshold == manifest["threshold"] == 0.75
    from finecut.refine.keep import DEFAULT_KEEP_MODEL

    assert DEFAULT_KEEP_MODEL == "refine_keep_trees"
    assert isinstance(default_keep_model(), KeepTrees)
    # the second opinion's model: fitted on snapping alone's changes, the same images
    from finecut.refine.keep import default_snap_keep_model

    snap = load_manifest("refine_keep_snap")
    assert sha256_file(WEIGHTS_DIR / snap["file"]) == snap["sha256"]
    assert snap["model"] == "refine_keep_snap" and snap["train_config"]["candidate"] == "snap"
    assert "--candidate snap" in snap["command"] and "duts_holdout" in snap["exclude"]
    assert snap["train_config"]["images"] == manifest["train_config"]["images"]
    s = default_snap_keep_model()
    assert s.weight.shape == (len(FEATURES),) and not np.array_equal(s.weight, m.weight)


def test_the_embedded_trees_load_with_their_recorded_sha() -> None:
    # the default judge since the fourteenth session: gradient-boosted trees fitted on 400
    # training images
    from finecut.weights import WEIGHTS_DIR, load_manifest

    manifest = load_manifest("refine_keep_trees")
    trees = load_keep_model(WEIGHTS_DIR / manifest["file"], manifest["sha256"])
    assert isinstance(trees, KeepTrees) and trees.threshold == manifest["threshold"] == 0.75
    assert manifest["train_config"]["form"] == "trees" and "--form trees" in manifest["command"]
    assert manifest["images"] == 400 and "duts_holdout" in manifest["exclude"]
    # a region the CRM is sure of, on strong edges, against one it is not sure of, on none
    x = np.zeros((2, len(FEATURES)))
    names = list(FEATURES)
    x[:, names.index("log_area")] = np.log1p(200)
    x[0, [names.index("crm_confidence"), names.index("crm_agrees")]] = [0.95, 1.0]
    x[0, [names.index("support_out"), names.index("log_support_ratio")]] = [1.0, 1.5]
    x[1, [names.index("support_in"), names.index("log_support_ratio")]] = [1.0, -1.5]
    p = trees.probability(x)
    assert np.all((p >= 0) & (p <= 1)) and p[0] > p[1]


def test_the_refiner_takes_a_keep_model_file(tmp_path, tiny_crm_weights) -> None:
    from finecut.refine.api import Refiner
    from finecut.refine.inference import InferenceConfig

    # a model that undoes every change: the refined mask is the input, whatever the CRM did
    path = tmp_path / "undo_all.safetensors"
    _model(-50.0).save(path)
    # (and the second opinion's model too, so that snapping alone adds nothing either)
    refiner = Refiner("cpu", weights=tiny_crm_weights, keep_model=path, snap_keep_model=path)
    assert refiner.keep_model.bias == -50.0 and refiner.snap_keep_model.bias == -50.0
    # a 60 x 60 square (smaller objects are copied through), the input 2 rows off it
    photo = np.full((128, 128, 3), 40, np.uint8)
    photo[30:90, 30:90] = (200, 120, 60)
    coarse = np.zeros((128, 128), bool)
    coarse[32:92, 30:90] = True
    out = refiner.refine(photo, coarse) > 127
    assert np.array_equal(out, coarse)
    # a model that keeps every change: the output is that of no keep step, which moved the edge
    _model(50.0).save(tmp_path / "keep_all.safetensors")
    keep_all = Refiner(
        "cpu", weights=tiny_crm_weights, keep_model=tmp_path / "keep_all.safetensors",
        snap_keep_model=path,
    )  # fmt: skip
    plain = Refiner(
        "cpu", weights=tiny_crm_weights,
        config=InferenceConfig(keep_learned=False, keep_edges=False),
    )  # fmt: skip
    moved = plain.refine(photo, coarse) > 127
    assert not np.array_equal(moved, coarse)
    assert np.array_equal(keep_all.refine(photo, coarse) > 127, moved)
    # the second opinion: with every keep-step change undone, a model trusting every change of
    # snapping alone gives snapping alone's mask; off, the input
    trust_snap = Refiner(
        "cpu", weights=tiny_crm_weights, keep_model=path,
        snap_keep_model=tmp_path / "keep_all.safetensors",
        config=InferenceConfig(keep_snap_threshold=0.7),
    )  # fmt: skip
    from finecut.refine.api import snap_alone_probability

    snapped = snap_alone_probability(photo, coarse, InferenceConfig()) > 0.5
    assert not np.array_equal(snapped, coarse)
    assert np.array_equal(trust_snap.refine(photo, coarse) > 127, snapped)
    trust_snap.config = InferenceConfig()  # off by default: the input
    assert np.array_equal(trust_snap.refine(photo, coarse) > 127, coarse)
    with pytest.raises(WeightsError, match="not found"):
        Refiner("cpu", weights=tiny_crm_weights, keep_model=tmp_path / "none.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        Refiner("cpu", weights=tiny_crm_weights, snap_keep_model=tmp_path / "none.safetensors")


def test_finecut_refine_takes_a_keep_model_file(tmp_path, tiny_crm_weights, capsys) -> None:
    # the CLI's --keep-model: a judge that undoes every change gives back the input, one that
    # keeps every change gives the CRM's moved edge (the scene of the Refiner test above)
    import cv2

    from finecut.cli import main

    photo = np.full((128, 128, 3), 40, np.uint8)
    photo[30:90, 30:90] = (200, 120, 60)
    coarse = np.zeros((128, 128), np.uint8)
    coarse[32:92, 30:90] = 255
    cv2.imwrite(str(tmp_path / "photo.png"), photo)
    cv2.imwrite(str(tmp_path / "coarse.png"), coarse)
    _model(-50.0).save(tmp_path / "undo_all.safetensors")
    _model(50.0).save(tmp_path / "keep_all.safetensors")
    outs = {}
    for name in ("undo_all", "keep_all"):
        out = tmp_path / f"{name}.png"
        argv = [str(tmp_path / "photo.png"), "--mask", str(tmp_path / "coarse.png"), "-o",
                str(out), "--weights", str(tiny_crm_weights), "--device", "cpu",
                "--keep-model", str(tmp_path / f"{name}.safetensors")]  # fmt: skip
        assert main(["refine", *argv]) == 0, capsys.readouterr().err
        outs[name] = cv2.imread(str(out), cv2.IMREAD_UNCHANGED) > 127
    assert np.array_equal(outs["undo_all"], coarse > 0)
    assert not np.array_equal(outs["keep_all"], coarse > 0)


def test_a_tiled_model_judges_each_piece_of_a_long_strip(tmp_path) -> None:
    from finecut.refine.keep import tile_pixels

    assert tile_pixels(0.0, (480, 854)) == 0
    assert tile_pixels(0.0625, (480, 854)) == 53 and tile_pixels(0.0625, (960, 1708)) == 107
    assert tile_pixels(0.001, (100, 100)) == 8  # never below 8 px
    # the square shifted down 3 rows: a strip added below and one removed above, 30 px wide.
    # Whole regions: 2; cut into cells of 10 px (0.125 x 80): 3 pieces each
    coarse = _square()
    prob = _square(shift_rows=3).astype(np.float32)
    _, labels, f = region_features(_photo(), coarse, prob, prob, tile=0.125)
    assert len(f) == 6 and labels.max() == 6
    # a strip added below the square, 30 px wide, whose left 10 px have the object's colour
    # (right) and the rest the background's (wrong). Judged by colour evidence alone, the whole
    # strip is one region of mostly background colour and is undone; cut into 10-px cells, the
    # left piece is kept and the two others undone
    photo = _photo()
    photo[50:53, 20:30] = (200, 120, 60)
    strip = np.zeros_like(coarse)
    strip[50:53, 20:50] = True
    prob = (coarse | strip).astype(np.float32)
    w = np.zeros(len(FEATURES))
    w[FEATURES.index("colour_evidence")] = 40.0
    whole = _model(0.0, w)
    assert np.array_equal(apply_keep(photo, coarse, prob, prob, whole) > 0.5, coarse)
    m = replace(whole, tile=0.125)
    right = coarse.copy()
    right[50:53, 20:30] = True
    assert np.array_equal(apply_keep(photo, coarse, prob, prob, m) > 0.5, right)
    # the tile goes with the model file
    path = tmp_path / "tiled.safetensors"
    m.save(path)
    assert load_keep_model(path).tile == 0.125
    # a file without a tile (the third session's) reads as whole regions
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    arrays = load_file(str(path))
    del arrays["tile"]
    save_file(arrays, str(tmp_path / "old.safetensors"), meta)
    assert load_keep_model(tmp_path / "old.safetensors").tile == 0.0
    arrays["tile"] = np.array([1.5])
    save_file(arrays, str(tmp_path / "bad_tile.safetensors"), meta)
    with pytest.raises(WeightsError, match="tile"):
        load_keep_model(tmp_path / "bad_tile.safetensors")


def test_second_opinion_adds_trusted_changes_where_the_kept_mask_left_the_input() -> None:
    from finecut.refine.keep import keep_probabilities, second_opinion

    coarse = _square()
    other = _square(shift_rows=3).astype(np.float32)  # adds a strip below, removes one above
    w = np.zeros(len(FEATURES))
    w[FEATURES.index("added")] = 40.0
    box, labels, p = keep_probabilities(_photo(), coarse, other, other, _model(-20.0, w))
    assert sorted(p.round(3)) == [0.0, 1.0]
    # the kept mask left the input as it was: only the trusted (added) strip is taken
    kept = coarse.astype(np.float32)
    out = second_opinion(kept, coarse, other, box, labels, p, 0.5)
    assert np.array_equal(out > 0.5, coarse | _square(shift_rows=3))
    assert out.dtype == np.float32 and np.array_equal(kept > 0.5, coarse)  # not written in place
    # a threshold above every probability takes nothing; one at 0 takes both strips
    assert np.array_equal(second_opinion(kept, coarse, other, box, labels, p, 1.1), kept)
    assert np.array_equal(second_opinion(kept, coarse, other, box, labels, p, 0.0), other)
    # a change the kept mask already made is never overridden: the kept mask removed the
    # added strip's left half from the background (left as it was) and added it elsewhere
    kept2 = kept.copy()
    kept2[50:53, 20:35] = 0.25  # below 0.5 like the input there: still "the input's value"
    kept2[10:12, 20:30] = 1.0  # a change of the kept mask above the square, off the strips
    out2 = second_opinion(kept2, coarse, other, box, labels, p, 0.5)
    assert (out2[10:12, 20:30] == 1.0).all()
    assert (out2[50:53, 20:50] == 1.0).all()  # the strip is taken: those pixels equalled the input
    # the regions to judge are the other mask's changes where the kept mask left the input
    from finecut.refine.keep import left_to_input

    residual = left_to_input(kept2, coarse, other)
    assert residual.dtype == np.float32
    assert (residual[10:12, 20:30] == 0).all()  # the kept mask's own change: the input's value
    assert np.array_equal(residual[50:53] > 0.5, other[50:53] > 0.5)  # left to the input there
    assert np.array_equal(left_to_input(coarse * 1.0, coarse, other), other)
    # no regions: the kept mask as it is
    empty = second_opinion(kept, coarse, kept, *keep_probabilities(
        _photo(), coarse, kept, kept, _model(50.0)
    )[:2], np.zeros(0), 0.5)  # fmt: skip
    assert np.array_equal(empty, kept)


def test_keep_step_takes_snapping_alone_as_a_second_opinion() -> None:
    from finecut.refine.api import gate_and_snap, keep_step, snap_alone_probability
    from finecut.refine.evaluate import snap_alone
    from finecut.refine.inference import InferenceConfig

    # the input 2 rows off the square; the CRM changed nothing
    photo = _photo()
    coarse = np.roll(_square(), 2, axis=0)
    crm = coarse.astype(np.float32)
    cfg = InferenceConfig(keep_snap_threshold=0.7)  # off by default
    assert InferenceConfig().keep_snap_threshold < 0
    snapped = snap_alone_probability(photo, coarse, cfg)
    # snapping alone is the gate and snapping applied to the input itself, as it was defined
    assert np.array_equal(snapped, gate_and_snap(photo, coarse, crm, cfg))
    assert np.array_equal(snap_alone(photo, coarse), snapped > 0.5)
    assert not np.array_equal(snapped > 0.5, coarse)  # the snapping moved the edge
    trust_all = _model(50.0)
    # off: the keep step's own result, the input here
    off_cfg = replace(cfg, keep_snap_threshold=-1.0)
    off = keep_step(photo, coarse, crm, crm, off_cfg, trust_all, snap_model=trust_all)
    assert np.array_equal(off > 0.5, coarse)
    # on (at 0.7): snapping alone's changes, all trusted, fill in where the kept
    # mask left the input (with snapping alone's soft values on the changed pixels; elsewhere
    # the kept mask's)
    assert cfg.keep_snap_threshold == 0.7
    both = keep_step(photo, coarse, crm, crm, cfg, trust_all, snap_model=trust_all)
    assert np.array_equal(both > 0.5, snapped > 0.5)
    changed = (snapped > 0.5) != coarse
    assert np.array_equal(both[changed], snapped[changed])
    assert np.array_equal(both[~changed], off[~changed])
    again = keep_step(photo, coarse, crm, crm, cfg, trust_all, snapped, snap_model=trust_all)
    assert np.array_equal(again, both)
    # without a model of its own the second opinion takes the embedded refine_keep_snap
    from finecut.refine.keep import default_snap_keep_model

    embedded = keep_step(photo, coarse, crm, crm, cfg, trust_all)
    model = default_snap_keep_model()
    assert np.array_equal(embedded, keep_step(photo, coarse, crm, crm, cfg, trust_all, None, model))
    # distrusted: nothing is taken
    distrust = _model(-50.0)
    assert np.array_equal(
        keep_step(photo, coarse, crm, crm, cfg, trust_all, snap_model=distrust) > 0.5, coarse
    )
