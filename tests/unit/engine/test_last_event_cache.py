"""sidecar.engine.last_event_cache: the last event of each cache channel, bounded by time and
bytes."""

from __future__ import annotations

from sidecar.engine.last_event_cache import LastEventCache


def test_keeps_the_last_event_per_app_and_channel() -> None:
    cache = LastEventCache(ttl=60, max_bytes=1000)
    cache.store("1", "cache-a", "e", b'"one"', now=0)
    cache.store("1", "cache-a", "e", b'"two"', now=1)
    cache.store("2", "cache-a", "e", b'"other app"', now=1)
    entry = cache.get("1", "cache-a", now=2)
    assert entry is not None and (entry.name, entry.data_json) == ("e", b'"two"')
    assert cache.get("1", "cache-b", now=2) is None
    assert len(cache) == 2
    assert cache.bytes == len(b'"two"') + len(b'"other app"')


def test_an_entry_lives_ttl_seconds_after_it_was_published() -> None:
    cache = LastEventCache(ttl=10, max_bytes=1000)
    cache.store("1", "cache-a", "e", b'"x"', now=100)
    assert cache.get("1", "cache-a", now=109.9) is not None
    assert cache.get("1", "cache-a", now=110) is None
    assert cache.bytes == 0 and len(cache) == 0


def test_expire_drops_the_old_entries_and_keeps_the_fresh() -> None:
    cache = LastEventCache(ttl=10, max_bytes=1000)
    cache.store("1", "cache-old", "e", b'"x"', now=0)
    cache.store("1", "cache-new", "e", b'"y"', now=5)
    cache.store("1", "cache-old", "e", b'"z"', now=6)  # republished: fresh again, last in line
    cache.expire(now=15.5)
    assert cache.get("1", "cache-new", now=15.5) is None
    assert cache.get("1", "cache-old", now=15.5) is not None
    assert len(cache) == 1


def test_over_the_byte_bound_the_oldest_go_first() -> None:
    cache = LastEventCache(ttl=60, max_bytes=10)
    cache.store("1", "cache-a", "e", b"aaaa", now=0)
    cache.store("1", "cache-b", "e", b"bbbb", now=1)
    cache.store("1", "cache-c", "e", b"cccc", now=2)
    assert cache.get("1", "cache-a", now=3) is None
    assert cache.get("1", "cache-b", now=3) is not None
    assert cache.bytes == 8


def test_an_event_bigger_than_the_whole_cache_is_not_kept_and_evicts_nothing() -> None:
    cache = LastEventCache(ttl=60, max_bytes=10)
    cache.store("1", "cache-a", "e", b"aaaa", now=0)
    cache.store("1", "cache-b", "e", b"b" * 11, now=1)
    assert cache.get("1", "cache-b", now=2) is None
    assert cache.get("1", "cache-a", now=2) is not None
