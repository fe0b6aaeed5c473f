"""Warnings that come by the thousand are logged once per peer and interval, with a count."""

from __future__ import annotations

from config.logs import Sampled


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event: str, **fields) -> None:
        self.lines.append((event, fields))


def test_a_flood_from_one_peer_is_one_line_at_once_and_one_count_per_interval():
    recorder = Recorder()
    sampled = Sampled(recorder, interval=5.0)
    for n in range(20_000):
        sampled.warning("malformed_message_dropped", "aa", 100.0 + n * 1e-4, reason="junk")
    sampled.warning("client_unreachable", "bb", 101.0, message="ClientPartial")
    sampled.flush(104.9)  # the interval has not ended
    assert [event for event, _ in recorder.lines] == ["malformed_message_dropped", "client_unreachable"]
    sampled.flush(105.0)
    assert recorder.lines[2:] == [("malformed_message_dropped", {"peer": "aa", "repeated": 19_999, "seconds": 5.0})]
    sampled.warning("malformed_message_dropped", "aa", 106.0, reason="again")  # a new interval: logged at once
    assert recorder.lines[-1] == ("malformed_message_dropped", {"peer": "aa", "reason": "again"})


def test_past_its_peer_limit_the_rest_are_summed_as_others():
    recorder = Recorder()
    sampled = Sampled(recorder, interval=1.0, max_peers=2)
    for peer in ("a", "b", "c", "d", "e"):
        sampled.warning("client_unreachable", peer, 0.0)
    sampled.flush(1.0)
    assert [fields["peer"] for _, fields in recorder.lines] == ["a", "b", "others", "others"]
    assert recorder.lines[-1][1]["repeated"] == 2
