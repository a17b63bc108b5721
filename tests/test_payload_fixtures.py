"""The test-support layer: GitHub's real payloads, the schema check and octokit's signer.

Also proves that our own ``webhooks.signatures`` agrees with GitHub's library.

Over 400 lines: it checks the whole test-support layer (examples, builders, schema
validation, signer) in one place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from support import payloads
from support.payloads import ZERO_SHA, body_of, octokit_sign, validate

from webhooks import signatures
from webhooks.signatures import SignatureError

# GitHub's documented test vector for X-Hub-Signature-256.
VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

SHA_A = "a" * 40
SHA_B = "b" * 40


@pytest.fixture(autouse=True)
def node_modules(request: pytest.FixtureRequest) -> None:
    """For tests marked ``node``: skip (with CI=true, fail) without tests/node's packages."""
    if request.node.get_closest_marker("node") is not None:
        payloads.require_node_modules()


# --- (a) the example set is the one TESTING.md describes --------------------------------


@pytest.mark.parametrize(
    ("event", "count"),
    [
        ("push", 7),
        ("pull_request", 29),
        ("installation", 7),
        ("installation_repositories", 3),
        ("ping", 4),
        ("create", 5),
        ("delete", 4),
    ],
)
@pytest.mark.node
def test_example_counts(event: str, count: int) -> None:
    assert len(payloads.examples(event)) == count


@pytest.mark.parametrize(
    ("action", "count"), [("opened", 4), ("synchronize", 1), ("reopened", 2), ("closed", 2)]
)
@pytest.mark.node
def test_pull_request_example_counts(action: str, count: int) -> None:
    found = payloads.examples("pull_request", action)
    assert len(found) == count
    assert all(p["action"] == action for p in found)


@pytest.mark.node
def test_real_closed_examples_are_all_unmerged() -> None:
    assert [p["pull_request"]["merged"] for p in payloads.examples("pull_request", "closed")] == [
        False,
        False,
    ]


@pytest.mark.node
def test_examples_are_deep_copies() -> None:
    first = payloads.example("push")
    first["repository"]["full_name"] = "changed/by-a-test"
    assert payloads.example("push")["repository"]["full_name"] != "changed/by-a-test"


@pytest.mark.node
def test_unknown_event_has_no_examples() -> None:
    with pytest.raises(KeyError, match="no webhook examples"):
        payloads.examples("no_such_event")


# --- (b) builders produce schema-valid payloads; the validator can fail ----------------

Builder = Callable[[], dict[str, Any]]

BUILDERS: dict[str, tuple[str, Builder]] = {
    "push-branch": ("push", lambda: payloads.push(before=SHA_A, after=SHA_B)),
    "push-created": (
        "push",
        lambda: payloads.push(
            ref="refs/heads/feature/x", before=ZERO_SHA, after=SHA_B, created=True
        ),
    ),
    "push-deleted": (
        "push",
        lambda: payloads.push(
            ref="refs/heads/feature/x", before=SHA_A, after=ZERO_SHA, deleted=True
        ),
    ),
    "push-tag": (
        "push",
        lambda: payloads.push(ref="refs/tags/v1", before=ZERO_SHA, after=SHA_B, created=True),
    ),
    "push-clone-url": (
        "push",
        lambda: payloads.push(before=SHA_A, after=SHA_B, clone_url="file:///tmp/demo.git"),
    ),
    **{
        f"pr-{action}": (
            "pull_request",
            partial(payloads.pull_request, action=action, head_sha=SHA_B),
        )
        for action in ("opened", "synchronize", "reopened", "ready_for_review", "closed")
    },
    "pr-merged": (
        "pull_request",
        lambda: payloads.pull_request(action="closed", head_sha=SHA_B, merged=True),
    ),
    "pr-fork": (
        "pull_request",
        lambda: payloads.pull_request(action="opened", head_sha=SHA_B, fork_owner="mallory"),
    ),
    "pr-draft": (
        "pull_request",
        lambda: payloads.pull_request(action="opened", head_sha=SHA_B, draft=True),
    ),
    "pr-derived-enqueued": (
        "pull_request",
        lambda: payloads.pull_request(action="enqueued", head_sha=SHA_B),
    ),
    **{
        f"installation-{action}": (
            "installation",
            partial(payloads.installation, action=action, repos=["octo-org/demo"]),
        )
        for action in ("created", "deleted", "suspend", "unsuspend", "new_permissions_accepted")
    },
    "installation_repositories-added": (
        "installation_repositories",
        lambda: payloads.installation_repositories(
            action="added", added=["octo-org/demo"], removed=[]
        ),
    ),
    "installation_repositories-removed": (
        "installation_repositories",
        lambda: payloads.installation_repositories(
            action="removed", added=[], removed=["octo-org/demo"]
        ),
    ),
    "ping": ("ping", payloads.ping),
}


