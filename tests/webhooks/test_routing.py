"""``webhooks.routing.route`` against SPEC.md's "How GitHub events map to work" table.

Pure: every payload is one of GitHub's real examples (``@octokit/webhooks-examples``),
edited by ``support.payloads`` and validated against ``@octokit/webhooks-schemas``; the
projects are plain ``ProjectView`` snapshots. No server, no database.

Over 400 lines: it covers SPEC.md's whole event table in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from support import payloads
from support.payloads import ZERO_SHA

from webhooks.events import PayloadError, PullRequest, Push
from webhooks.routing import (
    AccessChange,
    Archive,
    Deploy,
    ProjectView,
    RecordSignal,
    Routed,
    Skip,
    route,
)

pytestmark = pytest.mark.node

REPO = "octo-org/demo"
FORK_OWNER = "contributor"
SHA_A = "9b2c7e4f0a1d3c5e7f9b2c7e4f0a1d3c5e7f9b2c"
SHA_B = "1f3e5d7c9b1a2f3e5d7c9b1a2f3e5d7c9b1a2f3e"


@pytest.fixture(autouse=True)
def _node_modules() -> None:
    payloads.require_node_modules()


def project(**overrides: Any) -> ProjectView:
    fields: dict[str, Any] = {"id": 1, "ref": "demo", "repo": REPO}
    fields.update(overrides)
    return ProjectView(**fields)


def push_to(branch: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("before", SHA_A)
    kwargs.setdefault("after", SHA_B)
    return payloads.push(ref=f"refs/heads/{branch}", **kwargs)


def pr(action: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("head_sha", SHA_B)
    return payloads.pull_request(action=action, **kwargs)


def production(sha: str = SHA_B, ref: str = "refs/heads/main", project_id: int = 1) -> Deploy:
    return Deploy(project_id, "production", None, sha, ref, "push")


def preview(branch: str = "feature/x", **overrides: Any) -> Deploy:
    fields: dict[str, Any] = {
        "project_id": 1,
        "environment": "preview",
        "branch": branch,
        "sha": SHA_B,
        "ref": "refs/pull/7/head",
        "source": "pull_request",
        "pr_number": 7,
        "head_repo": REPO,
        "is_fork": False,
    }
    fields.update(overrides)
    return Deploy(**fields)


def only_skip(routed: Routed) -> Skip:
    assert len(routed.intents) == 1, routed
    skip = routed.intents[0]
    assert isinstance(skip, Skip), routed
    return skip


# --- push ---------------------------------------------------------------------------------


def test_push_to_default_branch_deploys_after_to_production() -> None:
    routed = route("push", push_to("main"), [project()])
    assert routed.intents == [production()]
    assert "production" in routed.outcome


def test_push_to_a_renamed_default_branch_follows_the_payload() -> None:
    routed = route("push", push_to("trunk", default_branch="trunk"), [project()])
    assert routed.intents == [production(ref="refs/heads/trunk")]


def test_production_branch_overrides_the_default_branch() -> None:
    view = project(production_branch="release")
    assert route("push", push_to("release"), [view]).intents == [
        production(ref="refs/heads/release")
    ]
    untracked = route("push", push_to("main"), [view])
    assert untracked.intents == []
    assert "main" in untracked.outcome and "not a tracked branch" in untracked.outcome


def test_push_to_staging_branch_deploys_staging() -> None:
    routed = route("push", push_to("develop"), [project(staging_branch="develop")])
    assert routed.intents == [Deploy(1, "staging", None, SHA_B, "refs/heads/develop", "push")]


def test_branch_configured_for_both_deploys_both() -> None:
    view = project(production_branch="main", staging_branch="main")
    routed = route("push", push_to("main"), [view])
    assert routed.intents == [
        production(),
        Deploy(1, "staging", None, SHA_B, "refs/heads/main", "push"),
    ]


def test_push_to_untracked_branch_does_nothing_and_says_why() -> None:
    routed = route("push", push_to("feature/x"), [project(staging_branch="develop")])
    assert routed.intents == []
    assert routed.outcome.startswith("ignored")
    assert "feature/x" in routed.outcome and "not a tracked branch" in routed.outcome


def test_tag_push_does_nothing() -> None:
    payload = payloads.push(ref="refs/tags/v1.2.0", before=ZERO_SHA, after=SHA_B, created=True)
    routed = route("push", payload, [project(production_branch="v1.2.0")])
    assert routed.intents == []
    assert "tag" in routed.outcome and "refs/tags/v1.2.0" in routed.outcome


def test_push_each_project_of_the_repository_gets_its_own_intents() -> None:
    views = [project(), project(id=2, ref="other", production_branch="release")]
    routed = route("push", push_to("main"), views)
    assert routed.intents == [production()]


def test_push_without_projects_is_ignored() -> None:
    routed = route("push", push_to("main"), [])
    assert routed.intents == []
    assert f"no project is connected to {REPO}" in routed.outcome


def test_deleted_branch_archives_only_its_active_preview() -> None:
    payload = push_to("feature/x", after=ZERO_SHA, deleted=True)
    views = [
        project(active_previews=frozenset({"feature/x", "feature/y"})),
        project(id=2, ref="other", active_previews=frozenset({"feature/y"})),
    ]
    routed = route("push", payload, views)
    assert len(routed.intents) == 1
    archive = routed.intents[0]
    assert isinstance(archive, Archive)
    assert (archive.project_id, archive.branch, archive.pr_number) == (1, "feature/x", None)
    assert "deleted" in archive.reason


def test_deleted_branch_without_active_preview_does_nothing() -> None:
    payload = push_to("feature/x", after=ZERO_SHA, deleted=True)
    assert route("push", payload, [project(active_previews=frozenset({"other"}))]).intents == []


def test_deleting_the_production_branch_deploys_nothing() -> None:
    payload = push_to("main", after=ZERO_SHA, deleted=True)
    assert route("push", payload, [project(staging_branch="main")]).intents == []


def test_push_to_tracked_branch_of_a_project_not_deploying_is_skipped() -> None:
    view = project(deploying=False, not_deploying_reason="the project is disconnected")
    skip = only_skip(route("push", push_to("main"), [view]))
    assert skip.project_id == 1
    assert "the project is disconnected" in skip.reason
    assert SHA_B[:7] in skip.reason


# --- pull_request -------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["opened", "reopened", "synchronize", "ready_for_review"])
def test_pull_request_deploys_head_sha_to_its_preview_branch(action: str) -> None:
    routed = route("pull_request", pr(action), [project()])
    assert routed.intents == [preview()]


def test_preview_branch_strips_refs_heads() -> None:
    routed = route("pull_request", pr("opened", head_ref="refs/heads/feature/y"), [project()])
    assert routed.intents == [preview("feature/y")]


def test_redeploying_an_active_preview_is_a_deploy() -> None:
    view = project(active_previews=frozenset({"feature/x"}))
    assert route("pull_request", pr("synchronize"), [view]).intents == [preview()]


@pytest.mark.parametrize("action", ["opened", "synchronize"])
def test_draft_pull_request_is_skipped_until_ready(action: str) -> None:
    skip = only_skip(route("pull_request", pr(action, draft=True), [project()]))
    assert "draft" in skip.reason
    assert "#7" in skip.reason


@pytest.mark.parametrize(("merged", "word"), [(True, "merged"), (False, "closed")])
def test_closed_pull_request_archives_its_preview(merged: bool, word: str) -> None:
    view = project(active_previews=frozenset({"feature/x"}))
    routed = route("pull_request", pr("closed", merged=merged), [view])
    assert len(routed.intents) == 1
    archive = routed.intents[0]
    assert isinstance(archive, Archive)
    assert (archive.project_id, archive.branch, archive.pr_number) == (1, "feature/x", 7)
    assert word in archive.reason
    if not merged:
        assert "merged" not in archive.reason
    assert word in routed.outcome


def test_real_closed_example_is_unmerged() -> None:
    """GitHub's own closed examples are both unmerged: they must archive as 'closed'."""
    for payload in payloads.examples("pull_request", "closed"):
        view = project(repo=payload["repository"]["full_name"])
        intents = route("pull_request", payload, [view]).intents
        assert [type(i) for i in intents] == [Archive]
        assert isinstance(intents[0], Archive) and "closed" in intents[0].reason


