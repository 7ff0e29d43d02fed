"""sidecar.engine.send_queue: a per-connection queue bounded in bytes, frames held by reference."""

from __future__ import annotations

from sidecar.engine.send_queue import SendQueue


def drain(queue: SendQueue, budget: int) -> bytes:
    out = bytearray()
    while (piece := queue.take(budget)) is not None:
        out += piece
    return bytes(out)


# push and the limit -------------------------------------------------------------------------


def test_new_queue_is_empty() -> None:
    queue = SendQueue(limit=100)
    assert len(queue) == 0
    assert queue.queued_bytes == 0
    assert queue.take(10) is None


def test_empty_queue_takes_a_frame_bigger_than_the_limit() -> None:
    queue = SendQueue(limit=10)
    assert queue.push(b"x" * 1000)
    assert len(queue) == 1
    assert queue.queued_bytes == 1000


def test_non_empty_queue_refuses_a_frame_that_goes_over_the_limit() -> None:
    queue = SendQueue(limit=10)
    assert queue.push(b"a" * 6)
    assert not queue.push(b"b" * 5)  # 11 > 10
    assert len(queue) == 1
    assert queue.queued_bytes == 6


def test_non_empty_queue_takes_a_frame_that_reaches_the_limit_exactly() -> None:
    queue = SendQueue(limit=10)
    assert queue.push(b"a" * 6)
    assert queue.push(b"b" * 4)  # 10 == limit
    assert queue.queued_bytes == 10
    assert not queue.push(b"c")


def test_queue_over_its_limit_refuses_even_a_tiny_frame() -> None:
    queue = SendQueue(limit=10)
    queue.push(b"x" * 50)
    assert not queue.push(b"y")


def test_room_comes_back_as_bytes_are_taken() -> None:
    queue = SendQueue(limit=10)
    queue.push(b"a" * 6)
    queue.push(b"b" * 4)
    assert queue.take(100) == b"a" * 6 + b"b" * 4
    assert queue.queued_bytes == 0
    assert queue.push(b"c" * 10)


# take ---------------------------------------------------------------------------------------


def test_single_frame_within_budget_is_returned_as_the_same_object() -> None:
    frame = b"hello world"
    queue = SendQueue(limit=100)
    queue.push(frame)
    assert queue.take(100) is frame
    assert queue.queued_bytes == 0
    assert len(queue) == 0


def test_small_frames_are_coalesced_up_to_the_budget() -> None:
    queue = SendQueue(limit=1000)
    for frame in (b"aaaa", b"bbbb", b"cccc", b"dddd"):
        queue.push(frame)
    assert queue.take(10) == b"aaaabbbb"  # a third frame would make 12 > 10
    assert len(queue) == 2
    assert queue.queued_bytes == 8
    assert queue.take(10) == b"ccccdddd"
    assert queue.queued_bytes == 0
    assert queue.take(10) is None


def test_coalescing_takes_frames_that_fill_the_budget_exactly() -> None:
    queue = SendQueue(limit=1000)
    last = b"cc"
    for frame in (b"aaaaa", b"bbbbb", last):
        queue.push(frame)
    assert queue.take(10) == b"aaaaabbbbb"
    assert queue.queued_bytes == 2
    assert queue.take(10) is last
    assert queue.queued_bytes == 0


def test_large_frame_is_sliced_into_memoryviews_of_the_same_object() -> None:
    frame = bytes(range(256)) * 4  # 1024 bytes
    queue = SendQueue(limit=10)
    queue.push(frame)
    pieces = []
    while (piece := queue.take(300)) is not None:
        assert isinstance(piece, memoryview)
        assert piece.obj is frame  # a view of the queued bytes, not a copy
        pieces.append(piece)
    assert [len(p) for p in pieces] == [300, 300, 300, 124]
    assert b"".join(pieces) == frame
    assert queue.queued_bytes == 0
    assert len(queue) == 0


