import gc
import threading

from syncd.collector import collector_paused


def test_the_collector_runs_again_when_the_last_of_nested_pauses_ends():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_ending_in_another_thread_leaves_the_collector_paused_for_this_one():
    first_in, second_done = threading.Event(), threading.Event()

    def other():
        with collector_paused():
            first_in.set()
            second_done.wait(10)

    thread = threading.Thread(target=other)
    with collector_paused():
        thread.start()
        first_in.wait(10)
    assert not gc.isenabled()  # the other thread's pause still holds
    second_done.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled():
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_runs_again_after_an_error():
    try:
        with collector_paused():
            raise ValueError("boom")
    except ValueError:
        pass
    assert gc.isenabled()
