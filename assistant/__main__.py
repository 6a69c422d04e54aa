"""Hone's admin command line.

python -m assistant users add NAME --role staff|reviewer|admin [--json]
python -m assistant users list [--json]
python -m assistant users set-role NAME ROLE
python -m assistant users disable NAME
python -m assistant users enable NAME
python -m assistant users erase NAME --reason TEXT [--json]
python -m assistant users set-password NAME [--password PW] [--json]   # admin reset; ends their sessions
python -m assistant users rotate-key NAME [--days N] [--json]   # revoke their API keys, print a new one
python -m assistant seed-demo [--json]      demo users, the MedQuAD Q&A, a few judged chats
python -m assistant import-qa FILE.jsonl [--as ADMIN] [--json]   # Q&A pairs as approved reviewer answers
python -m assistant prepare-model        # convert the bundled model once (setup does this)
python -m assistant backup [--reason TEXT] [--json]   # consistent copy of the DB and version registry
python -m assistant backups [--json]     # list backups, newest first
python -m assistant restore PATH|NAME [--yes] [--json]   # server stopped: put a backup back
"""

from __future__ import annotations

import argparse
import json
import sys

from assistant import auth
from assistant.config import get_settings
from assistant.erasure import erase_user
from assistant.errors import HoneError, InvalidRequest
from assistant.importer import import_qa
from assistant.model_files import ModelFileError, resolve_base_model
from assistant.store import Database, users


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m assistant", description="Hone administration")
    commands = parser.add_subparsers(dest="command", required=True)

    users_parser = commands.add_parser("users", help="manage users")
    user_commands = users_parser.add_subparsers(dest="action", required=True)
    add = user_commands.add_parser("add", help="create a user; prints a password and an API key")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=list(auth.ROLE_RANK))
    add.add_argument("--password", help="set this password instead of generating one")
    add.add_argument("--json", action="store_true")
    listing = user_commands.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    set_role = user_commands.add_parser("set-role", help="change a user's role")
    set_role.add_argument("name")
    set_role.add_argument("role", choices=list(auth.ROLE_RANK))
    for action in ("disable", "enable"):
        p = user_commands.add_parser(action, help=f"{action} a user (disable also revokes their API keys)")
        p.add_argument("name")
    reset = user_commands.add_parser("set-password", help="reset a user's password (ends their browser sessions)")
    reset.add_argument("name")
    reset.add_argument("--password", help="set this password instead of generating one")
    reset.add_argument("--json", action="store_true")
    rotate = user_commands.add_parser("rotate-key", help="revoke a user's API keys at once and print a new one")
    rotate.add_argument("name")
    rotate.add_argument("--days", type=float, help="the new key expires after this many days; 0: never "
                        "(default: ASSISTANT_API_KEY_DAYS)")  # fmt: skip
    rotate.add_argument("--json", action="store_true")
    erase = user_commands.add_parser("erase", help="delete a user's chats and judgements")
    erase.add_argument("name")
    erase.add_argument("--reason", required=True, help="why (recorded with the erasure)")
    erase.add_argument("--as", dest="admin", help="the admin recorded as erasing (default: the first admin)")
    erase.add_argument("--json", action="store_true")

    qa = commands.add_parser("import-qa", help="import {question, answer} JSONL as approved reviewer answers")
    qa.add_argument("file")
    qa.add_argument("--as", dest="admin", help="the admin recorded as reviewer (default: the first admin)")
    qa.add_argument("--json", action="store_true", help="print the counts as one JSON object")

    demo = commands.add_parser("seed-demo", help="demo users, the bundled Q&A as approved answers, a few judged chats")
    demo.add_argument("--json", action="store_true", help="print what was created as one JSON object")

    commands.add_parser("prepare-model", help="resolve the base model (converts the bundled GGUF once)")

    backup = commands.add_parser("backup", help="back up the database and the version registry")
    backup.add_argument("--reason", default="on demand", help="recorded in the manifest and the audit log")
    backup.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    listing = commands.add_parser("backups", help="list complete backups, newest first")
    listing.add_argument("--json", action="store_true")
    restore = commands.add_parser("restore", help="restore a backup (stop the server first)")
    restore.add_argument("backup", help="a backup folder, or a backup's name under <home>/backups")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--json", action="store_true")
    return parser


def prepare_model(settings) -> str:
    """The base model folder, and the GGUF llama.cpp will serve when it can (so the first start is quick)."""
    from assistant.engine_choice import llama_gguf

    model_dir = resolve_base_model(settings)
    if settings.engine != "transformers":
        llama_gguf(settings, model_dir, print)  # where there is none, the server says why when it starts
    return model_dir


