"""The process's heap tuning: what it asks glibc for, and that the environment wins."""

from __future__ import annotations

import pytest

from syncd import process_memory


class _Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> _Libc:
    fake = _Libc()
    monkeypatch.setattr(process_memory, "_libc", lambda: fake)
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return fake


def test_two_arenas_and_a_fixed_mmap_threshold_by_default(libc: _Libc) -> None:
    process_memory.tune_malloc()
    assert libc.calls == [(-8, 2), (-3, 128 * 1024)]


@pytest.mark.parametrize(
    ("name", "value", "left"),
    [
        ("MALLOC_ARENA_MAX", "4", [(-3, 128 * 1024)]),
        ("MALLOC_MMAP_THRESHOLD_", "65536", [(-8, 2)]),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", [(-8, 2)]),
        ("GLIBC_TUNABLES", "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=1", []),
    ],
)
def test_a_setting_in_the_environment_is_left_to_win(
    libc: _Libc, monkeypatch: pytest.MonkeyPatch, name: str, value: str, left: list
) -> None:
    monkeypatch.setenv(name, value)
    process_memory.tune_malloc()
    assert libc.calls == left
