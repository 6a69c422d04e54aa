"""The load benchmark's pure parts: markers, the endless write plan, reading a stream, checking a turn."""

from __future__ import annotations

import itertools
import json

from bench.load import SSEReader, endless_plan, question, turn_problems, user_tags


def test_user_tags_are_distinct_and_no_tag_holds_another():
    tags = user_tags(64)
    assert len(set(tags)) == 64 and all(len(t) == 5 and t.isalpha() and t.isupper() for t in tags)
    assert not any(a in b for a, b in itertools.permutations(tags, 2))
    assert user_tags(16) == tags[:16]  # the same seed gives the same users' tags
    assert "ABCDE-7" in question("ABCDE", 7)


def test_endless_plan_never_repeats_the_writers_latest_on_an_answer_even_across_cycles():
    for pool in ([5], [7, 8, 9]):
        latest: dict[int, tuple] = {}
        for message_id, thumb, rating in itertools.islice(endless_plan(pool), 200):
            assert message_id in pool and 1 <= rating <= 5
            assert latest.get(message_id) != (thumb, rating)
            latest[message_id] = (thumb, rating)


def chunk(content: str | None = None, **extra) -> str:
    delta = {} if content is None else {"content": content}
    event = {"conversation_id": 3, "message_id": 9, "choices": [{"index": 0, "delta": delta}], **extra}
    return "data: " + json.dumps(event)


def test_sse_reader_collects_text_ids_usage_and_the_end():
    reader = SSEReader()
    usage = {"conversation_id": 3, "message_id": 9, "choices": [], "usage": {"completion_tokens": 2}}
    lines = [chunk(""), "", chunk("Hel"), chunk("lo"), chunk(), "data: " + json.dumps(usage), "data: [DONE]"]
    brought_text = [reader.feed(line) for line in lines]
    assert brought_text == [False, False, True, True, False, False, False]
    assert (reader.text, reader.ids, reader.usage, reader.done, reader.error) == (
        "Hello",
        {(3, 9)},
        {"completion_tokens": 2},
        True,
        None,
    )

    broken = SSEReader()
    broken.feed(chunk("Hi"))
    broken.feed('data: {"error": {"message": "Generation failed: boom", "type": "server_error"}}')
    assert broken.error == "Generation failed: boom" and not broken.done


def conversation(user_id=1, asked="My code is ABCDE-1.", answer="ABCDE-1, the sea is salty.") -> dict:
    return {
        "id": 3,
        "user_id": user_id,
        "messages": [
            {"id": 8, "role": "user", "content": asked},
            {"id": 9, "role": "assistant", "content": answer},
        ],
    }


def test_turn_problems_passes_an_own_turn_and_names_each_kind_of_mix():
    mine = {"user_id": 1, "asked": "My code is ABCDE-1.", "answer": "ABCDE-1, the sea is salty.", "message_id": 9}
    foreign = ["QWERT", "ZXCVB"]
    assert turn_problems(conversation(), **mine, foreign_tags=foreign) == []
    assert turn_problems(conversation(user_id=2), **mine, foreign_tags=foreign) == ["conversation of another user"]
    assert turn_problems(conversation(answer="Other text."), **mine, foreign_tags=foreign) == [
        "stored answer differs from the streamed one"
    ]
    assert turn_problems(conversation(asked="My code is QWERT-1."), **mine, foreign_tags=foreign) == [
        "stored question differs from the one sent",
        "another user's marker in the conversation",
    ]
    assert turn_problems(conversation(), **{**mine, "message_id": 10}, foreign_tags=foreign) == [
        "answer not in the conversation"
    ]
