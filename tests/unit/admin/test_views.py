"""How an ejection's return time reads in the admin API and ``pyproxy status``."""

from __future__ import annotations

from datetime import UTC, datetime

from pyproxy.admin.views import duration_text, ejection_text, ejection_times

NOW = datetime(2026, 12, 7, 1, 1, 40, 200000, tzinfo=UTC).timestamp()


def test_ejection_times_keep_the_raw_time_and_add_readable_ones():
    view = ejection_times(22.3, NOW)
    assert view["until"] == NOW + 22.3
    assert view["until_utc"] == "2026-12-07T01:02:03Z"  # 01:02:02.5, rounded up
    assert view["seconds_left"] == 23


def test_not_ejected_has_no_times():
    assert ejection_times(None, NOW) == {"until": None, "until_utc": None, "seconds_left": None}


def test_ejection_text():
    assert ejection_text(ejection_times(22.3, NOW)) == \
        "ejected, back in 23 s (at 01:02:03 UTC)"
    # A view with only the raw time (an older server) is counted against the local clock.
    assert ejection_text({"until": NOW + 22.3}, now=NOW) == \
        "ejected, back in 23 s (at 01:02:03 UTC)"
    assert ejection_text({}) == "ejected"


def test_duration_text():
    assert [duration_text(s) for s in (0, 23, 119, 120, 150, 300)] == [
        "0 s", "23 s", "119 s", "2 min", "2 min 30 s", "5 min"]