def test_queued_bytes_counts_what_is_left_of_a_half_written_frame() -> None:
    queue = SendQueue(limit=10_000)
    queue.push(b"x" * 1000)
    queue.push(b"y" * 10)
    assert queue.queued_bytes == 1010
    queue.take(400)
    assert queue.queued_bytes == 610
    queue.take(400)
    assert queue.queued_bytes == 210
    last = queue.take(400)
    assert isinstance(last, memoryview)
    assert bytes(last) == b"x" * 200  # the slice stops at the end of its frame
    assert queue.queued_bytes == 10
    assert queue.take(400) == b"y" * 10
    assert queue.queued_bytes == 0


def test_frames_after_a_sliced_one_come_out_in_order() -> None:
    queue = SendQueue(limit=10_000)
    frames = [b"A" * 50, b"b", b"c", b"D" * 70, b"e"]
    for frame in frames:
        queue.push(frame)
    assert drain(queue, 32) == b"".join(frames)
    assert queue.queued_bytes == 0


# discard_unstarted --------------------------------------------------------------------------


def test_discard_unstarted_empties_a_queue_with_nothing_begun() -> None:
    queue = SendQueue(limit=1000)
    queue.push(b"a" * 10)
    queue.push(b"b" * 10)
    queue.discard_unstarted()
    assert len(queue) == 0
    assert queue.queued_bytes == 0
    assert queue.take(100) is None


def test_discard_unstarted_keeps_the_rest_of_a_half_written_head_frame() -> None:
    head = b"H" * 100
    queue = SendQueue(limit=1000)
    queue.push(head)
    queue.push(b"t" * 10)
    queue.push(b"u" * 10)
    first = queue.take(40)
    queue.discard_unstarted()
    assert len(queue) == 1
    assert queue.queued_bytes == 60
    rest = drain(queue, 1000)
    assert bytes(first) + rest == head  # the stream ends on a frame boundary
    assert queue.queued_bytes == 0


def test_discard_unstarted_on_an_empty_queue_is_harmless() -> None:
    queue = SendQueue(limit=10)
    queue.discard_unstarted()
    assert queue.queued_bytes == 0
    assert queue.take(5) is None


# Frames in pieces (header + JSON around a shared data literal) -------------------------------


def test_a_frame_in_pieces_comes_out_whole_and_in_order() -> None:
    queue = SendQueue(limit=1 << 30)
    data = b"d" * 100_000
    assert queue.push(b"a")
    assert queue.push((b"HEAD", data, b"}"))
    assert queue.push(b"b")
    assert queue.queued_bytes == 1 + 4 + 100_000 + 1 + 1
    assert drain(queue, 4096) == b"a" + b"HEAD" + data + b"}" + b"b"
    assert queue.queued_bytes == 0


def test_the_shared_piece_is_sliced_not_copied() -> None:
    queue = SendQueue(limit=1 << 30)
    data = b"d" * 10_000
    queue.push((b"H", data, b"}"))
    assert queue.take(1000) == b"H"
    piece = queue.take(1000)
    assert isinstance(piece, memoryview) and piece.obj is data


def test_discard_keeps_every_remaining_piece_of_a_half_written_frame() -> None:
    # Regression: only the piece in progress was kept, so the closing "}" was lost and the
    # close frame followed a frame one byte short.
    queue = SendQueue(limit=1 << 30)
    data = b"d" * 10_000
    queue.push((b"HEAD", data, b"}"))
    queue.push(b"later")
    assert bytes(queue.take(4)) == b"HEAD"
    assert len(bytes(queue.take(100))) == 100
    queue.discard_unstarted()
    assert queue.queued_bytes == len(data) - 100 + 1
    assert drain(queue, 4096) == data[100:] + b"}"


def test_discard_drops_a_piece_frame_not_begun() -> None:
    queue = SendQueue(limit=1 << 30)
    queue.push((b"HEAD", b"x" * 10, b"}"))
    queue.discard_unstarted()
    assert queue.queued_bytes == 0
    assert queue.take(100) is None


def test_limit_counts_every_piece() -> None:
    queue = SendQueue(limit=100)
    assert queue.push(b"x" * 10)
    assert not queue.push((b"H", b"y" * 90, b"}"))  # 92 more would make 102
    assert queue.push((b"H", b"y" * 88, b"}"))