@pytest.mark.parametrize("case", sorted(BUILDERS))
@pytest.mark.node
def test_builder_output_validates(case: str) -> None:
    event, build = BUILDERS[case]
    payload = build()
    validate(event, payload)
    # Nothing of the example's original repository may leak into an edited payload.
    if event in ("push", "pull_request"):
        assert "Hello-World" not in body_of(payload).decode()


def _broken_cases() -> list[tuple[str, str, Callable[[dict[str, Any]], None]]]:
    def drop_ref(p: dict[str, Any]) -> None:
        del p["ref"]

    def drop_head_sha(p: dict[str, Any]) -> None:
        del p["pull_request"]["head"]["sha"]

    def closed_but_open(p: dict[str, Any]) -> None:
        p["pull_request"]["state"] = "open"

    def bad_merged_at(p: dict[str, Any]) -> None:
        p["pull_request"]["merged_at"] = "yesterday"

    def unknown_field(p: dict[str, Any]) -> None:
        p["not_a_github_field"] = True

    def repo_id_as_string(p: dict[str, Any]) -> None:
        p["repositories"][0]["id"] = "1"

    return [
        ("push-branch", "'ref' is a required property", drop_ref),
        ("pr-opened", "'sha' is a required property", drop_head_sha),
        ("pr-merged", r"'open' is not one of \['closed'\]", closed_but_open),
        ("pr-merged", "is not a 'date-time'", bad_merged_at),
        ("ping", "Additional properties are not allowed", unknown_field),
        ("installation-created", "is not of type 'integer'", repo_id_as_string),
    ]


@pytest.mark.parametrize(
    ("case", "message", "breakage"),
    [pytest.param(*case, id=case[2].__name__) for case in _broken_cases()],
)
@pytest.mark.node
def test_validator_rejects_broken_payloads(
    case: str, message: str, breakage: Callable[[dict[str, Any]], None]
) -> None:
    event, build = BUILDERS[case]
    payload = build()
    breakage(payload)
    with pytest.raises(AssertionError, match=message):
        validate(event, payload)


@pytest.mark.node
def test_validator_rejects_stale_examples() -> None:
    # The first push example predates fields the schema now requires; builders skip it.
    with pytest.raises(AssertionError, match="'is_template' is a required property"):
        validate("push", payloads.example("push", index=0))


@pytest.mark.node
def test_validator_uses_the_actions_definition() -> None:
    opened = payloads.pull_request(action="opened", head_sha=SHA_B)
    assert payloads.definition_name("pull_request", opened) == "pull_request$opened"
    assert payloads.definition_name("push", payloads.example("push")) == "push$event"
    assert payloads.definition_name("ping", payloads.ping()) == "ping$event"
    # An open pull request is not a valid `closed` delivery.
    relabelled = copy.deepcopy(opened)
    relabelled["action"] = "closed"
    with pytest.raises(AssertionError, match=r"pull_request\$closed"):
        validate("pull_request", relabelled)
    with pytest.raises(AssertionError, match="no definition"):
        validate("pull_request", {**opened, "action": "merged"})


@pytest.mark.node
def test_action_without_a_valid_derivation_is_refused() -> None:
    # `edited` has no example and needs `changes`: deriving it from `opened` must not pass.
    with pytest.raises(AssertionError, match="'changes' is a required property"):
        payloads.pull_request(action="edited", head_sha=SHA_B)


