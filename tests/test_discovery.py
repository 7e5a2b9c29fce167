"""Failure discovery on small synthetic embeddings with planted blind spots; the batched SVM against scikit-learn."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.svm import LinearSVC

from blindspot.discovery import (DISCOVERY_METHODS, ErrorClusters, ErrorNeighbourhoods, FailureDirections, discover,
                                 linear_svm)
from blindspot.discovery.scoring import best_prefix, binomial_z, class_batches, error_gap, wilson_lower_bound
from blindspot.modes import FailureMode

torch.set_num_threads(1)
NAMES = ["cow", "bird", "truck"]


def planted(n_per_class: int = 400, dim: int = 32, cluster: bool = False, seed: int = 0):
    """Class 0: errors concentrated where unit vector u has a high projection (a tail, or a shifted cluster);
    class 1: a few random errors only; class 2: no errors. Returns x, labels, preds, u, in_slice."""
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(3, dim, generator=g), dim=1)
    u = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    t = torch.randn(len(labels), generator=g)
    if cluster:
        in_slice = (torch.rand(len(labels), generator=g) < 0.15) & (labels == 0)
        t = t + 4.0 * in_slice
    else:
        in_slice = (t > 1.0) & (labels == 0)
    noise = 0.25 * torch.randn(len(labels), dim, generator=g) / math.sqrt(dim)
    x = torch.nn.functional.normalize(0.5 + means[labels] + noise + 0.12 * t.unsqueeze(1) * u, dim=1)
    r = torch.rand(len(labels), generator=g)
    wrong = torch.where(in_slice, r < 0.9, (r < 0.03) & (labels != 2))
    preds = torch.where(wrong, (labels + 1) % 3, labels)
    return x, labels, preds, u, in_slice


def precision_recall(mode: FailureMode, in_slice: torch.Tensor) -> tuple[float, float]:
    """Fraction of the mode's members in the planted slice, and of the planted slice among its members."""
    hit = in_slice[torch.tensor(mode.members)]
    return float(hit.float().mean()), float(hit.sum()) / float(in_slice.sum())


def test_directions_recover_planted_direction():
    x, labels, preds, u, in_slice = planted()
    modes = FailureDirections()(x, labels, preds, NAMES)
    top = modes[0]
    assert top.class_index == 0 and top.class_name == "cow" and top.mode_id == "cow-0" and top.method == "directions"
    assert [m.score for m in modes] == sorted((m.score for m in modes), reverse=True)
    d = torch.tensor(top.direction)
    assert abs(float(d.norm()) - 1) < 1e-4
    assert float(d @ u) > 0.9  # points towards the errors
    precision, recall = precision_recall(top, in_slice)
    assert precision > 0.65 and recall > 0.55
    assert top.error_rate >= top.class_error_rate + 0.2 and top.support >= 8
    assert top.extra["C"] in (0.001, 0.01, 0.1, 1.0) and 0.5 < top.extra["cv_balanced_accuracy"] <= 1.0
    assert len(modes) == 1  # neither the class with only random errors nor the error-free class has a mode


def test_directions_decision_function_ranks_slice_high():
    x, labels, preds, u, in_slice = planted()
    fd = FailureDirections().fit(x, labels, preds, NAMES)
    scores = fd.decision_function(x, labels)
    assert torch.isnan(scores[labels == 2]).all()  # no direction for the error-free class
    cls0 = labels == 0
    assert float(scores[in_slice].mean()) > float(scores[cls0 & ~in_slice].mean())


def test_clusters_recover_planted_cluster():
    x, labels, preds, u, in_slice = planted(cluster=True)
    modes = ErrorClusters(n_clusters=4)(x, labels, preds, NAMES)
    top = modes[0]
    assert top.class_index == 0 and top.method == "clusters" and top.mode_id == "cow-0"
    precision, recall = precision_recall(top, in_slice)
    assert precision > 0.85 and recall > 0.8
    assert float(torch.tensor(top.direction) @ u) > 0.9  # centroid offset points at the planted cluster
    assert all(m.class_index != 2 for m in modes)


