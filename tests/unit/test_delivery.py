"""The push/event checker (devtools/delivery.py): what counts as lost, duplicated and back in
time, and when pushes at the end are in flight rather than lost."""

from __future__ import annotations

from devtools.delivery import Settling, check


def test_every_push_once_in_order_is_clean() -> None:
    pushes = [("A", 1), ("B", 1), ("A", 2)]
    verdict = check(pushes, [("A", 1), ("B", 1), ("A", 2)])
    assert verdict.ok
    assert verdict.counts == (0, 0, 0)
    assert verdict.summary() == "3 pushes, 3 events: 0 lost, 0 duplicated, 0 back in time"


def test_lost_duplicated_and_back_in_time_are_counted_apart() -> None:
    pushes = [("A", 1), ("A", 2), ("A", 3), ("B", 5)]
    # A2 never published; A1 published twice, the second time after A3 (a late retry).
    events = [("A", 1), ("A", 3), ("A", 1), ("B", 5)]
    verdict = check(pushes, events)
    assert verdict.lost == [("A", 2)]
    assert verdict.duplicated == {("A", 1): 1}
    assert verdict.back_in_time == [(("A", 1), 3)]
    assert verdict.counts == (1, 1, 1)
    assert not verdict.ok
    assert "1 lost, 1 duplicated, 1 back in time" in verdict.summary()
    assert "lost ('A', 2)" in verdict.summary()


def test_a_key_pushed_twice_may_be_published_once_or_twice() -> None:
    """The simulator catching up can push a symbol twice in one ms: neither count is wrong."""
    pushes = [("A", 7), ("A", 7)]
    assert check(pushes, [("A", 7)]).ok
    assert check(pushes, [("A", 7), ("A", 7)]).ok
    assert check(pushes, [("A", 7)] * 3).duplicated == {("A", 7): 1}


def test_pushes_after_the_cut_are_in_flight_not_lost() -> None:
    pushes = [("A", 1), ("A", 2), ("A", 3)]
    verdict = check(pushes, [("A", 1), ("A", 2)], in_flight_after_ms=2)
    assert verdict.ok
    assert (verdict.pushed, verdict.in_flight) == (2, 1)
    assert "1 pushes after the cut not counted" in verdict.summary()


def test_settling_ends_when_all_arrived_and_no_copy_follows_or_the_count_stands_still() -> None:
    rule = Settling({("A", 1), ("A", 2)}, quiet_s=2.0, now=0.0)
    assert not rule.done([("A", 1)], now=0.0)
    assert not rule.done([("A", 1)], now=1.9)  # still within the quiet time
    assert rule.done([("A", 1)], now=2.0)  # nothing more came: A2 is lost
    rule = Settling({("A", 1), ("A", 2)}, quiet_s=2.0, now=0.0, linger_s=0.5)
    assert not rule.done([("A", 1)], now=1.5)
    assert not rule.done([("A", 1), ("A", 2)], now=1.6)  # all arrived: a late copy may follow
    assert not rule.done([("A", 1), ("A", 2), ("A", 1)], now=1.8)  # it did
    assert rule.done([("A", 1), ("A", 2), ("A", 1)], now=2.4)  # nothing since: done


def test_only_the_window_counts() -> None:
    """Before `since_ms` the fleet was forming: neither its pushes nor its events count."""
    pushes = [("A", 1), ("A", 5), ("A", 6)]
    verdict = check(pushes, [("A", 1), ("A", 1), ("A", 5), ("A", 6)], since_ms=5)
    assert verdict.ok
    assert (verdict.pushed, verdict.published) == (2, 2)