@pytest.mark.node
def test_push_fields() -> None:
    p = payloads.push(
        repo="acme/widgets",
        ref="refs/heads/develop",
        before=SHA_A,
        after=SHA_B,
        default_branch="trunk",
        clone_url="file:///srv/widgets.git",
    )
    repo = p["repository"]
    assert (repo["full_name"], repo["name"], repo["owner"]["login"]) == (
        "acme/widgets",
        "widgets",
        "acme",
    )
    assert repo["owner"]["name"] == "acme"
    assert repo["default_branch"] == repo["master_branch"] == "trunk"
    assert repo["clone_url"] == "file:///srv/widgets.git"
    assert repo["id"] == payloads.repository_id("acme/widgets")
    assert (p["ref"], p["before"], p["after"]) == ("refs/heads/develop", SHA_A, SHA_B)
    assert (p["created"], p["deleted"]) == (False, False)
    assert p["head_commit"]["id"] == SHA_B
    assert [c["id"] for c in p["commits"]] == [SHA_B]
    assert p["installation"]["id"] == payloads.DEFAULT_INSTALLATION_ID


@pytest.mark.node
def test_push_deleted_and_tag() -> None:
    deleted = payloads.push(ref="refs/heads/gone", before=SHA_A, after=ZERO_SHA, deleted=True)
    assert deleted["deleted"] is True
    assert deleted["head_commit"] is None
    assert deleted["commits"] == []
    tag = payloads.push(ref="refs/tags/v1", before=ZERO_SHA, after=SHA_B, created=True)
    assert tag["ref"] == "refs/tags/v1"
    assert tag["head_commit"]["id"] == SHA_B
    assert tag["commits"] == []
    with pytest.raises(ValueError, match="ZERO_SHA"):
        payloads.push(before=SHA_A, after=SHA_B, deleted=True)


@pytest.mark.node
def test_pull_request_fields() -> None:
    p = payloads.pull_request(
        action="synchronize",
        number=12,
        repo="acme/widgets",
        head_ref="feat/y",
        head_sha=SHA_B,
        base_ref="develop",
    )
    pr = p["pull_request"]
    assert p["action"] == "synchronize"
    assert p["number"] == pr["number"] == 12
    assert pr["url"].endswith("/repos/acme/widgets/pulls/12")
    assert (pr["head"]["ref"], pr["head"]["sha"], pr["head"]["label"]) == (
        "feat/y",
        SHA_B,
        "acme:feat/y",
    )
    assert pr["head"]["repo"] == pr["base"]["repo"] == p["repository"]
    assert (pr["base"]["ref"], pr["base"]["label"]) == ("develop", "acme:develop")
    assert pr["draft"] is False
    assert pr["merged"] is False


@pytest.mark.node
def test_pull_request_from_a_fork() -> None:
    p = payloads.pull_request(action="opened", head_sha=SHA_B, fork_owner="mallory")
    head, base = p["pull_request"]["head"], p["pull_request"]["base"]
    assert head["repo"]["full_name"] == "mallory/demo"
    assert head["repo"]["fork"] is True
    assert head["repo"]["id"] != base["repo"]["id"]
    assert head["repo"]["owner"]["login"] == "mallory"
    assert head["repo"]["owner"]["id"] != base["repo"]["owner"]["id"]
    assert head["label"] == "mallory:feature/x"
    assert base["repo"]["full_name"] == p["repository"]["full_name"] == "octo-org/demo"
    assert base["repo"]["fork"] is False


@pytest.mark.node
def test_pull_request_merged_and_closed() -> None:
    merged = payloads.pull_request(action="closed", head_sha=SHA_B, merged=True)["pull_request"]
    assert merged["state"] == "closed"
    assert merged["merged"] is True
    assert merged["merged_at"]
    assert len(merged["merge_commit_sha"]) == 40
    assert merged["merged_by"]["login"]
    closed = payloads.pull_request(action="closed", head_sha=SHA_B)["pull_request"]
    assert (closed["merged"], closed["merged_at"], closed["merged_by"]) == (False, None, None)
    with pytest.raises(ValueError, match="closed"):
        payloads.pull_request(action="opened", head_sha=SHA_B, merged=True)


@pytest.mark.node
def test_pull_request_ready_for_review_and_draft() -> None:
    ready = payloads.pull_request(action="ready_for_review", head_sha=SHA_B)
    assert ready["action"] == "ready_for_review"
    assert ready["pull_request"]["draft"] is False
    draft = payloads.pull_request(action="opened", head_sha=SHA_B, draft=True)
    assert draft["pull_request"]["draft"] is True


