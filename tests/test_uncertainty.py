import numpy as np
import pytest

from cam_infer.metrics.uncertainty import bootstrap_interval, paired_difference


def test_bootstrap_interval_of_normal_data_matches_the_closed_form():
    data = np.random.default_rng(3).normal(2.0, 1.5, size=400)
    interval = bootstrap_interval(data, resamples=4000)
    half = 1.96 * data.std(ddof=1) / np.sqrt(data.size)
    assert interval.mean == pytest.approx(data.mean())
    assert interval.low == pytest.approx(data.mean() - half, abs=0.15 * half)
    assert interval.high == pytest.approx(data.mean() + half, abs=0.15 * half)


def test_bootstrap_interval_is_deterministic_with_a_seed():
    data = np.random.default_rng(4).uniform(size=50)
    assert bootstrap_interval(data, seed=7) == bootstrap_interval(data, seed=7)
    assert bootstrap_interval(data, seed=7) != bootstrap_interval(data, seed=8)


def test_paired_difference_separates_a_consistent_gap_but_not_noise():
    rng = np.random.default_rng(5)
    base = rng.normal(size=60)
    assert paired_difference(base + 0.5 + rng.normal(0, 0.1, 60), base).excludes_zero()
    assert not paired_difference(base + rng.normal(0, 0.1, 60), base).excludes_zero()
