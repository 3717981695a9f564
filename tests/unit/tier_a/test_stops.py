"""Stop-sequence matching on text that arrives in pieces."""

from slm.tier_a.stops import StopMatcher


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    return (out if m.stopped else out + m.flush()), m.stopped


def test_no_stops_passes_text_through_immediately():
    m = StopMatcher([])
    assert m.feed("abc") == "abc"


def test_stop_inside_one_piece_cuts_before_it():
    assert feed_all(["END"], ["hello END world"]) == ("hello ", True)


def test_stop_split_across_pieces_is_found_and_never_emitted():
    assert feed_all(["END"], ["hello E", "N", "D and more"]) == ("hello ", True)


def test_partial_prefix_is_held_back_then_released():
    m = StopMatcher(["END"])
    assert m.feed("abcE") == "abc"  # "E" might start END
    assert m.feed("x") == "Ex"  # it did not
    assert not m.stopped


def test_earliest_of_several_stops_wins():
    assert feed_all(["world", "lo"], ["hello world"]) == ("hel", True)


def test_text_after_a_stop_is_dropped():
    m = StopMatcher(["."])
    assert m.feed("a.b") == "a"
    assert m.feed("more") == ""


def test_unfinished_prefix_is_flushed_at_the_end():
    assert feed_all(["STOP"], ["abc ST"]) == ("abc ST", False)
