"""Later generation waves: sized from each mode's keep rates, with only the contrast images its own can carry."""

from __future__ import annotations

from blindspot.generation.waves import ModeYield, contrast_room, mode_yields, plan_next_wave


def records(mode_id: str, own: tuple[int, int], contrast: tuple[int, int] = (0, 0)) -> list[dict]:
    """Manifest-like records: (generated, kept) own images and contrast images of one mode."""
    out = []
    for role, (made, kept) in (("target", own), ("contrast", contrast)):
        out += [{"mode_id": mode_id, "role": role, "kept": k < kept} for k in range(made)]
    return out


def test_usable_images_count_contrast_only_up_to_the_share_of_own_ones():
    y = mode_yields(records("a", own=(10, 4), contrast=(10, 9)))["a"]
    assert y == ModeYield(own_generated=10, own_kept=4, contrast_generated=10, contrast_kept=9)
    assert y.usable(0.5) == 8 and y.usable(0.25) == 4 + 1 and y.usable(0.0) == 4
    assert contrast_room(3, 0.5) == 3 and contrast_room(3, 0.0) == 0


def test_a_mode_with_surplus_contrast_images_gets_own_images_and_a_smaller_wave_than_one_rate_would_size():
    # 25 of 50 own images kept, all 50 contrast ones: 50 usable, 25 contrast images wait for own ones
    done = records("a", own=(50, 25), contrast=(50, 50))
    plan = plan_next_wave(["a"], [1.0], [True], done, target=100, room=400, contrast=0.5, min_count=8)
    assert plan.contrast["a"] < 0.1  # almost only own images: the waiting contrast ones pair with them
    one_rate = (100 - 50) / (50 / 100) * 1.2  # the whole round's keep rate (0.5) would make 120 images
    assert 60 <= plan.count < one_rate and plan.expected_gain >= 1.2 * 50
    without = plan_next_wave(["a"], [1.0], [True], done, target=100, room=400, contrast=0.0, min_count=8)
    assert without.contrast == {"a": 0.0} and without.count > plan.count  # no contrast share: own images only count


def test_modes_without_a_confused_class_get_no_contrast_and_unknown_modes_take_the_rounds_rates():
    done = records("a", own=(20, 10), contrast=(20, 10))
    plan = plan_next_wave(["a", "b"], [1.0, 1.0], [True, False], done, target=60, room=400, contrast=0.5,
                          min_count=8)
    assert plan.contrast["b"] == 0.0 and 0.0 < plan.contrast["a"] <= 1.0
    assert plan.expected_gain >= 1.2 * (60 - 20)


def test_no_wave_once_the_target_is_met_and_never_more_than_the_room_left():
    done = records("a", own=(20, 10), contrast=(20, 10))
    assert plan_next_wave(["a"], [1.0], [True], done, target=20, room=100, contrast=0.5, min_count=8).count == 0
    assert plan_next_wave(["a"], [1.0], [True], done, target=500, room=0, contrast=0.5, min_count=8).count == 0
    capped = plan_next_wave(["a"], [1.0], [True], done, target=500, room=30, contrast=0.5, min_count=8)
    assert capped.count == 30 and capped.expected_gain < 1.2 * (500 - 20)
