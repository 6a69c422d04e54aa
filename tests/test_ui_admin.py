"""The Admin tab's retraining, versions and erasure handlers through gradio_client, as the browser calls them."""

from __future__ import annotations

import json
import time

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests.conftest import ThreadServer, free_port, tiny_settings, ui_client
from training import jobs


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, tiny_engine):
    """A server of its own: these tests train and promote, which would change what other modules' tests see."""
    from app import create_app

    settings = tiny_settings(tmp_path_factory.mktemp("ui-admin"), tiny_model_dir)
    with ThreadServer(create_app(settings, engine=tiny_engine), free_port()) as running:
        yield running


def wait_for_run(database, job_id: int) -> dict:
    deadline = time.monotonic() + 120
    while (job := jobs.get(database, job_id))["status"] in jobs.ACTIVE:
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    return job


def test_admin_retrains_with_yaml_promotes_and_erases_in_the_ui(server, tmp_path):
    server.add_user("ui-boss", "admin")
    staff = server.add_user("ui-clerk", "staff")
    admin = ui_client(server.url, "ui-boss", "ui-boss-password")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) for i in range(6)))
    admin.predict(handle_file(str(qa)), api_name="/import_qa")

    for bad, message in [("max_steps: [1", "not valid YAML"), ("- 1", "mapping"), ("lora_rank: 4", "lora_rank")]:
        with pytest.raises(AppError, match=message):
            admin.predict(bad, api_name="/retrain")
    assert server.hone.database.query("select id from jobs") == []  # refusals start nothing

    status, schedule, _, versions, _ = admin.predict(
        "max_steps: 2\nbatch_size: 4\neval_max_new_tokens: 4", api_name="/retrain"
    )
    assert "<b>Run 1: queued</b>" in status and schedule.startswith("Schedule: off")
    job = wait_for_run(server.hone.database, 1)
    assert job["status"] == "succeeded" and job["config"]["max_steps"] == 2, job["error"]

    status, _, _, versions, gate_text = admin.predict(api_name="/admin_overview")[3:8]
    assert "<b>Run 1: succeeded</b>" in status and "registered <b>v1</b>" in status
    assert [row[:3] for row in versions["data"]] == [["base", "current", None], ["v1", "candidate", "base"]]
    verdict = json.loads(server.hone.database.one("select gate from versions where id = 'v1'")["gate"])
    assert versions["data"][1][8] == ("passed" if verdict["passed"] else "failed")
    assert gate_text.startswith("Gate ") and "retention (general cosine)" in gate_text

    with pytest.raises(AppError, match="reason"):
        admin.predict("v1", "", False, api_name="/promote")
    if not verdict["passed"]:  # a random tiny model rarely passes: promoting needs the audited override
        with pytest.raises(AppError, match="promotion gate"):
            admin.predict("v1", "looks good", False, api_name="/promote")
    note, *_ = admin.predict("v1", "looks good", True, api_name="/promote")
    assert "**v1** is now current" in note
    assert admin.predict("v1", api_name="/deploy_version") == (
        "**v1** is deployed on the transformers engine, served as `v1`."
    )
    assert "v1" in server.hone.engine.adapters
    with pytest.raises(AppError, match="No version 'v404'"):
        admin.predict("v404", api_name="/deploy_version")
    deploys = server.hone.database.query("select actor, target from audit_log where action = 'version.deploy'")
    assert deploys == [{"actor": "ui-boss", "target": "v1"}]

    # staff chats on v1; erasing the staff member's data flags v1 only if it trained on it (it did not)
    clerk = ui_client(server.url, "ui-clerk", "ui-clerk-password")
    clerk.predict("Hello?", 0.0, 16, api_name="/chat")
    with pytest.raises(AppError, match="why"):
        admin.predict("ui-clerk", " ", api_name="/erase_user")
    note, *_ = admin.predict("ui-clerk", "left the company", api_name="/erase_user")
    assert "1 conversations" in note and "Versions flagged: none" in note
    assert server.hone.database.query("select id from conversations where user_id = ?", [staff["id"]]) == []
