"""Issue 7 item 3: the wire form of branch names (``controller.branchnames``)."""

from __future__ import annotations

import httpx
import pytest

from controller.branchnames import BadBranchEncoding, branch_headers, decode_branch, encode_branch

NAMES = [
    "feat/ünï/cödé",
    "fix/🚀-launch",
    "release/100%",
    "odd/%2F-and-%25",
    "plain/ascii-name_1.2",
    "日本語/ブランチ",
]


@pytest.mark.parametrize("name", NAMES)
def test_every_name_round_trips_through_an_ascii_header(name: str) -> None:
    value = encode_branch(name)
    assert value.isascii()
    assert decode_branch(value) == name
    request = httpx.Request("GET", "http://127.0.0.1/", headers=branch_headers(name))
    assert decode_branch(request.headers["x-slipway-branch"]) == name


def test_plain_ascii_names_are_the_same_in_both_forms() -> None:
    assert encode_branch("feature/x-1") == "feature/x-1"
    assert decode_branch("feature/x-1") == "feature/x-1"
    assert branch_headers(None) == {}


def test_raw_utf8_header_bytes_are_read_as_utf8_not_latin1() -> None:
    raw = "feat/ünï/cödé".encode().decode("latin-1")  # what an ASGI server hands over
    assert decode_branch(raw) == "feat/ünï/cödé"


@pytest.mark.parametrize("value", ["feat/%FF", "feat/%C3", "feat/\xff"])
def test_values_that_are_not_utf8_are_refused(value: str) -> None:
    with pytest.raises(BadBranchEncoding):
        decode_branch(value)
