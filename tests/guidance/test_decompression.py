"""Verdict logic of the decompression monitor."""

import pytest

from openfluoro.guidance.decompression import DecompressionMonitor, verdict
from openfluoro.guidance.interspace import InterspaceHeight


def test_verdicts():
    plan = 2.0
    assert verdict({}, plan)[0] == "no_baseline"
    assert verdict({"L3-L4": 2.1, "L4-L5": 1.9, "L2-L3": 2.0}, plan)[0] == "reached"
    assert verdict({"L3-L4": 0.8, "L4-L5": 0.7}, plan)[0] == "not_reached"
    assert verdict({"L3-L4": 3.5, "L4-L5": 3.4}, plan)[0] == "over_distracted"
    assert verdict({"L3-L4": 2.4, "L4-L5": 0.3}, plan)[0] == "uneven"
    # within tolerance on the low side
    assert verdict({"L3-L4": 1.4, "L4-L5": 1.5}, plan)[0] == "reached"
    # over-distraction wins over unevenness
    assert verdict({"L3-L4": 3.5, "L4-L5": 1.0}, plan)[0] == "over_distracted"


def test_a_small_plan_is_not_reached_at_half_of_it():
    """The tolerance is at most 30 % of the plan: a fixed 0.75 mm called a 1.1 mm plan reached
    at 0.5 mm, while the pull was still ramping."""
    ramping = {"L1-L2": 0.42, "L2-L3": 0.64, "L3-L4": 0.46}
    assert verdict(ramping, 1.1)[0] == "not_reached"
    assert verdict(ramping, 1.1, tolerance_mm=0.75)[0] == "reached"
    assert verdict({"L1-L2": 1.0, "L2-L3": 0.9, "L3-L4": 1.05}, 1.1)[0] == "reached"
    assert DecompressionMonitor(1.1).tolerance_mm == pytest.approx(0.33)
    assert DecompressionMonitor(3.0).tolerance_mm == pytest.approx(0.75)


def test_one_bad_level_out_of_four_does_not_raise_an_alarm():
    ok = {"L1-L2": 2.0, "L2-L3": 2.1, "L3-L4": 1.9, "L4-L5": 2.0}
    assert verdict({**ok, "L5-S1": 4.5}, 2.0)[0] == "reached"
    assert verdict({**ok, "L5-S1": -0.5}, 2.0)[0] == "reached"
    # but two bad ones do
    assert verdict({**ok, "L5-S1": 4.5, "L1-L2": 4.4}, 2.0)[0] == "over_distracted"


def test_bad_plan_is_refused():
    with pytest.raises(ValueError, match="planned"):
        verdict({"L3-L4": 1.0}, 0.0)
    with pytest.raises(ValueError, match="planned"):
        DecompressionMonitor(-1.0)


def _h(name, mid):
    return InterspaceHeight(name, mid + 2.0, mid, mid - 2.0, (0.0, 0.0))


def test_monitor_baseline_change_and_averaging():
    mon = DecompressionMonitor(planned_mm=1.5, average_frames=2)
    mon.add_baseline([_h("L3-L4", 8.0), _h("L4-L5", 9.0), _h("T11-T12", 5.0)])
    mon.add_baseline([_h("L3-L4", 8.2), _h("L4-L5", 9.2)])
    assert mon.baseline == {"L3-L4": pytest.approx(8.1), "L4-L5": pytest.approx(9.1)}   # unmonitored level dropped
    v = mon.update([_h("L3-L4", 8.4), _h("L4-L5", 9.4)])
    assert v.verdict == "not_reached" and v.changes_mm["L3-L4"] == pytest.approx(0.3)
    mon.update([_h("L3-L4", 9.6), _h("L4-L5", 10.6)])
    v = mon.update([_h("L3-L4", 9.6), _h("L4-L5", 10.6)])
    assert v.verdict == "reached" and v.changes_mm["L4-L5"] == pytest.approx(1.5)
    assert "reached" in v.message and v.to_dict()["verdict"] == "reached"
