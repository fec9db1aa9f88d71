"""Property: whatever the input, the loader returns a Config or raises ConfigError, never
anything else (no KeyError, TypeError, RecursionError... leaking out to the user)."""

from __future__ import annotations

import copy

import yaml
from hypothesis import given
from hypothesis import strategies as st

from harness.helpers import CEPH_EXAMPLE
from syncd.config import load_config_text
from syncd.errors import ConfigError
from syncd.model import Config

EXAMPLE = yaml.safe_load(CEPH_EXAMPLE.read_text())

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "static",
            "both",
            "endpoints",
            "192.0.2.1:80",
            "[::1]:80",
            "http",
            "0.0.0.0",
            "ff02::1",
            "2001:db8::1",
            "",
            "-",
            "TCP",
            "SCTP",
        ]
    )
)
documents = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=12)
            | st.sampled_from(
                sorted(
                    _keys := {
                        "version",
                        "targets",
                        "namespace",
                        "service",
                        "ports",
                        "sources",
                        "type",
                        "backends",
                        "file",
                        "address",
                        "port",
                        "name",
                        "protocol",
                        "ready",
                        "output",
                        "manage_service",
                        "max_endpoints_per_slice",
                    }
                )
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


def _load(text: str) -> Config | None:
    try:
        return load_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        assert all(p.startswith("fuzz.yaml") and "\n" not in p for p in exc.problems)
        return None


@given(documents)
def test_random_documents_only_ever_raise_config_error(document):
    _load(yaml.safe_dump(document))


@given(st.text(max_size=300))
def test_random_text_only_ever_raises_config_error(text):
    _load(text)


@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_config_error(data):
    _load(data.decode("utf-8", errors="replace"))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


EXAMPLE_PATHS = [p for p in _paths(EXAMPLE) if p]


@st.composite
def mutated_examples(draw):
    document = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(documents)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(documents)
            else:
                parent.append(draw(documents))
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier mutation removed or reshaped this path
    return document


@given(mutated_examples())
def test_mutations_of_the_example_only_ever_raise_config_error(document):
    _load(yaml.safe_dump(document))


def test_the_unmutated_example_loads():
    assert _load(yaml.safe_dump(EXAMPLE)) is not None


def test_a_key_ending_in_a_newline_is_quoted_in_one_line():
    """Found by the property above: a regex's '$' matches before a final newline, so the
    key "0\\n" passed for a plain one and its newline broke the message in two."""
    assert _load(yaml.safe_dump({"0\n": None})) is None
