"""Overlay drawing: colours where the guidance is, the frame itself untouched."""

import numpy as np
import pytest

from openfluoro.guidance.interspace import InterspaceHeight
from openfluoro.guidance.levels import Disc, Endplate, LevelResult
from openfluoro.guidance.needle import NeedleDetection
from openfluoro.guidance.overlay import CALIPER_RGB, LEVEL_RGB, NEEDLE_RGB, TARGET_RGB, TIP_RGB, draw_overlay


def test_overlay_draws_needle_levels_calipers_and_target():
    img = np.full((256, 256), 120, np.uint8)
    before = img.copy()
    needle = NeedleDetection(True, tip_px=(100.0, 100.0), tail_px=(200.0, 150.0), confidence=0.9)
    disc = Disc("L3-L4", (60.0, 60.0), Endplate((40.0, 55.0), (80.0, 55.0)), Endplate((40.0, 65.0), (80.0, 65.0)), 1.0)
    levels = LevelResult("lateral", (disc,), (), "model", 0.9)
    h = InterspaceHeight("L3-L4", 10.0, 8.0, 6.0, (60.0, 60.0),
                         {"middle": ((60.0, 55.0), (60.0, 65.0)), "anterior": ((42.0, 55.0), (42.0, 65.0))})
    out = draw_overlay(img, needle=needle, levels=levels, heights=[h], target_px=(30.0, 200.0),
                       messages=["CSF return"], warnings=["off midline"])
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert np.array_equal(img, before)                           # input untouched

    def has(colour, region):
        r0, r1, c0, c1 = region
        return np.any(np.all(out[r0:r1, c0:c1] == colour, axis=-1))

    assert has(NEEDLE_RGB, (120, 130, 140, 160))                 # along the needle line
    assert has(TIP_RGB, (94, 107, 94, 107))                       # ring around the tip
    assert has(LEVEL_RGB, (54, 57, 40, 81))                       # endplate line
    assert has(CALIPER_RGB, (55, 66, 59, 62))                     # middle caliper
    assert has(TARGET_RGB, (185, 215, 15, 45))                    # target cross
    assert not np.all(out[230:256] == 120)                        # text lines at the bottom


def test_overlay_accepts_rgb_and_rejects_bad_shapes():
    rgb = np.zeros((64, 64, 3), np.uint8)
    assert draw_overlay(rgb).shape == (64, 64, 3)
    assert draw_overlay(np.zeros((64, 64), np.float32)).dtype == np.uint8
    with pytest.raises(ValueError, match="image"):
        draw_overlay(np.zeros((4, 4, 4, 4)))
    # a needle that was not found draws nothing
    out = draw_overlay(np.full((32, 32), 50, np.uint8), needle=NeedleDetection(False))
    assert np.all(out == 50)
