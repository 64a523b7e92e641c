"""The evaluation's summary: what it counts, on hand-made scores."""

from openfluoro.guidance.evaluate import Scores, summarise


def test_summary_splits_the_per_view_level_count_by_collimation():
    """Per-view level accuracy (the last line's ``level_accuracy``) counts AP and lateral
    views, not the two-view result; a line splits it into open and collimated fields."""
    sc = Scores()
    rows = (("ap", True, False), ("lateral", True, False), ("ap", False, True), ("lateral", True, True),
            ("ap+lateral", True, True))
    for view, ok, coll in rows:
        sc.level.append({"case": 0, "view": view, "target_ok": ok, "named_ok": 1, "named": 1, "dose": "normal",
                         "collimated": coll, "conflict": False, "uncertain": False})
    table, summary = summarise(sc)
    assert summary["level_accuracy"] == 0.75
    assert "target interspace named right per view: open field 2/2, collimated 1/2" in table
    sc.level = [r for r in sc.level if not r["collimated"]]
    assert "collimated" not in summarise(sc)[0]