def test_directions_also_find_planted_cluster():
    x, labels, preds, u, in_slice = planted(cluster=True)
    top = FailureDirections()(x, labels, preds, NAMES)[0]
    precision, recall = precision_recall(top, in_slice)
    assert top.class_index == 0 and precision > 0.85 and recall > 0.8


@pytest.mark.parametrize("method", sorted(DISCOVERY_METHODS))
def test_no_errors_no_modes(method):
    x, labels, _, _, _ = planted(n_per_class=60)
    assert discover(method, x, labels, labels.clone(), NAMES) == []


@pytest.mark.parametrize("C", [0.01, 1.0, 10.0])
def test_linear_svm_matches_sklearn_linearsvc(C):
    g = torch.Generator().manual_seed(1)
    sizes, d = [120, 90, 150], 20
    X = torch.zeros(3, max(sizes), d)
    y = torch.zeros(3, max(sizes), dtype=torch.bool)
    valid = torch.zeros(3, max(sizes), dtype=torch.bool)
    for k, n in enumerate(sizes):
        xs = torch.nn.functional.normalize(torch.randn(n, d, generator=g) + 1.0, dim=1)
        w = torch.randn(d, generator=g)
        X[k, :n], y[k, :n], valid[k, :n] = xs, xs @ w + 0.3 * torch.randn(n, generator=g) > 0.2 * w.sum() / d, True
    X[~valid] = 7.0  # padding content must not matter
    res = linear_svm(X, y, C, mask=valid, tol=1e-4)
    assert bool(res.converged.all())
    for k, n in enumerate(sizes):
        sk = LinearSVC(C=C, class_weight="balanced", loss="squared_hinge", tol=1e-6, max_iter=100_000)
        sk.fit(X[k, :n].numpy(), y[k, :n].numpy())
        ref = torch.cat([torch.tensor(sk.coef_[0]), torch.tensor(sk.intercept_)]).float()
        ours = torch.cat([res.coef[k, 0], res.intercept[k, :1]])
        assert float(torch.nn.functional.cosine_similarity(ref, ours, dim=0)) >= 0.99
        dec = torch.tensor(sk.decision_function(X[k, :n].numpy())).float()
        assert torch.allclose(res.decision[k, 0, :n], dec, atol=0.05 * float(dec.abs().max()))


def test_linear_svm_unbalanced_no_intercept_and_warm_start():
    g = torch.Generator().manual_seed(2)
    X = torch.nn.functional.normalize(torch.randn(200, 16, generator=g) + 0.5, dim=1)
    y = X[:, 0] > 0.3
    res = linear_svm(X, y, [0.1, 1.0], class_weight=None, fit_intercept=False, tol=1e-4)
    assert res.coef.shape == (1, 2, 16) and float(res.intercept.abs().max()) == 0.0
    for j, C in enumerate([0.1, 1.0]):
        sk = LinearSVC(C=C, fit_intercept=False, tol=1e-6, max_iter=100_000).fit(X.numpy(), y.numpy())
        cos = torch.nn.functional.cosine_similarity(torch.tensor(sk.coef_[0]).float(), res.coef[0, j], dim=0)
        assert float(cos) >= 0.99
    again = linear_svm(X, y, [0.1, 1.0], class_weight=None, fit_intercept=False, tol=1e-4, init=res)
    assert again.n_iter <= 1 and torch.allclose(again.coef, res.coef, atol=1e-3)


def test_linear_svm_rejects_bad_input():
    X, y = torch.randn(2, 10, 4), torch.zeros(2, 10, dtype=torch.bool)
    with pytest.raises(ValueError, match="C must be > 0|every C"):
        linear_svm(X, y, 0.0)
    with pytest.raises(ValueError, match=r"X must be \[K, n, d\]"):
        linear_svm(X, y[:, :5])
    with pytest.raises(ValueError, match="class_weight"):
        linear_svm(X, y, class_weight="auto")


