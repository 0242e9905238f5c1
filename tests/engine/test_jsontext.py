"""`jsontext.loads` returns what `json.loads` returns, and raises what it raises."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bullwait.engine import jsontext


def _outcome(load: Any, text: str) -> tuple[str, Any]:
    try:
        return "value", _exact(load(text))
    except Exception as exc:  # noqa: BLE001 - the comparison is of what each raises
        return "raised", type(exc)


def _exact(value: Any) -> Any:
    """`value` with each number tagged by its type, and floats by their bits (-0.0, nan)."""
    if isinstance(value, dict):
        return ("dict", [(k, _exact(v)) for k, v in value.items()])  # order kept, as json.loads keeps it
    if isinstance(value, list):
        return ("list", [_exact(v) for v in value])
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value.hex())
    return (type(value).__name__, value)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(value=json_values, ascii_only=st.booleans())
def test_same_values_as_json_loads(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert _outcome(jsontext.loads, text) == _outcome(json.loads, text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet='{}[]":,.-+0123456789eEtrufalsnNIiy \\u\t\n\ud800', max_size=20))
def test_same_value_or_error_for_any_text(text: str) -> None:
    assert _outcome(jsontext.loads, text) == _outcome(json.loads, text)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',  # the last one wins
        "-0",
        "-0.0",
        "1e400",
        "NaN",
        "-Infinity",
        "123456789012345678901234567890",
        "9007199254740993",
        "1.00000000000000011102230246251565404236316680908203125",
        "5e-324",
        '"\\ud800"',  # a lone surrogate, escaped: json.loads keeps it
        '"\ud800"',  # the same, raw (data read with surrogateescape)
        '"a\x01b"',
        "{} x",
        "\ufeff{}",
        "[1,]",
        "[" * 300 + "]" * 300,  # deeper than pydantic-core goes
        "1" * 5000,  # more digits than Python converts
        "",
    ],
)
def test_edge_cases(text: str) -> None:
    assert _outcome(jsontext.loads, text) == _outcome(json.loads, text)