def run_users(args: argparse.Namespace, database: Database, settings) -> None:
    if args.action == "add":
        created = auth.create_user(
            database, args.name, args.role, password=args.password, key_days=settings.api_key_days
        )
        shown = {k: created[k] for k in ("name", "role", "password", "api_key")}
        if args.json:
            print(json.dumps(shown))
        else:
            print(f"created {shown['name']} ({shown['role']})")
            print(f"  password: {shown['password']}")
            print(f"  API key:  {shown['api_key']}")
            print("  (both are shown once)")
    elif args.action == "list":
        rows = users.list_all(database)
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                state = "disabled" if r["disabled"] else "active"
                print(f"{r['name']:<24} {r['role']:<9} {state:<9} {r['created_at']}")
    elif args.action == "set-role":
        auth.set_role(database, args.name, args.role)
        print(f"{args.name} is now {args.role}")
    elif args.action == "set-password":
        password = args.password or auth.new_password()
        auth.set_password(database, args.name, password)
        if args.json:
            print(json.dumps({"name": args.name, "password": password}))
        else:
            print(f"{args.name}'s new password: {password}  (shown once; their browser sessions have ended)")
    elif args.action == "rotate-key":
        days = settings.api_key_days if args.days is None else args.days
        rotated = auth.rotate_api_key(database, args.name, days)
        if args.json:
            print(json.dumps({k: rotated[k] for k in ("name", "api_key", "expires_at")}))
        else:
            print(f"{args.name}'s new API key: {rotated['api_key']}  (shown once)")
            print(f"  expires: {rotated['expires_at'] or 'never'}; {rotated['revoked']} old key(s) revoked")
    elif args.action == "erase":
        result = erase_user(database, auth.acting_admin(database, args.admin), args.name, args.reason)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"erased {args.name}: {result['deleted']}; versions flagged: {result['versions_flagged'] or 'none'}")
    else:
        auth.set_disabled(database, args.name, args.action == "disable")
        print(f"{args.name} {args.action}d")


def run_import(args: argparse.Namespace, database: Database, settings) -> None:
    max_chars = settings.max_message_chars
    created = auth.ensure_first_admin(database, settings.admin_password, settings.api_key_days)
    if created is not None:
        where = auth.write_initial_admin(settings.home, created, password_from_env=bool(settings.admin_password))
        print(f"created user 'admin'; its password and API key are in {where}", file=sys.stderr)
    admin = auth.acting_admin(database, args.admin)
    try:
        with open(args.file, encoding="utf-8") as lines:
            report = import_qa(database, admin, lines, source=args.file, max_chars=max_chars)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {args.file}: {exc}") from exc
    if args.json:
        print(json.dumps(report))
        return
    print(f"imported {report['imported']}, duplicates {report['duplicates']}, bad lines {len(report['errors'])}")
    for error in report["errors"]:
        print(f"  line {error['line']}: {error['error']}")


def run_seed(args: argparse.Namespace, settings) -> None:
    from assistant.demo import seed_demo
    from assistant.services import build

    hone = build(settings, announce=lambda text: print(text, file=sys.stderr))
    result = seed_demo(hone)
    if args.json:
        print(json.dumps(result))
        return
    print(f"imported {result['imported']} Q&A pairs ({result['duplicates']} already there); {result['chats']} chats")
    for name, account in result["users"].items():
        shown = account["password"] or "(existed already; password unchanged)"
        print(f"  {name:<14} {account['role']:<9} password: {shown}")


def run_backup(args: argparse.Namespace, settings) -> None:
    from assistant import backup

    if args.command == "backup":
        made = backup.create_backup(Database.for_settings(settings), settings, "cli", args.reason)
        if args.json:
            print(json.dumps(made))
        else:
            print(f"backup {made['name']}: {made['path']}")
            print(f"  {sum(made['counts'].values())} rows, versions: {', '.join(v['id'] for v in made['versions'])}")
            if made["pruned"]:
                print(f"  deleted older backups: {', '.join(made['pruned'])}")
    elif args.command == "backups":
        found = backup.list_backups(settings)
        if args.json:
            print(json.dumps(found))
        else:
            for b in found:
                print(f"{b['name']:<24} {b['actor'] or '':<10} {b['db_bytes'] or 0:>12} bytes  {b['path']}")
    else:
        where = backup.find_backup(settings, args.backup)
        if not args.yes:
            if not sys.stdin.isatty():
                raise InvalidRequest("restore replaces the database and the version registry; add --yes to confirm.")
            answer = input(f"Replace {settings.db} and {settings.versions_dir} with the backup {where}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise InvalidRequest("restore cancelled.")
        result = backup.restore_backup(settings, where)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"restored {result['restored']} into {result['db']} and {result['versions_dir']}")
            print(f"  previous database kept as {result['previous_db'] or '(there was none)'}")
            print(f"  previous registry kept as {result['previous_versions_dir'] or '(there was none)'}")
            for r in result["erasures_reapplied"]:  # erased after the backup was taken: erased again
                print(f"  erasure of {r['user']}'s data re-applied (erasure {r['erasure']})")


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    settings = get_settings()
    try:
        if args.command == "prepare-model":
            print(prepare_model(settings))
        elif args.command == "seed-demo":
            run_seed(args, settings)
        elif args.command in ("backup", "backups", "restore"):
            run_backup(args, settings)
        elif args.command == "import-qa":
            run_import(args, Database.for_settings(settings), settings)
        else:
            run_users(args, Database.for_settings(settings), settings)
    except (HoneError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
