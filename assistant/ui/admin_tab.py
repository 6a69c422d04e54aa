"""The Admin tab: a dashboard of plots, training data and exports, Q&A import, retraining and versions,
reviewer agreement and adjudication, users (and erasure), backups, webhooks, audit."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from assistant import auth, backup
from assistant.erasure import erase_user
from assistant.errors import HoneError
from assistant.importer import import_qa
from assistant.services import Hone
from assistant.store import audit, users, versions
from assistant.ui.ab_section import build_ab_accordion
from assistant.ui.common import discard_upload, guard, ui_error
from assistant.ui.dashboard_section import build_dashboard_accordion
from assistant.ui.ledger_section import build_ledger_accordion
from assistant.ui.render import counts_line, review_item, run_status
from assistant.ui.review_tab import VERDICT_LABELS
from assistant.ui.webhooks_section import build_webhooks_accordion
from training import examples, jobs, registry, runners, schedule
from training.config import defaults_table, parse_yaml
from training.export import FORMATS, export_datasets, export_version
from training.gate import explain

EXPORT_LINKS = " · ".join(f'<a href="/v1/export/{k}" download="{k}.jsonl">{k}.jsonl</a>' for k in examples.KINDS)


VERSION_COLUMNS = ["id", "status", "parent", "created_by", "created_at", "snapshot", "sft", "dpo", "gate", "flagged"]


def build_admin_tab(hone: Hone) -> gr.Tab:
    with gr.Tab("Admin", id="admin", visible=False) as tab:
        dashboard_refresh, dashboard_outputs = build_dashboard_accordion(hone)
        with gr.Accordion("Training data", open=True):
            counts = gr.Markdown(elem_id="admin-counts")
            gr.HTML(f"Download (TRL formats): {EXPORT_LINKS}")
            with gr.Row():
                qa_file = gr.File(label="Import Q&A pairs (JSONL of {question, answer})", file_types=[".jsonl"])
                import_button = gr.Button("Import as approved answers", elem_id="admin-import")
            import_report = gr.JSON(label="Import report", elem_id="admin-import-report")
        with gr.Accordion("Retraining and versions", open=True):
            with gr.Row():
                retrain = gr.Button("Retrain now", variant="primary", elem_id="admin-retrain")
                cancel_run = gr.Button("Cancel run", elem_id="admin-cancel")
            runner_choices = runners.choices(hone.settings)
            runner_pick = gr.Radio(
                [(label, name) for name, label in runner_choices.items()],
                value=hone.settings.training_runner,
                label="Train on",
                visible=len(runner_choices) > 1,  # only this machine: nothing to choose
                elem_id="admin-runner",
            )
            overrides = gr.Code(
                label="Training config for this run (YAML, `key: value` per line; empty: the defaults)",
                language="yaml",
                lines=3,
                elem_id="admin-config",
            )
            with gr.Accordion("Settings and their defaults", open=False):
                gr.Markdown(defaults_table())
            status_view = gr.HTML(elem_id="admin-run-status")
            schedule_status = gr.Markdown(elem_id="admin-schedule")
            loss_plot = gr.LinePlot(x="step", y="loss", color="phase", label="Training loss", elem_id="admin-loss")
            versions_table = gr.Dataframe(
                headers=[
                    "id",
                    "status",
                    "parent",
                    "created_by",
                    "created_at",
                    "snapshot",
                    "sft",
                    "dpo",
                    "gate",
                    "flagged",
                ],
                label="Versions (lineage)",
            )
            gate_view = gr.Markdown(elem_id="admin-gate")
            with gr.Row():
                version_pick = gr.Textbox(label="Version", elem_id="admin-version")
                reason = gr.Textbox(label="Reason (audited)", elem_id="admin-reason")
            with gr.Row():
                override = gr.Checkbox(label="Override the gate (audited with the reason)", elem_id="admin-override")
                promote = gr.Button("Promote")
                rollback = gr.Button("Roll back current")
                deploy = gr.Button("Deploy to serving", elem_id="admin-deploy")
            version_status = gr.Markdown()
            with gr.Accordion("Export", open=False):
                with gr.Row():
                    export_format = gr.Radio(list(FORMATS), value="adapter", label="Format")
                    export_button = gr.Button("Export this version", elem_id="admin-export")
                    export_data_button = gr.Button("Export the training data", elem_id="admin-export-data")
                export_file = gr.File(label="Download (zip)", elem_id="admin-export-file")
            poll = gr.Timer(2.0, active=False)  # started when an admin opens this tab
        ab_refresh, ab_inputs, ab_outputs, ab_candidates = build_ab_accordion(hone)
        with gr.Accordion("Reviewer agreement and adjudication", open=False):
            refresh_agreement = gr.Button("Refresh")
            reviewer_table = gr.Dataframe(headers=["reviewer", "compared", "agreement"], label="Per reviewer")
            pair_table = gr.Dataframe(headers=["reviewers", "items", "cohen_kappa"], label="Per pair")
            dispute = gr.Dropdown(label="Disputed answers", choices=[], elem_id="admin-disputes")
            dispute_view = gr.Markdown()
            adj_correction = gr.State(None)  # the correction id shown: a decision is about that text only
            with gr.Row():
                adj_verdict = gr.Radio(VERDICT_LABELS, label="Final verdict")
                adj_decision = gr.Radio(["approve", "reject"], label="Staff correction")
            adj_ideal = gr.Textbox(label="Final ideal answer", lines=3)
            adjudicate = gr.Button("Adjudicate", variant="primary")
            adj_status = gr.Markdown()
        with gr.Accordion("Users", open=False):
            user_table = gr.Dataframe(headers=["name", "role", "disabled", "created_at"], label="Users")
            with gr.Row():
                user_name = gr.Textbox(label="Name")
                user_role = gr.Radio(list(auth.ROLE_RANK), label="Role", value="staff")
            with gr.Row():
                add_user = gr.Button("Add user")
                change_role = gr.Button("Set role")
                disable_user = gr.Button("Disable")
                enable_user = gr.Button("Enable")
            with gr.Row():
                erase_reason = gr.Textbox(label="Why erase (recorded)", elem_id="admin-erase-reason")
                erase_user_data = gr.Button("Erase this user's data", variant="stop", elem_id="admin-erase")
            user_status = gr.Markdown()
        with gr.Accordion("Backups", open=False):
            backup_now = gr.Button("Back up now", elem_id="admin-backup")
            backup_status = gr.Markdown(elem_id="admin-backup-status")
            backup_table = gr.Dataframe(headers=["name", "created_at", "actor", "db_bytes"], label="Backups")
        build_ledger_accordion(hone)
        build_webhooks_accordion(hone)
        with gr.Accordion("Audit log", open=False):
            audit_table = gr.Dataframe(headers=["at", "actor", "action", "target", "details"], label="Latest 200")

    def overview(request: gr.Request):
        guard(hone, request, "admin")
        view = training_view()
        return counts_line(examples.counts(hone.database)), _users(), _audit(), *view, gr.Timer(active=True)

    def do_import(path: str | None, request: gr.Request):
        admin = guard(hone, request, "admin")
        if not path:
            raise gr.Error("Choose a JSONL file first.")
        try:
            with open(path, encoding="utf-8") as lines:
                report = import_qa(hone.database, admin, lines, Path(path).name, hone.settings.max_message_chars)
        except UnicodeDecodeError as exc:
            raise gr.Error("The file is not UTF-8 text.") from exc
        finally:
            discard_upload(path)  # what it held is in the database now (or was refused): no copy left in the cache
        return report, counts_line(examples.counts(hone.database))

    def export_zip(request: gr.Request, write) -> str:
        """Run an export into a temp folder and zip it for download (the data home is never served)."""
        admin = guard(hone, request, "admin")
        folder = Path(tempfile.mkdtemp(prefix="hone-export-"))
        try:
            made = write(admin.name, folder / "export")
        except HoneError as exc:
            raise ui_error(exc) from exc
        name = Path(made["path"]).parent / (made.get("version", "training-data") + "-" + made.get("format", "data"))
        return shutil.make_archive(str(name), "zip", made["path"])

    def do_export(version_id: str, fmt: str, request: gr.Request) -> str:
        vid = (version_id or "").strip()
        if not vid:
            raise gr.Error("Type the version to export.")
        settings = hone.settings
        return export_zip(request, lambda actor, out: export_version(hone.database, settings, vid, fmt, out, actor))

    def do_export_data(request: gr.Request) -> str:
        return export_zip(request, lambda actor, out: export_datasets(hone.database, hone.settings, out, actor))

    def make_backup(request: gr.Request):
        admin = guard(hone, request, "admin")
        try:
            made = backup.create_backup(hone.database, hone.settings, admin.name, "on demand (Admin tab)")
        except HoneError as exc:
            raise ui_error(exc) from exc
        return f"Backup **{made['name']}** written to `{made['path']}`.", _backups(), _audit()

    def _backups() -> pd.DataFrame:
        rows = [[b["name"], b["created_at"], b["actor"], b["db_bytes"]] for b in backup.list_backups(hone.settings)]
        return pd.DataFrame(rows, columns=["name", "created_at", "actor", "db_bytes"])

    def agreement(request: gr.Request):
        guard(hone, request, "admin")
        result = hone.review.agreement()
        reviewers = [[r["reviewer"], r["compared"], r["agreement"]] for r in result["reviewers"]]
        pairs = [[" & ".join(p["reviewers"]), p["items"], p["cohen_kappa"]] for p in result["pairs"]]
        choices = [
            (f"#{d['message_id']}: " + ", ".join(f"{k} → {v}" for k, v in d["verdicts"].items()), d["message_id"])
            for d in result["disputes"]
        ]
        return reviewers, pairs, gr.update(choices=choices, value=None)

    def show_dispute(message_id, request: gr.Request):
        admin = guard(hone, request, "admin")
        if message_id is None:
            return "", None
        item = hone.review.item(admin, int(message_id))
        lines = [review_item(item), "**Reviews**"]
        for r in item["reviews"]:
            lines.append(
                f"- {r['reviewer']} ({r['kind']}): verdict {r['verdict']}, rating {r['rating']}, "
                f"correction {r['correction_decision']}, ideal: {json.dumps(r['ideal_answer'])}"
            )
        return "\n".join(lines), item["correction"]["id"] if item["correction"] else None

    def do_adjudicate(message_id, correction_id, verdict, decision, ideal, request: gr.Request):
        admin = guard(hone, request, "admin")
        if message_id is None:
            raise gr.Error("Choose a disputed answer first.")
        try:
            hone.review.adjudicate(
                admin,
                int(message_id),
                verdict=verdict or None,
                correction=decision or None,
                correction_id=correction_id if decision else None,
                ideal_answer=ideal if ideal and ideal.strip() else None,
            )
        except HoneError as exc:
            raise ui_error(exc) from exc
        return f"Adjudicated answer #{message_id}."

    def _users():
        return [[u["name"], u["role"], bool(u["disabled"]), u["created_at"]] for u in users.list_all(hone.database)]

    def _audit():
        return [[a["at"], a["actor"], a["action"], a["target"], a["details"]] for a in audit.recent(hone.database, 200)]

    def erase(name: str, why: str, request: gr.Request):
        admin = guard(hone, request, "admin")
        try:
            result = erase_user(hone.database, admin, (name or "").strip(), why)
        except HoneError as exc:
            raise ui_error(exc) from exc
        flagged = ", ".join(result["versions_flagged"]) or "none"
        deleted = ", ".join(f"{n} {table}" for table, n in result["deleted"].items()) or "nothing"
        note = f"Erased {name}'s data: {deleted}. Versions flagged: {flagged}."
        return note, _users(), _audit(), *training_view()

    def user_action(action: str):
        def run(name: str, role: str, request: gr.Request):
            admin = guard(hone, request, "admin")
            name = (name or "").strip()
            try:
                if action == "add":
                    created = auth.create_user(hone.database, name, role, actor=admin.name)
                    note = (
                        f"Created **{name}** ({role}). Password: `{created['password']}` · "
                        f"API key: `{created['api_key']}` (shown once)."
                    )
                elif action == "role":
                    auth.set_role(hone.database, name, role, actor=admin.name)
                    note = f"{name} is now {role}."
                else:
                    auth.set_disabled(hone.database, name, action == "disable", actor=admin.name)
                    note = f"{name} {action}d."
            except HoneError as exc:
                raise ui_error(exc) from exc
            return note, _users(), _audit()

        return run

    def training_view():
        jobs.reap(hone.database, hone.settings)
        recent = jobs.list_recent(hone.database, 1)
        job = recent[0] if recent else None
        plot = None
        if job is not None:
            plot = pd.DataFrame(jobs.losses(hone.database, job["id"]) or [], columns=["phase", "step", "loss", "at"])
        rows = []
        for v in versions.list_all(hone.database):
            c = json.loads(v["counts"] or "{}")
            rows.append(
                [
                    v["id"],
                    v["status"],
                    v["parent"],
                    v["created_by"],
                    v["created_at"],
                    (v["snapshot_hash"] or "")[:12],
                    c.get("sft_train"),
                    c.get("dpo_train"),
                    gate_word(v["gate"]),
                    v["flagged"] or "",
                ]
            )
        return run_status(job), schedule_line(), plot, rows, gate_lines()

    def gate_word(raw: str | None) -> str:
        if not raw:
            return ""
        verdict = json.loads(raw)
        return "passed" if verdict.get("passed") else ("error" if verdict.get("error") else "failed")

    def gate_lines() -> str:
        """The gate's reasons for every candidate still waiting for a decision."""
        out = []
        for v in versions.list_all(hone.database):
            if v["status"] == "candidate" and v["gate"]:
                verdict = json.loads(v["gate"])
                out.append(verdict["error"] if verdict.get("error") else explain(verdict))
        return "\n\n".join(out)

    def schedule_line() -> str:
        s = hone.settings
        if not (s.retrain_min_new_items or s.retrain_every_hours):
            return "Schedule: off (set `ASSISTANT_RETRAIN_MIN_NEW_ITEMS` or `ASSISTANT_RETRAIN_EVERY_HOURS`)."
        rules = []
        if s.retrain_min_new_items:
            rules.append(f"at {s.retrain_min_new_items} new approved answers")
        if s.retrain_every_hours:
            rules.append(f"every {s.retrain_every_hours:g} h when anything is new")
        return f"Schedule: retrain {' or '.join(rules)}. New now: {schedule.new_items(hone.database)}."

    def refresh_training(request: gr.Request):
        guard(hone, request, "admin")
        return training_view()

    def start_run(text: str, runner: str | None, request: gr.Request):
        admin = guard(hone, request, "admin")
        try:
            overrides = parse_yaml(text or "", "The training config")
            jobs.start(hone.database, hone.settings, admin.name, overrides, runner=runner)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return training_view()

    def cancel_latest(request: gr.Request):
        admin = guard(hone, request, "admin")
        recent = jobs.list_recent(hone.database, 1)
        if not recent:
            raise gr.Error("No training run to cancel.")
        try:
            jobs.cancel(hone.database, hone.settings, recent[0]["id"], admin.name)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return training_view()

    def version_action(action: str):
        def run(version_id: str, why: str, overriding: bool, request: gr.Request):
            admin = guard(hone, request, "admin")
            if not (why or "").strip():
                raise gr.Error("Give a reason: it goes to the audit log.")
            try:
                if action == "promote":
                    row = registry.promote(
                        hone.database, (version_id or "").strip(), admin.name, why.strip(), override=bool(overriding)
                    )
                else:
                    row = registry.rollback(hone.database, admin.name, why.strip())
            except HoneError as exc:
                raise ui_error(exc) from exc
            return f"**{row['id']}** is now current.", *training_view()

        return run

    def deploy_version(version_id: str, request: gr.Request) -> str:
        """Put the version on the serving engine now, so its first user does not wait (audited)."""
        admin = guard(hone, request, "admin")
        try:
            done = hone.chat.deploy((version_id or "").strip(), admin.name)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return f"**{done['version']}** is deployed on the {done['engine']} engine, served as `{done['served_as']}`."

    training_outputs = [status_view, schedule_status, loss_plot, versions_table, gate_view]
    retrain.click(start_run, [overrides, runner_pick], training_outputs, api_name="retrain")
    cancel_run.click(cancel_latest, None, training_outputs, api_name="cancel_training")
    poll.tick(refresh_training, None, training_outputs, api_name=False, show_progress="hidden").then(
        *ab_candidates, api_name=False, show_progress="hidden"
    )  # a run that ends, or a promotion elsewhere, shows up in the A/B candidate list without a reload
    promote.click(
        version_action("promote"),
        [version_pick, reason, override],
        [version_status, *training_outputs],
        api_name="promote",
    )
    rollback.click(
        version_action("rollback"),
        [version_pick, reason, override],
        [version_status, *training_outputs],
        api_name="rollback",
    )
    deploy.click(deploy_version, [version_pick], [version_status], api_name="deploy_version")

    overview_outputs = [counts, user_table, audit_table, *training_outputs, poll]
    tab.select(overview, None, overview_outputs, api_name="admin_overview")
    tab.select(ab_refresh, ab_inputs, ab_outputs, api_name="ab_overview")
    tab.select(dashboard_refresh, None, dashboard_outputs, api_name="admin_dashboard")
    import_button.click(do_import, [qa_file], [import_report, counts], api_name="import_qa")
    export_button.click(do_export, [version_pick, export_format], [export_file], api_name="export_version")
    export_data_button.click(do_export_data, None, [export_file], api_name="export_data")
    backup_now.click(make_backup, None, [backup_status, backup_table, audit_table], api_name="backup")
    refresh_agreement.click(agreement, None, [reviewer_table, pair_table, dispute], api_name="agreement")
    dispute.change(show_dispute, [dispute], [dispute_view, adj_correction], api_name=False)
    adjudicate.click(
        do_adjudicate,
        [dispute, adj_correction, adj_verdict, adj_decision, adj_ideal],
        [adj_status],
        api_name="adjudicate",
    )
    user_inputs, user_outputs = [user_name, user_role], [user_status, user_table, audit_table]
    add_user.click(user_action("add"), user_inputs, user_outputs, api_name="add_user")
    change_role.click(user_action("role"), user_inputs, user_outputs, api_name="set_role")
    disable_user.click(user_action("disable"), user_inputs, user_outputs, api_name="disable_user")
    enable_user.click(user_action("enable"), user_inputs, user_outputs, api_name="enable_user")
    erase_user_data.click(erase, [user_name, erase_reason], [*user_outputs, *training_outputs], api_name="erase_user")
    return tab
