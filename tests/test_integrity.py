"""Data integrity: which versions may still answer whom (rolled back, trained on erased data)."""

from __future__ import annotations

import pytest

from assistant.chat import ChatService
from assistant.compare import CompareService
from assistant.errors import Conflict
from assistant.routing import choose_version, may_answer
from assistant.store import Database, versions
from tests.conftest import add_adapter_version, user
from training import registry

HELLO = [{"role": "user", "content": "Hello"}]


def test_rolled_back_and_flagged_versions_answer_admins_only(settings, tiny_engine, tiny_model_dir, tmp_path):
    database = Database(settings.db)
    admin, staff, reviewer = (
        user(database, "boss", "admin"),
        user(database, "sam", "staff"),
        user(database, "rita", "reviewer"),
    )
    add_adapter_version(database, tiny_model_dir, tmp_path / "rb", "h19-rolled")
    registry.promote(database, "h19-rolled", "boss", "try it", override=True)
    registry.rollback(database, "boss", "worse")
    add_adapter_version(database, tiny_model_dir, tmp_path / "fl", "h19-flagged")
    with database.write() as db:
        db["versions"].update("h19-flagged", {"flagged": "trained on data erased by erasure 1"})
        # an A/B test that began before the erasure flagged its candidate
        db["ab_settings"].insert({"candidate": "h19-flagged", "split": 1.0, "set_by": "boss", "set_at": "2024-01-01"})
    chat = ChatService(database, tiny_engine, settings)
    compare = CompareService(database, chat)

    for who in (staff, reviewer):
        for model, why in (("h19-rolled", "was rolled back"), ("h19-flagged", "erased"), ("candidate", "erased")):
            with pytest.raises(Conflict, match=why):
                chat.start(who, HELLO, model=model, max_tokens=2)
    with pytest.raises(Conflict, match="rolled back"):
        compare.create(reviewer, "Hello", ["h19-rolled", "base"], max_tokens=2)
    with pytest.raises(Conflict, match="erased"):
        compare.create(reviewer, "Hello", None, max_tokens=2)  # the default pair: current and the candidate
    assert database.one("select count(*) as n from messages")["n"] == 0  # refused before anything is stored

    # the flagged candidate gets no A/B traffic; the current version keeps answering everyone
    assert choose_version(database, "current", None, draw=lambda: 0.0).version["id"] == "base"
    assert choose_version(database, "current", {"version": "h19-flagged"}).version["id"] == "base"
    turn = chat.start(staff, HELLO, max_tokens=2)
    turn.generation.wait()
    assert turn.version == "base"

    # admins may still ask them by id, to inspect them
    for model in ("h19-rolled", "h19-flagged"):
        turn = chat.start(admin, HELLO, model=model, max_tokens=2)
        turn.generation.wait()
        assert turn.version == model
    assert compare.create(admin, "Hello", ["h19-rolled", "h19-flagged"], max_tokens=2)["id"]

    # what the Compare tab offers each role
    rows = versions.list_all(database)
    assert [r["id"] for r in rows if may_answer(r)] == ["base"]
    assert [r["id"] for r in rows if may_answer(r, may_inspect=True)] == ["base", "h19-rolled", "h19-flagged"]