@pytest.mark.parametrize(
    "cls, knobs, match",
    [
        (FailureDirections, {"Cs": []}, "Cs must be"),
        (FailureDirections, {"Cs": [0.1, -1.0]}, "Cs must be"),
        (FailureDirections, {"cv_folds": 1}, "cv_folds"),
        (FailureDirections, {"cv_folds": 0}, "cv_folds=0 cannot choose"),
        (FailureDirections, {"cv_folds": 0, "Cs": [0.1]}, "cross_fitted_slices"),
        (FailureDirections, {"min_support": 0}, "min_support"),
        (FailureDirections, {"min_error_gap": 1.5}, "min_error_gap"),
        (FailureDirections, {"max_modes": 0}, "max_modes"),
        (FailureDirections, {"tol": 0.0}, "tol"),
        (ErrorClusters, {"n_clusters": 1}, "n_clusters"),
        (ErrorClusters, {"error_weight": -1.0}, "error_weight"),
        (ErrorClusters, {"n_init": 0}, "n_init"),
        (ErrorClusters, {"max_modes_per_class": 0}, "max_modes_per_class"),
        (ErrorClusters, {"min_errors": 0}, "min_errors"),
        (ErrorClusters, {"slice_score": "auc"}, "slice_score"),
        (FailureDirections, {"slice_score": "auc"}, "slice_score"),
        (FailureDirections, {"max_modes_per_class": 0}, "max_modes_per_class"),
        (ErrorNeighbourhoods, {"max_support": 3}, "max_support"),
        (ErrorNeighbourhoods, {"max_modes_per_class": 0}, "max_modes_per_class"),
        (ErrorNeighbourhoods, {"slice_score": "auc"}, "slice_score"),
        (FailureDirections, {"error_gap_to": "mean"}, "error_gap_to"),
        (ErrorClusters, {"error_gap_to": "mean"}, "error_gap_to"),
        (ErrorNeighbourhoods, {"error_gap_to": "mean"}, "error_gap_to"),
    ],
)
def test_knobs_are_validated(cls, knobs, match):
    with pytest.raises(ValueError, match=match):
        cls(**knobs)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="clusters, directions, neighbourhoods"):
        discover("kmeans", torch.zeros(1, 2), torch.zeros(1), torch.zeros(1), ["a"])


def test_inputs_are_validated():
    x, labels, preds, _, _ = planted(n_per_class=20)
    with pytest.raises(ValueError, match="labels and preds"):
        FailureDirections()(x, labels, preds[:-1], NAMES)
    with pytest.raises(ValueError, match="labels must lie"):
        FailureDirections()(x, labels, preds, NAMES[:2])
    with pytest.raises(ValueError, match="embeddings must be"):
        ErrorClusters()(x[0], labels, preds, NAMES)


def test_unnormalised_embeddings_give_same_modes():
    x, labels, preds, _, _ = planted()
    a = FailureDirections()(x, labels, preds, NAMES)
    b = FailureDirections()(3.0 * x, labels, preds, NAMES)
    assert [m.members for m in a] == [m.members for m in b]


def test_caps_and_ranking():
    x, labels, preds, _, _ = planted(cluster=True)
    loose = dict(n_clusters=6, min_error_gap=0.0, min_support=3)
    modes = ErrorClusters(**loose, max_modes_per_class=None)(x, labels, preds, NAMES)
    assert len(modes) >= 2 and len({m.class_index for m in modes}) < len(modes)  # some class has several
    capped = ErrorClusters(**loose, max_modes=1)(x, labels, preds, NAMES)
    assert len(capped) == 1 and capped[0].members == modes[0].members
    per_class = ErrorClusters(**loose, max_modes_per_class=1)(x, labels, preds, NAMES)
    assert len({m.class_index for m in per_class}) == len(per_class)
    assert all(m.mode_id.endswith("-0") for m in per_class)


