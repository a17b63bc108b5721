"""Issue 11: a key reads exactly the runs of its own environment (real server, real deploys).

The preview-wide key reads its preview branches' runs, never production's; any key used
for another environment of its project answers 403.
"""

from __future__ import annotations

from conftest import Flow

CARD = {"card": "4111-secret"}


def test_keys_read_only_their_own_environments_runs(flow: Flow) -> None:
    server = flow.server
    flow.deploy_push()
    flow.deploy_preview("feature/x")
    production_key = server.secret_key("demo", "production")
    preview_key = server.secret_key("demo", "preview")
    branch_key = server.secret_key("demo", "preview", "feature/x")

    production_run = server.trigger("demo", "production", "hello", CARD)
    assert production_run.status_code == 200, production_run.text
    run_id = production_run.json()["id"]
    preview_run = server.trigger("demo", "preview", "hello", {"n": 1}, branch="feature/x")
    assert preview_run.status_code == 200, preview_run.text
    preview_id = preview_run.json()["id"]

    def read(key: str, rid: str) -> tuple[int, str]:
        response = server.client.get(
            f"/api/v1/runs/{rid}", headers={"Authorization": f"Bearer {key}"}
        )
        return response.status_code, response.text

    status, text = read(preview_key, run_id)
    assert status == 403, text[:300]
    assert "4111-secret" not in text
    assert read(branch_key, run_id)[0] == 403
    assert read(production_key, run_id)[0] == 200
    assert read(server.token, run_id)[0] == 200

    assert read(preview_key, preview_id)[0] == 200
    assert read(branch_key, preview_id)[0] == 200
    assert read(production_key, preview_id)[0] == 403
    assert read("sk_unknown", run_id)[0] == 401

    crossed = server.client.post(
        "/api/v1/tasks/hello/trigger",
        json={"payload": {}},
        headers={"Authorization": f"Bearer {production_key}", "x-slipway-branch": "feature/x"},
    )
    assert crossed.status_code == 403, crossed.text
