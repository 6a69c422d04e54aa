"""`python -m assistant`: the user commands, their JSON output and their errors."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def cli(*args: str) -> subprocess.CompletedProcess:
    # the autouse fixture has pointed ASSISTANT_DB at a temp file through the environment
    return subprocess.run([sys.executable, "-m", "assistant", *args], cwd=REPO, capture_output=True, text=True)


def test_users_add_list_set_role_disable():
    created = cli("users", "add", "nina", "--role", "reviewer", "--json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert set(record) == {"name", "role", "password", "api_key"} and record["role"] == "reviewer"

    assert cli("users", "set-role", "nina", "admin").returncode == 0
    assert cli("users", "disable", "nina").returncode == 0
    (row,) = json.loads(cli("users", "list", "--json").stdout)
    assert (row["name"], row["role"], row["disabled"]) == ("nina", "admin", 1)


def test_bad_input_exits_non_zero_with_one_line():
    assert cli("users", "add", "omar", "--role", "staff").returncode == 0
    duplicate = cli("users", "add", "omar", "--role", "staff")
    assert duplicate.returncode == 2 and duplicate.stderr.strip() == "error: User 'omar' already exists."
    assert cli("users", "add", "pat", "--role", "boss").returncode == 2
    missing = cli("users", "disable", "ghost")
    assert missing.returncode == 2 and "No user named 'ghost'" in missing.stderr
    assert cli("users", "add", "bad name", "--role", "staff").returncode == 2


def test_import_qa_imports_the_shipped_medquad_file_once(tmp_path):
    data = REPO / "data" / "medquad-train.jsonl"
    first = cli("import-qa", str(data), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["imported"], report["duplicates"], report["errors"]) == (600, 0, [])
    again = json.loads(cli("import-qa", str(data), "--json").stdout)
    assert (again["imported"], again["duplicates"]) == (0, 600)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answer": "A."}\n{"question": 1}\n\nnope\n')
    report = json.loads(cli("import-qa", str(bad), "--json").stdout)
    assert report["imported"] == 1 and [e["line"] for e in report["errors"]] == [2, 4]
    missing = cli("import-qa", str(tmp_path / "absent.jsonl"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: cannot read")
    assert cli("import-qa", str(data), "--as", "nobody").returncode == 2
