"""The pure parts: names, dotenv/JSON parsing, sync output, precedence, masking."""

from __future__ import annotations

import itertools

import pytest

from controller.errors import InvalidInput
from controller.secretstore.variables import (
    Variable,
    build_variables,
    mask,
    mask_json,
    parse_import,
    parse_sync_output,
    resolve_variables,
    run_variables,
    validate_name,
)


@pytest.mark.parametrize("name", ["API_URL", "_x", "a1", "SLIPWAY_BUILD_TOKEN"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "1A", "A-B", "A B", "é", "SLIPWAY_PROJECT", "SLIPWAY_BUILD_", "SLIPWAY_"]
)
def test_invalid_or_reserved_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_name(name)


def test_dotenv_import_reads_export_quotes_and_comments() -> None:
    body = b"""# a comment
export API_URL=https://x
QUOTED="two words # not a comment"
SINGLE='it is'
EMPTY=
"""
    values, override = parse_import(body)
    assert values == {
        "API_URL": "https://x",
        "QUOTED": "two words # not a comment",
        "SINGLE": "it is",
        "EMPTY": "",
    }
    assert override is False
    with pytest.raises(InvalidInput, match="line 2"):
        parse_import(b"A=1\nB='unterminated\n")


def test_json_import_carries_override() -> None:
    values, override = parse_import(b'{"variables": {"A": "1"}, "override": true}')
    assert values == {"A": "1"} and override is True
    with pytest.raises(InvalidInput):
        parse_import(b'{"variables": {"A": 1}}')
    with pytest.raises(InvalidInput):
        parse_import(b'{"variables": {"SLIPWAY_RUN_ID": "x"}}')


@pytest.mark.parametrize(
    "printed",
    [
        '{"A": "1", "B": "2"}',
        '[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]',
        "A=1\nexport B='2'\n",
    ],
)
def test_sync_output_formats(printed: str) -> None:
    assert parse_sync_output(printed) == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    "printed", ["{not json", "[1, 2]", '{"A": 1}', "just-a-token-value", "SLIPWAY_X=1"]
)
def test_malformed_sync_output_is_refused_without_quoting_it(printed: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_sync_output(printed)
    assert "just-a-token-value" not in caught.value.message


LAYERS = {
    ("production", ""): [Variable("P", "prod"), Variable("SHARED", "prod")],
    ("staging", ""): [Variable("S", "stg"), Variable("SHARED", "stg")],
    ("preview", ""): [
        Variable("PV", "preview"),
        Variable("SHARED", "preview", fork_safe=True),
        Variable("OPEN", "open", fork_safe=True),
    ],
    ("preview", "feature"): [Variable("SHARED", "feature"), Variable("F", "feature")],
    ("preview", "other"): [Variable("O", "other")],
}
EXPECTED = {
    ("production", None, False): {"P": "prod", "SHARED": "prod"},
    ("staging", None, False): {"S": "stg", "SHARED": "stg"},
    ("preview", None, False): {"PV": "preview", "SHARED": "preview", "OPEN": "open"},
    ("preview", "feature", False): {
        "PV": "preview",
        "SHARED": "feature",
        "OPEN": "open",
        "F": "feature",
    },
    ("preview", "other", False): {
        "PV": "preview",
        "SHARED": "preview",
        "OPEN": "open",
        "O": "other",
    },
    ("preview", "new", False): {"PV": "preview", "SHARED": "preview", "OPEN": "open"},
    ("preview", "feature", True): {"SHARED": "preview", "OPEN": "open"},
    ("preview", "other", True): {"SHARED": "preview", "OPEN": "open"},
    ("production", None, True): {},
}


@pytest.mark.parametrize(
    ("environment", "branch", "fork"),
    [
        (e, b, f)
        for e, b, f in itertools.product(
            ["production", "staging", "preview"], [None, "feature", "other", "new"], [False, True]
        )
        if (e == "preview" or b is None)
    ],
)
def test_precedence_over_the_whole_matrix(environment: str, branch: str | None, fork: bool) -> None:
    got = resolve_variables(environment=environment, branch=branch, layers=LAYERS, fork=fork)
    values = {name: var.value for name, var in got.items()}
    key = (environment, branch, fork)
    if key in EXPECTED:
        assert values == EXPECTED[key]
    if fork:
        assert all(var.fork_safe for var in got.values())
    if environment != "preview":
        assert not {"PV", "F", "O", "OPEN"} & set(values), "no preview value outside previews"
    if environment == "preview":
        assert not {"P", "S"} & set(values), "previews never see production or staging"


def test_build_variables_reach_builds_renamed_and_never_runs() -> None:
    resolved = {
        "SLIPWAY_BUILD_TOKEN": Variable("SLIPWAY_BUILD_TOKEN", "t"),
        "API_URL": Variable("API_URL", "https://x"),
    }
    assert build_variables(resolved) == {"TOKEN": "t"}
    assert run_variables(resolved) == {"API_URL": "https://x"}


def test_masking_covers_values_split_across_writes_and_json() -> None:
    logs = "print 1: s3cr" + "et-value\nsecret-value-longer!"
    assert mask(logs, ["s3cret-value", "secret-value-longer"]) == "print 1: ***\n***!"
    assert mask("ab", ["ab"]) == "ab"  # too short to mask without rewriting every log
    assert mask_json({"k": ["x s3cret-value"], "s3cret-value": 1}, ["s3cret-value"]) == {
        "k": ["x ***"],
        "***": 1,
    }
