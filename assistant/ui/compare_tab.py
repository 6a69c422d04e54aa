"""The Compare tab (reviewer+): blind side-by-side answers from two versions, a vote, then the names; and the
Bradley–Terry leaderboard. Handlers only call `hone.compare` (assistant/compare.py)."""

from __future__ import annotations

import html

import gradio as gr

from assistant.errors import HoneError
from assistant.routing import may_answer
from assistant.services import Hone
from assistant.store import versions
from assistant.ui.common import guard, ui_error
from assistant.ui.render import quote

SOURCE_CHOICES = [("typed below", "typed"), ("a real staff question", "staff"), ("the validation slice", "validation")]
VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}
LEADERBOARD_HEADERS = ["version", "score", "95% interval", "wins", "losses", "ties", "both bad"]
INTRO = (
    "### Blind side-by-side\n"
    "Two versions answer the same prompt as **A** and **B**, in random order. Vote, and only then see which "
    "version gave which answer. Every A or B vote becomes a preference pair for the next training run."
)


def leaderboard_rows(board: dict) -> list[list]:
    def interval(ci: list) -> str:
        return "" if ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"

    return [
        [r["version"], r["score"], interval(r["ci95"]), r["wins"], r["losses"], r["ties"], r["both_bad"]]
        for r in board["data"]
    ]


def revealed(result: dict) -> str:
    a, b = result["a"]["version"], result["b"]["version"]
    verdict = f"you preferred **{html.escape(result['winner'])}**" if result["winner"] else "no preference recorded"
    vote = VOTE_LABELS[result["vote"]]
    return f"**A** was `{html.escape(a)}` · **B** was `{html.escape(b)}` · your vote: {vote} ({verdict})."


def build_compare_tab(hone: Hone) -> gr.Tab:
    with gr.Tab("Compare", id="compare", visible=False) as tab:
        gr.Markdown(INTRO, elem_id="compare-intro")
        comparison_id = gr.State(None)
        with gr.Row():
            source = gr.Radio(SOURCE_CHOICES, value="typed", label="Prompt from", elem_id="compare-source")
            first = gr.Dropdown(label="Version 1 (empty: current)", choices=[], elem_id="compare-version-1")
            second = gr.Dropdown(label="Version 2 (empty: the candidate)", choices=[], elem_id="compare-version-2")
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="compare-prompt")
        ask = gr.Button("Ask both versions", variant="primary", elem_id="compare-ask")
        with gr.Row():
            with gr.Column():
                gr.Markdown("#### A")
                answer_a = gr.Markdown(elem_id="compare-a")
            with gr.Column():
                gr.Markdown("#### B")
                answer_b = gr.Markdown(elem_id="compare-b")
        with gr.Row():
            vote_buttons = {
                kind: gr.Button(label, interactive=False, elem_id=f"compare-vote-{kind.replace('_', '-')}")
                for kind, label in VOTE_LABELS.items()
            }
        result = gr.Markdown(elem_id="compare-result")
        with gr.Accordion("Leaderboard (Bradley–Terry, 95 % bootstrap intervals)", open=True):
            leaderboard = gr.Dataframe(headers=LEADERBOARD_HEADERS, label="Versions by blind votes")
            votes_line = gr.Markdown(elem_id="compare-votes")

    def board_view():
        board = hone.compare.leaderboard()
        line = f"Votes: {board['votes']} ({board['ranked_votes']} of them A, B or tie; both-bad votes rank nobody)."
        return leaderboard_rows(board), line

    def overview(request: gr.Request):
        user = guard(hone, request, "reviewer")
        admin = user.has_role("admin")
        names = [v["id"] for v in versions.list_all(hone.database) if may_answer(v, may_inspect=admin)]
        return gr.update(choices=names), gr.update(choices=names), *board_view()

    def ask_both(source_value, prompt_text, version_1, version_2, request: gr.Request):
        user = guard(hone, request, "reviewer")
        if bool(version_1) != bool(version_2):
            raise gr.Error("Choose both versions, or neither (current against the candidate).")
        typed = (source_value or "typed") == "typed"
        try:
            made = hone.compare.create(
                user,
                prompt=(prompt_text or None) if typed else None,
                versions_asked=[version_1, version_2] if version_1 else None,
                source=source_value or "typed",
            )
        except HoneError as exc:
            raise ui_error(exc) from exc
        enable = [gr.update(interactive=True) for _ in vote_buttons]
        note = f"Comparison #{made['id']}: which answer is better?"
        return made["id"], made["prompt"], quote(made["a"]), quote(made["b"]), note, *enable

    def vote(kind: str):
        def run(comparison, request: gr.Request):
            user = guard(hone, request, "reviewer")
            if comparison is None:
                raise gr.Error("Ask both versions first.")
            try:
                done = hone.compare.vote(user, int(comparison), kind)
            except HoneError as exc:
                raise ui_error(exc) from exc
            disable = [gr.update(interactive=False) for _ in vote_buttons]
            return revealed(done), *board_view(), *disable

        return run

    buttons = list(vote_buttons.values())
    tab.select(overview, None, [first, second, leaderboard, votes_line], api_name="compare_overview")
    ask.click(
        ask_both,
        [source, prompt, first, second],
        [comparison_id, prompt, answer_a, answer_b, result, *buttons],
        api_name="compare",
    )
    for kind, button in vote_buttons.items():
        button.click(vote(kind), [comparison_id], [result, leaderboard, votes_line, *buttons], api_name=f"vote_{kind}")
    return tab