def test_fork_pull_request_is_skipped_and_says_how_to_allow_it() -> None:
    payload = pr("opened", fork_owner=FORK_OWNER)
    skip = only_skip(route("pull_request", payload, [project()]))
    assert f"{FORK_OWNER}/demo" in skip.reason
    assert "fork" in skip.reason
    assert "--fork-previews" in skip.reason


def test_fork_pull_request_deploys_when_fork_previews_are_allowed() -> None:
    payload = pr("synchronize", fork_owner=FORK_OWNER)
    routed = route("pull_request", payload, [project(fork_previews=True)])
    assert routed.intents == [preview(head_repo=f"{FORK_OWNER}/demo", is_fork=True)]


def test_pull_request_from_a_deleted_fork_counts_as_a_fork() -> None:
    payload = pr("synchronize", fork_owner=FORK_OWNER)
    payload["pull_request"]["head"]["repo"] = None
    payloads.validate("pull_request", payload)
    parsed = PullRequest.parse(payload)
    assert parsed.is_fork and parsed.head_repo is None
    skip = only_skip(route("pull_request", payload, [project()]))
    assert "fork" in skip.reason


def test_head_repository_differing_only_in_case_is_not_a_fork() -> None:
    payload = pr("opened")
    payload["pull_request"]["head"]["repo"]["full_name"] = REPO.upper()
    assert route("pull_request", payload, [project()]).intents == [preview(head_repo=REPO.upper())]


