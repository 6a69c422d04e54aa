"""Seed a fresh deployment for a demo: users for each role, the MedQuAD Q&A as approved answers, and a few
real chats with thumbs and corrections, so every tab has something to show.

Everything goes through the paths people use: `import_qa` (a reviewer's approved answer), the chat
service (the current model really answers) and the feedback service. Running it twice adds nothing twice:
users that exist are kept, imported pairs are deduplicated, and the chats are only made once.
"""

from __future__ import annotations

from pathlib import Path

from assistant import auth
from assistant.config import REPO_ROOT
from assistant.importer import import_qa
from assistant.services import Hone
from assistant.store import users
from assistant.store.conversations import TITLE_CHARS

MEDQUAD = REPO_ROOT / "data" / "medquad-train.jsonl"
DEMO_USERS = (("demo-staff", "staff"), ("demo-reviewer", "reviewer"), ("demo-admin", "admin"))

# Questions a clinic's staff might ask; the feedback on each shows one kind of judgement.
DEMO_CHATS = (
    ("What are the early signs of a stroke?", {"thumb": "up", "rating": 4}),
    (
        "How long should a patient fast before a routine blood test?",
        {
            "thumb": "down",
            "reasons": ["incomplete"],
            "correction": "Usually 8 to 12 hours with water only; check the lab's instructions for the specific test.",
        },
    ),
    ("What is the capital of France?", {"thumb": "up"}),
    ("Can I give ibuprofen to a child with chickenpox?", {"thumb": "down", "reasons": ["unsafe"], "rating": 1}),
)


def _user(hone: Hone, name: str, role: str) -> tuple[auth.User, str | None]:
    """The demo user, created with a printed password if missing (None: it existed already)."""
    row = users.by_name(hone.database, name)
    password = None
    if row is None:
        created = auth.create_user(hone.database, name, role, actor="seed-demo")
        row, password = users.by_id(hone.database, created["id"]), created["password"]
    return auth.User(id=row["id"], name=row["name"], role=row["role"]), password


def seed_demo(hone: Hone, qa_file: Path = MEDQUAD, max_tokens: int = 64) -> dict:
    accounts = {name: _user(hone, name, role) for name, role in DEMO_USERS}
    staff, admin = accounts["demo-staff"][0], accounts["demo-admin"][0]
    with open(qa_file, encoding="utf-8") as lines:
        imported = import_qa(hone.database, admin, lines, source=qa_file.name, max_chars=100_000)
    chats = 0
    already = {c["title"] for c in hone.database.query("select title from conversations where user_id = ?", [staff.id])}
    for question, judgement in DEMO_CHATS:
        if " ".join(question.split())[:TITLE_CHARS] in already:
            continue
        turn = hone.chat.start(staff, [{"role": "user", "content": question}], max_tokens=max_tokens)
        turn.generation.wait()
        hone.feedback.submit(staff, turn.message_id, **judgement)
        chats += 1
    return {
        "users": {name: {"role": user.role, "password": password} for name, (user, password) in accounts.items()},
        "imported": imported["imported"],
        "duplicates": imported["duplicates"],
        "chats": chats,
    }