@pytest.mark.node
def test_installation_payloads() -> None:
    p = payloads.installation(
        action="created",
        repos=["octo-org/demo", "octo-org/api"],
        installation_id=77,
        account="octo-org",
    )
    assert p["installation"]["id"] == 77
    assert "/installations/77/" in p["installation"]["access_tokens_url"]
    assert p["installation"]["account"]["login"] == "octo-org"
    assert p["installation"]["target_id"] == p["installation"]["account"]["id"]
    assert [r["full_name"] for r in p["repositories"]] == ["octo-org/demo", "octo-org/api"]
    assert p["repositories"][0] == {
        "id": payloads.repository_id("octo-org/demo"),
        "node_id": p["repositories"][0]["node_id"],
        "name": "demo",
        "full_name": "octo-org/demo",
        "private": False,
    }
    # The same repository gets the same id in every builder.
    push = payloads.push(before=SHA_A, after=SHA_B)
    assert p["repositories"][0]["id"] == push["repository"]["id"]
    assert p["repositories"][0]["node_id"] == push["repository"]["node_id"]

    changed = payloads.installation_repositories(
        action="removed", added=[], removed=["octo-org/demo"], installation_id=77
    )
    assert changed["installation"]["id"] == 77
    assert changed["repositories_added"] == []
    assert [r["full_name"] for r in changed["repositories_removed"]] == ["octo-org/demo"]


# --- (c) GitHub's own signer ----------------------------------------------------------


@pytest.mark.node
def test_octokit_sign_matches_githubs_documented_vector() -> None:
    assert octokit_sign(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIGNATURE


# --- (d) our signer agrees with GitHub's; verification fails closed --------------------


def test_our_sign_matches_githubs_documented_vector() -> None:
    assert signatures.sign(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIGNATURE
    signatures.verify(VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE)


@pytest.mark.node
def test_our_sign_agrees_with_octokit_on_real_payloads() -> None:
    secret = "s3cr3t-for-tests"
    bodies = [
        body_of(payloads.push(before=SHA_A, after=SHA_B)),
        body_of(payloads.example("push", index=4)),
        # Non-ASCII text (GitHub sends raw UTF-8) must be signed byte for byte.
        body_of({**payloads.ping(), "zen": "Désolé — ünïcødé ✓"}),
    ]
    for body in bodies:
        theirs = octokit_sign(secret, body)
        assert signatures.sign(secret, body) == theirs
        signatures.verify(secret, body, theirs)


def test_body_of_is_compact_utf8() -> None:
    assert body_of({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode()


@pytest.mark.parametrize(
    ("secret", "body", "header", "message"),
    [
        (VECTOR_SECRET, b"Hello, World?", VECTOR_SIGNATURE, "does not match"),
        (VECTOR_SECRET, VECTOR_BODY, None, "missing"),
        (VECTOR_SECRET, VECTOR_BODY, "", "missing"),
        (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE.removeprefix("sha256="), "sha256="),
        (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE.replace("sha256=", "sha1="), "sha256="),
        (None, VECTOR_BODY, VECTOR_SIGNATURE, "secret"),
        ("", VECTOR_BODY, VECTOR_SIGNATURE, "secret"),
        ("another secret", VECTOR_BODY, VECTOR_SIGNATURE, "does not match"),
    ],
    ids=[
        "tampered-body",
        "missing-header",
        "empty-header",
        "no-prefix",
        "sha1-prefix",
        "no-secret",
        "empty-secret",
        "wrong-secret",
    ],
)
def test_verify_refuses(secret: str | None, body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        signatures.verify(secret, body, header)


@pytest.mark.node
def test_verify_refuses_a_tampered_real_payload() -> None:
    secret = "s3cr3t-for-tests"
    payload = payloads.push(before=SHA_A, after=SHA_B)
    header = octokit_sign(secret, body_of(payload))
    payload["after"] = "c" * 40
    with pytest.raises(SignatureError, match="does not match"):
        signatures.verify(secret, body_of(payload), header)


def test_require_node_modules_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payloads, "missing_node_support", lambda: "packages missing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(RuntimeError, match="npm ci --prefix tests/node"):
        payloads.require_node_modules()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="npm ci --prefix tests/node"):
        payloads.require_node_modules()