def test_previews_off_skips() -> None:
    skip = only_skip(route("pull_request", pr("opened"), [project(previews=False)]))
    assert "previews are off" in skip.reason
    assert "--previews" in skip.reason


def test_preview_limit_reached_skips_a_new_branch() -> None:
    view = project(preview_limit=2, active_previews=frozenset({"a", "b"}))
    skip = only_skip(route("pull_request", pr("opened"), [view]))
    assert "limit 2" in skip.reason
    assert "slipway preview archive" in skip.reason


def test_preview_limit_reached_still_deploys_an_active_branch() -> None:
    view = project(preview_limit=2, active_previews=frozenset({"feature/x", "b"}))
    assert route("pull_request", pr("synchronize"), [view]).intents == [preview()]


def test_pull_request_for_project_not_deploying_is_skipped() -> None:
    reason = "the GitHub App can no longer reach octo-org/demo"
    view = project(deploying=False, not_deploying_reason=reason)
    skip = only_skip(route("pull_request", pr("opened"), [view]))
    assert reason in skip.reason


@pytest.mark.parametrize("action", ["labeled", "assigned", "converted_to_draft", "locked"])
def test_other_pull_request_actions_do_nothing(action: str) -> None:
    payload = payloads.example("pull_request", action)
    routed = route("pull_request", payload, [project(repo=payload["repository"]["full_name"])])
    assert routed.intents == []
    assert routed.outcome == f"ignored: pull_request.{action}"


def test_pull_request_without_projects_is_ignored() -> None:
    routed = route("pull_request", pr("opened"), [])
    assert routed.intents == []
    assert "no project is connected" in routed.outcome


# --- installation -------------------------------------------------------------------------


REPOS = ["octo-org/demo", "octo-org/api"]


def access_change(routed: Routed) -> AccessChange:
    assert len(routed.intents) == 1, routed
    change = routed.intents[0]
    assert isinstance(change, AccessChange)
    return change