def test_failure_mode_round_trips_through_json():
    x, labels, preds, _, _ = planted()
    mode = FailureDirections()(x, labels, preds, NAMES)[0]
    mode.captions = [("a cow on a beach", 0.31)]
    back = FailureMode.from_dict(json.loads(json.dumps(mode.to_dict())))
    assert back == mode and back.support == mode.support and back.caption == "a cow on a beach"


def test_best_prefix_and_score():
    ranked = torch.tensor([[1, 1, 1, 1, 0, 0, 1, 0, 0, 0], [0, 1, 0, 1, 0, 0, 1, 0, 0, 0]])
    k, score = best_prefix(ranked, torch.tensor([10, 10]), torch.tensor([0.5, 0.3]), min_support=2, min_error_gap=0.2)
    assert k.tolist()[0] == 4  # the all-error head maximises the z-score
    expected = binomial_z(torch.tensor(1.0), torch.tensor(4.0), torch.tensor(0.5))
    assert math.isclose(float(score[0]), float(expected), rel_tol=1e-5)
    expected = binomial_z(torch.tensor(0.5), torch.tensor(4.0), torch.tensor(0.3))
    assert k.tolist()[1] == 4 and math.isclose(float(score[1]), float(expected), rel_tol=1e-5)
    k, score = best_prefix(ranked, torch.tensor([10, 10]), torch.tensor([0.5, 0.3]), min_support=2, min_error_gap=0.6)
    assert k.tolist() == [0, 0] and torch.isinf(score).all()


def test_error_gap_to_the_rest_of_the_class_does_not_shrink_as_the_slice_grows():
    errors, size, class_errors, class_size = (torch.tensor(x) for x in (15.0, 50.0, 15.0, 100.0))
    assert math.isclose(float(error_gap(errors, size, class_errors, class_size, "class")), 0.15, abs_tol=1e-6)
    assert math.isclose(float(error_gap(errors, size, class_errors, class_size, "rest")), 0.30, abs_tol=1e-6)
    assert float(error_gap(class_errors, class_size, class_errors, class_size, "rest")) == 0.0  # the whole class


def test_a_half_class_blind_spot_is_a_slice_only_against_the_rest_of_the_class():
    # 50 of 100 images in the slice, 30% of them wrong, none outside: 0.15 above the class, 0.30 above the rest
    ranked = torch.zeros(1, 100)
    ranked[0, :50] = torch.isin(torch.arange(50) % 10, torch.tensor([3, 6, 9])).float()  # spread evenly
    rate = ranked.sum(1) / 100
    k, _ = best_prefix(ranked, torch.tensor([100]), rate, min_support=8, min_error_gap=0.2, gap_to="class")
    k_rest, _ = best_prefix(ranked, torch.tensor([100]), rate, min_support=8, min_error_gap=0.2, gap_to="rest")
    assert int(k) == 0
    assert 8 <= int(k_rest) <= 50


@pytest.mark.parametrize("cls", [FailureDirections, ErrorClusters, ErrorNeighbourhoods])
def test_every_method_finds_the_planted_slice_with_either_gap_reference(cls):
    x, labels, preds, _, in_slice = planted(cluster=True)
    for gap_to in ("class", "rest"):
        modes = [m for m in cls(error_gap_to=gap_to)(x, labels, preds, NAMES) if m.class_name == "cow"]
        assert modes and precision_recall(modes[0], in_slice)[0] > 0.8, gap_to


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_directions_on_cuda_match_cpu():
    x, labels, preds, _, _ = planted()
    cpu = FailureDirections()(x, labels, preds, NAMES)
    gpu = FailureDirections()(x.cuda(), labels.cuda(), preds.cuda(), NAMES)
    assert [m.class_index for m in gpu] == [m.class_index for m in cpu]
    cos = torch.tensor(gpu[0].direction) @ torch.tensor(cpu[0].direction)
    assert float(cos) > 0.99


