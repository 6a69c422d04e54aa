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