@pytest.mark.parametrize(
    ("action", "added", "removed"),
    [
        ("created", REPOS, []),
        ("new_permissions_accepted", REPOS, []),
        ("deleted", [], REPOS),
        # GitHub lists no repositories here: the installation itself is (un)suspended.
        ("unsuspend", [], []),
        ("suspend", [], []),
    ],
)
def test_installation_changes_access(action: str, added: list[str], removed: list[str]) -> None:
    repos = [] if action in ("suspend", "unsuspend") else REPOS
    payload = payloads.installation(action=action, repos=repos)
    change = access_change(route("installation", payload, [])).change
    assert (change.event, change.action) == ("installation", action)
    assert change.installation_id == payloads.DEFAULT_INSTALLATION_ID
    assert change.account == "octo-org"
    assert [r.full_name for r in change.added] == added
    assert [r.full_name for r in change.removed] == removed
    assert [r.id for r in change.added + change.removed] == [
        payloads.repository_id(name) for name in added + removed
    ]


@pytest.mark.parametrize(
    ("action", "added", "removed"),
    [
        ("added", ["octo-org/demo", "octo-org/api"], []),
        ("removed", [], ["octo-org/demo"]),
    ],
)
def test_installation_repositories_changes_access(
    action: str, added: list[str], removed: list[str]
) -> None:
    payload = payloads.installation_repositories(action=action, added=added, removed=removed)
    routed = route("installation_repositories", payload, [])
    change = access_change(routed).change
    assert (change.event, change.action) == ("installation_repositories", action)
    assert change.installation_id == payloads.DEFAULT_INSTALLATION_ID
    assert [r.full_name for r in change.added] == added
    assert [r.full_name for r in change.removed] == removed
    assert f"+{len(added)} -{len(removed)}" in routed.outcome


# --- ping, unknown events, malformed payloads ---------------------------------------------


def test_ping_is_acknowledged() -> None:
    routed = route("ping", payloads.ping(), [project()])
    assert routed.intents == []
    assert "acknowledged" in routed.outcome


# --- delete, deployment_status, check_run -------------------------------------------------


def test_deleting_a_branch_archives_its_open_preview() -> None:
    views = [project(active_previews=frozenset({"feature/x"})), project(id=2, ref="other")]
    routed = route("delete", payloads.delete(ref="feature/x"), views)
    assert routed.intents == [Archive(1, "feature/x", "branch feature/x was deleted")]
    assert "1 preview(s) archived" in routed.outcome


def test_deleting_a_branch_without_a_preview_or_a_tag_archives_nothing() -> None:
    views = [project(active_previews=frozenset({"feature/x"}))]
    assert route("delete", payloads.delete(ref="feature/y"), views).intents == []
    tag = route("delete", payloads.delete(ref="feature/x", ref_type="tag"), views)
    assert tag.intents == [] and tag.outcome == "ignored: tag feature/x deleted"
    none = route("delete", payloads.delete(ref="feature/x"), [])
    assert none.intents == [] and "no project is connected" in none.outcome


def only_signal(routed: Routed) -> RecordSignal:
    assert len(routed.intents) == 1, routed
    intent = routed.intents[0]
    assert isinstance(intent, RecordSignal)
    return intent


def test_a_deployment_status_is_recorded_with_what_a_gate_needs() -> None:
    payload = payloads.deployment_status(sha=SHA_B, environment="vercel", state="failure")
    signal = only_signal(route("deployment_status", payload, [project()])).signal
    assert (signal.kind, signal.repo, signal.sha) == ("deployment_status", REPO, SHA_B)
    assert (signal.name, signal.state) == ("vercel", "failure")
    assert signal.github_id == payload["deployment_status"]["id"]
    assert signal.deployment_id == payload["deployment"]["id"]
    assert signal.url == payload["deployment_status"]["log_url"]