def test_class_batches_cover_every_sample_once():
    labels = torch.tensor([2, 0, 2, 1, 2, 0, 2, 3, 3, 2])
    batches = class_batches(labels, torch.tensor([0, 2, 3]), max_elements=6)
    assert len(batches) == 2  # class 2 (5 samples) alone, then classes 0 and 3 (2 each) padded to 2
    seen = torch.cat([b.index[b.valid] for b in batches])
    assert sorted(seen.tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    for b in batches:
        assert b.index.numel() <= 6
        for row, c in enumerate(b.classes.tolist()):
            assert (labels[b.index[row][b.valid[row]]] == c).all() and int(b.valid[row].sum()) == int(b.sizes[row])


def test_score_discovery_ranks_each_planted_slice_among_the_handed_modes():
    from blindspot.groundtruth import score_discovery

    names = ["cow|beach", "cow|grass", "bird|sky"]
    val_groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    modes = [FailureMode(1, "bird", [5, 6, 7], 0.9, 0.2, 3.0, captions=[("a bird in the sky", 1.0)]),
             FailureMode(0, "cow", [0, 1, 2, 3], 0.8, 0.2, 2.0, captions=[("a cow on a beach", 1.0)])]
    planted = [{"group": "cow|beach", "class": "cow", "value": "beach"}]
    (p,) = score_discovery(modes, planted, val_groups, names)["planted"]
    assert (p["found"], p["caption_hit"]) == (False, False)  # k = 1: only the bird mode is in the top-k
    assert (p["rank"], p["handed"], p["handed_caption_hit"]) == (1, True, True)
    (p,) = score_discovery(modes[1:], planted, val_groups, names)["planted"]
    assert (p["found"], p["caption_hit"], p["rank"]) == (True, True, 0)


def two_failures(n: int = 300, dim: int = 16, seed: int = 0):
    """One class with a tight blind spot (30 samples, all wrong) and 60 errors spread over the rest of the class;
    a second class with a few random errors. Returns x, labels, preds, in_blind_spot."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    x = torch.randn(2 * n, dim, generator=g)
    x[n:] += 3.0
    centre = 4.0 * torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    spot = torch.zeros(2 * n, dtype=torch.bool)
    spot[:30] = True
    x[:30] = centre + 0.3 * torch.randn(30, dim, generator=g)
    wrong = spot.clone()
    wrong[30 + torch.randperm(n - 30, generator=g)[:60]] = True
    wrong[n + torch.randperm(n, generator=g)[:6]] = True
    preds = torch.where(wrong, 1 - labels, labels)
    return torch.nn.functional.normalize(x, dim=1), labels, preds, spot


def test_wilson_lower_bound_matches_the_closed_form():
    # 8 of 8 wrong: (1 + z^2/2n - z sqrt(z^2/4n^2)) / (1 + z^2/n) = 1 / (1 + 1.96^2 / 8)
    assert float(wilson_lower_bound(torch.tensor(1.0), torch.tensor(8))) == pytest.approx(1 / (1 + 1.96**2 / 8), rel=1e-5)
    more = wilson_lower_bound(torch.tensor([1.0, 1.0, 0.5]), torch.tensor([8, 20, 20]))
    assert more[1] > more[0] > more[2]  # more support, a surer bound; a lower rate, a lower bound


def test_neighbourhoods_isolate_a_tight_blind_spot_beside_diffuse_errors():
    x, labels, preds, spot = two_failures()
    modes = ErrorNeighbourhoods()(x, labels, preds, ["cow", "bird"])
    top = modes[0]
    assert top.class_name == "cow" and top.method == "neighbourhoods" and top.mode_id == "cow-0"
    precision, recall = precision_recall(top, spot)
    assert precision > 0.9 and recall == 1.0 and top.error_rate == 1.0  # the spot, and a diffuse error or two
    assert top.score == pytest.approx(float(wilson_lower_bound(torch.tensor(1.0), torch.tensor(top.support))))
    assert abs(float(torch.tensor(top.direction).norm()) - 1) < 1e-4
    assert [m.score for m in modes] == sorted((m.score for m in modes), reverse=True)


def test_later_passes_search_each_class_without_the_slices_already_found():
    x, labels, preds, spot = two_failures()
    one = ErrorNeighbourhoods(max_modes_per_class=1)(x, labels, preds, ["cow", "bird"])
    modes = [m for m in ErrorNeighbourhoods(max_modes_per_class=2)(x, labels, preds, ["cow", "bird"])
             if m.class_name == "cow"]
    assert [m.mode_id for m in modes] == ["cow-0", "cow-1"] and modes[0].members == one[0].members
    assert not set(modes[0].members) & set(modes[1].members) and (labels[modes[1].members] == 0).all()
    assert modes[1].error_rate < modes[0].error_rate  # the leftovers: diffuse errors only


def test_two_blind_spots_of_one_class_are_two_neighbourhoods_where_one_direction_blends_them():
    x, labels, preds, first = two_failures()
    g = torch.Generator().manual_seed(1)
    centre = 4.0 * torch.nn.functional.normalize(torch.randn(x.shape[1], generator=g), dim=0)
    x[30:60] = torch.nn.functional.normalize(centre + 0.3 * torch.randn(30, x.shape[1], generator=g), dim=1)
    preds[30:60] = 1
    second = torch.zeros_like(first)
    second[30:60] = True
    found = [m for m in ErrorNeighbourhoods(max_modes_per_class=2)(x, labels, preds, ["cow", "bird"])
             if m.class_name == "cow"]
    recalls = sorted((precision_recall(m, first)[1], precision_recall(m, second)[1]) for m in found)
    assert recalls == [(0.0, 1.0), (1.0, 0.0)]  # one mode each, nothing of the other
    top = FailureDirections(max_modes_per_class=2)(x, labels, preds, ["cow", "bird"])[0]
    assert precision_recall(top, first)[1] == precision_recall(top, second)[1] == 1.0  # both in one slice


def test_the_lower_bound_score_prefers_a_blind_spot_to_a_weak_spot_in_a_good_class():
    x, labels, preds, spot = two_failures()
    # class 1 gets a 25-sample region at 40% error: a large excess over its 2% base rate, far from all-wrong
    region = torch.arange(300, 325)
    preds[region] = torch.where(torch.arange(25) < 10, 0, 1)
    noise = torch.randn(25, x.shape[1], generator=torch.Generator().manual_seed(2))
    x[region] = torch.nn.functional.normalize(-3.0 + 0.1 * noise, dim=1)
    by_z = ErrorNeighbourhoods(slice_score="z")(x, labels, preds, ["cow", "bird"])
    by_bound = ErrorNeighbourhoods()(x, labels, preds, ["cow", "bird"])
    assert by_z[0].class_name == "bird" and by_bound[0].class_name == "cow"


def test_coverage_ranks_a_slice_training_never_shows_below_one_it_shows_often():
    """Training coverage: a mode where the class has no training images is covered less than any training image
    (0), a mode in the class's common region about as well as a typical one (near 0.5), whatever share of the
    validation set each is; a bad neighbour count names the knob."""
    from blindspot.discovery.coverage import train_coverage

    g = torch.Generator().manual_seed(0)
    common, rare = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=1)

    def around(centre, n):
        return torch.nn.functional.normalize(centre + 0.3 * torch.randn(n, 16, generator=g), dim=1)

    train = torch.cat([around(common, 200), around(rare, 200)])  # class 0 only in the common region; class 1 both
    train_labels = torch.tensor([0] * 200 + [1] * 200)
    val = torch.cat([around(common, 40), around(rare, 20)])
    mode = lambda members: FailureMode(0, "cow", members, 0.9, 0.3, 1.0)  # noqa: E731
    uncovered, covered = train_coverage([mode(list(range(40, 60))), mode(list(range(0, 20)))],
                                        val, train, train_labels)
    assert uncovered < 0.02 and 0.25 < covered < 0.75
    with pytest.raises(ValueError, match="k must be"):
        train_coverage([], val, train, train_labels, k=0)
