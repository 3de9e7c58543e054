"""Segmentation localisation metrics against closed forms."""

import numpy as np
import pytest

from cam_infer.errors import CamInferError
from cam_infer.metrics import energy_in_region, pointing_in_region, uniform_baseline


def disc(size=32, cx=10, cy=12, r=5):
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_energy_of_a_map_equal_to_the_region_is_one_and_of_its_complement_zero():
    region = disc()
    assert energy_in_region(region.astype(float), region) == 1.0
    assert energy_in_region((~region).astype(float), region) == 0.0


def test_energy_of_a_constant_map_is_the_uniform_baseline_the_area_fraction():
    region = disc()
    assert energy_in_region(np.full(region.shape, 0.3), region) == pytest.approx(region.sum() / region.size)
    assert uniform_baseline(region) == pytest.approx(region.sum() / region.size)


def test_energy_closed_form_two_levels_and_negative_values_clipped():
    region = np.zeros((4, 4), bool)
    region[:2] = True                                       # 8 pixels in, 8 out
    saliency = np.where(region, 3.0, 1.0)
    saliency[3, 3] = -5.0                                   # clipped to 0: 7 pixels of 1 outside
    assert energy_in_region(saliency, region) == pytest.approx(24 / (24 + 7))


def test_void_pixels_leave_numerator_and_denominator():
    region = np.zeros((4, 4), bool)
    region[0] = True
    valid = np.ones((4, 4), bool)
    valid[3] = False
    saliency = np.ones((4, 4))
    saliency[3] = 100.0                                     # all this energy is on void pixels
    assert energy_in_region(saliency, region, valid) == pytest.approx(4 / 12)
    assert uniform_baseline(region, valid) == pytest.approx(4 / 12)


def test_pointing_hits_inside_misses_outside_and_ignores_void_maxima():
    region = disc()
    saliency = np.zeros(region.shape)
    saliency[12, 10] = 1.0
    assert pointing_in_region(saliency, region)
    saliency[30, 30] = 2.0
    assert not pointing_in_region(saliency, region)
    valid = np.ones(region.shape, bool)
    valid[30, 30] = False
    assert pointing_in_region(saliency, region, valid)
    assert not pointing_in_region(saliency, region, degenerate=True)


def test_a_region_of_another_size_than_the_map_is_refused_in_one_line():
    with pytest.raises(CamInferError, match="region is 8x8 but the map is 32x32"):
        energy_in_region(np.ones((32, 32)), np.ones((8, 8), bool))