@pytest.mark.parametrize(("action", "state"), [("completed", "success"), ("created", "queued")])
def test_a_check_run_is_recorded_with_its_conclusion_or_status(action: str, state: str) -> None:
    payload = payloads.check_run(action=action, sha=SHA_B, name="tests")
    signal = only_signal(route("check_run", payload, [project()])).signal
    assert (signal.kind, signal.sha, signal.name, signal.state) == (
        "check_run",
        SHA_B,
        "tests",
        state,
    )
    assert signal.github_id == payload["check_run"]["id"]
    assert signal.url == payload["check_run"]["details_url"]


def test_signals_without_a_project_or_a_result_are_ignored() -> None:
    none = route("check_run", payloads.check_run(sha=SHA_B), [])
    assert none.intents == [] and "no project is connected" in none.outcome
    again = payloads.example("check_run", "rerequested")
    routed = route("check_run", again, [project(repo=again["repository"]["full_name"])])
    assert routed.intents == [] and routed.outcome == "ignored: check_run.rerequested"


def test_a_deployment_status_without_a_sha_is_a_payload_error() -> None:
    payload = payloads.deployment_status(sha=SHA_B)
    payload["deployment"]["sha"] = "not-a-sha"
    with pytest.raises(PayloadError):
        route("deployment_status", payload, [project()])


@pytest.mark.parametrize("event", ["create"])
def test_unknown_event_is_ignored(event: str) -> None:
    payload = payloads.example(event)
    routed = route(event, payload, [project(repo=payload["repository"]["full_name"])])
    assert routed.intents == []
    assert routed.outcome.startswith("ignored") and event in routed.outcome


def test_push_without_ref_is_a_payload_error() -> None:
    payload = push_to("main")
    del payload["ref"]
    with pytest.raises(PayloadError, match="ref"):
        Push.parse(payload)
    with pytest.raises(PayloadError):
        route("push", payload, [project()])


def test_pull_request_without_pull_request_is_a_payload_error() -> None:
    payload = pr("opened")
    del payload["pull_request"]
    with pytest.raises(PayloadError, match="pull_request"):
        PullRequest.parse(payload)
    with pytest.raises(PayloadError):
        route("pull_request", payload, [project()])


def test_installation_without_installation_id_is_a_payload_error() -> None:
    payload = payloads.installation(action="created", repos=REPOS)
    del payload["installation"]
    with pytest.raises(PayloadError):
        route("installation", payload, [])


# --- every real example -------------------------------------------------------------------


def _all_examples() -> list[Any]:
    if not payloads.node_modules_available():
        return []
    found = []
    for event in ("push", "pull_request", "delete", "deployment_status", "check_run"):
        for index, payload in enumerate(payloads.examples(event)):
            label = f"{event}-{index}-{payload.get('action') or payload.get('ref')}"
            found.append(pytest.param(event, payload, id=label))
    return found


@pytest.mark.parametrize(("event", "payload"), _all_examples())
def test_every_real_example_routes(event: str, payload: dict[str, Any]) -> None:
    repo = payload["repository"]["full_name"]
    variants = [
        project(repo=repo),
        project(repo=repo, staging_branch="staging", fork_previews=True),
        project(repo=repo, previews=False, deploying=False, not_deploying_reason="off"),
    ]
    for view in variants:
        routed = route(event, payload, [view])
        assert isinstance(routed, Routed)
        assert routed.outcome
        for intent in routed.intents:
            if isinstance(intent, RecordSignal):
                assert intent.signal.repo == repo
                continue
            assert isinstance(intent, Deploy | Archive | Skip)
            assert dataclasses.asdict(intent)["project_id"] == view.id


def test_the_example_index_has_what_the_table_needs() -> None:
    """If a new examples release drops these, the loop above would silently cover less."""
    assert len(payloads.examples("push")) >= 7
    actions = {p["action"] for p in payloads.examples("pull_request")}
    assert {"opened", "reopened", "synchronize", "ready_for_review", "closed"} <= actions
