"""The work queue's guarantees, with real threads: coalescing, one worker per key, no lost
change, delayed and rate-limited adds; and the resync pacing."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from syncd.workqueue import ResyncPacer, RetryLimiter, WorkQueue


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_added_many_times_while_waiting_is_processed_once():
    queue = WorkQueue()
    for _ in range(100):
        queue.add("a", "source")
    queue.add("b", "cluster")
    assert queue.get(timeout=0) == ("a", "source")  # the first reason is kept
    assert queue.get(timeout=0) == ("b", "cluster")
    assert queue.get(timeout=0) is None


def test_a_key_added_while_processing_comes_back_after_done_not_before():
    queue = WorkQueue()
    queue.add("a")
    key, _ = queue.get(timeout=0)
    queue.add("a", "cluster")
    assert queue.get(timeout=0) is None  # not handed to a second worker
    queue.done(key)
    assert queue.get(timeout=0) == ("a", "cluster")


def test_a_slow_key_is_never_on_two_workers_and_no_change_is_lost():
    queue = WorkQueue()
    keys = [f"t{n}" for n in range(5)]
    inside: Counter[str] = Counter()
    overlaps = []
    last_seen: dict[str, int] = {}
    lock = threading.Lock()
    version = Counter()

    def worker():
        while (item := queue.get(timeout=1)) is not None:
            key, _ = item
            with lock:
                inside[key] += 1
                if inside[key] > 1:
                    overlaps.append(key)
                seen = version[key]
            time.sleep(random.uniform(0, 0.004) if key != "t0" else 0.02)  # t0 is slow
            with lock:
                last_seen[key] = seen
                inside[key] -= 1
            queue.done(key)

    workers = [threading.Thread(target=worker) for _ in range(8)]
    for thread in workers:
        thread.start()
    for _ in range(2000):
        key = random.choice(keys)
        with lock:
            version[key] += 1
        queue.add(key)
        if random.random() < 0.1:
            time.sleep(0.001)
    for thread in workers:
        thread.join()
    assert overlaps == []
    assert last_seen == dict(version)  # every key was processed after its last change


def test_add_after_waits_and_the_earliest_request_wins():
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add_after("a", 10, "hold")
    queue.add_after("a", 5, "recheck")
    assert queue.get(timeout=0) is None
    clock.now = 5
    assert queue.get(timeout=0) == ("a", "recheck")


def test_each_key_backs_off_on_its_own_and_forget_resets_it():
    limiter = RetryLimiter(base=1, cap=8, qps=1000, burst=1000)
    delays = [limiter.when("a") for _ in range(6)]
    for failures, delay in enumerate(delays):
        expected = min(8, 2**failures)  # 1, 2, 4, 8, 8, 8: doubling, capped
        assert 0.8 * expected <= delay <= 1.2 * expected  # with jitter
    assert limiter.when("b") <= 1.2  # another key starts from the base
    limiter.forget("a")
    assert limiter.when("a") <= 1.2


def test_all_retries_together_are_bounded_by_the_overall_bucket():
    clock = FakeClock()
    limiter = RetryLimiter(base=0.001, cap=0.001, qps=10, burst=5, clock=clock)
    delays = [limiter.when(f"k{n}") for n in range(25)]
    assert sum(1 for d in delays if d < 0.01) == 5  # the burst
    assert max(delays) >= 1.9  # then 10 per second


def test_shutdown_stops_workers_even_with_work_queued():
    queue = WorkQueue()
    queue.add("a")
    queue.shut_down()
    assert queue.get(timeout=1) is None


def test_resync_spreads_every_key_evenly_over_the_interval():
    pacer = ResyncPacer(interval=100, tick=1)
    pacer.reset([f"t{n}" for n in range(1000)])
    seen: Counter[str] = Counter()
    sizes = []
    rounds = 0
    for _ in range(200):
        batch, done = pacer.next_batch()
        sizes.append(len(batch))
        seen.update(batch)
        rounds += done
    assert set(sizes) == {10}  # no burst: the same share every tick
    assert rounds == 2 and set(seen.values()) == {2}


def test_resync_of_a_few_keys_is_not_one_per_tick():
    pacer = ResyncPacer(interval=300, tick=1)
    pacer.reset(["a", "b", "c"])
    batches = [pacer.next_batch()[0] for _ in range(300)]
    assert sum(len(b) for b in batches) == 3  # one key every 100 s, not one per second
