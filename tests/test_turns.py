"""The one line at the model: questions are answered in arrival order, whoever asks, and each is told its place."""

from __future__ import annotations

import threading

from kb_app.chat.turns import Turns


def test_a_free_model_admits_at_once_and_others_are_told_their_place() -> None:
    turns = Turns(slots=1)
    first, second, third = turns.join(), turns.join(), turns.join()
    assert list(turns.wait(first)) == []  # its turn: nothing to wait for
    assert next(turns.wait(second)) == 1
    assert next(turns.wait(third)) == 2
    turns.leave(first)
    waiting = turns.wait(second)
    assert list(waiting) == []  # admitted now
    assert next(turns.wait(third)) == 1


def test_questions_are_answered_in_arrival_order() -> None:
    turns = Turns(slots=1)
    holder = turns.join()
    assert list(turns.wait(holder)) == []
    order: list[int] = []
    tickets = [turns.join() for _ in range(5)]

    def ask(n: int) -> None:
        for _ in turns.wait(tickets[n], every_s=0.05):
            pass
        order.append(n)
        turns.leave(tickets[n])

    threads = [threading.Thread(target=ask, args=(n,)) for n in reversed(range(5))]  # started last-first
    for thread in threads:
        thread.start()
    turns.leave(holder)
    for thread in threads:
        thread.join(timeout=30)
    assert order == [0, 1, 2, 3, 4]


def test_a_question_given_up_while_waiting_frees_its_place() -> None:
    turns = Turns(slots=1)
    first, quitter, last = turns.join(), turns.join(), turns.join()
    assert list(turns.wait(first)) == []
    assert next(turns.wait(last)) == 2
    turns.leave(quitter)  # the client left before its turn
    assert next(turns.wait(last)) == 1
    turns.leave(first)
    assert list(turns.wait(last)) == []


def test_two_slots_admit_two() -> None:
    turns = Turns(slots=2)
    a, b, c = turns.join(), turns.join(), turns.join()
    assert list(turns.wait(a)) == [] and list(turns.wait(b)) == []
    assert next(turns.wait(c)) == 1


def test_a_page_user_waiting_for_the_model_is_told_their_place(tmp_path, monkeypatch) -> None:
    """Through the page's own queue routes: while another question holds the model, the chat says how many go first;
    once it is free, the answer comes (the real default model)."""
    import json
    import uuid

    from kb_app.assistant import Assistant
    from kb_app.settings import load_settings
    from tests.page_server import PageClient, serving

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    settings = load_settings(home=tmp_path / "kb_home", **{"ui.open_browser": False})
    assistant = Assistant(settings)
    document = tmp_path / "leave.md"
    document.write_text("# Leave\n\nEvery employee gets 15 days of paid annual leave.\n", encoding="utf-8")
    assistant.ingest([document])
    turns = assistant._parts.turns
    holder = turns.join()
    assert list(turns.wait(holder)) == []  # someone else's question holds the model
    fallback = threading.Timer(60, turns.leave, args=(holder,))  # never told: the test still ends, and fails
    fallback.start()
    with serving(settings, assistant) as url:
        page = PageClient(url)
        session = uuid.uuid4().hex
        body = {"data": ["How many days of annual leave?", [], settings.kb, None], "fn_index": page.events["ask"]}
        joined = page.http.post("/gradio_api/queue/join", json={**body, "session_hash": session, "trigger_id": None})
        assert joined.status_code == 200, joined.text
        told, result = False, None
        with page.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_generating" and "1 question(s) ahead of yours" in line:
                    told = True
                    turns.leave(holder)  # the other answer is done
                elif message.get("msg") == "process_completed":
                    result = message
                    break
    fallback.cancel()
    assert told, "the waiting page user was not told their place"
    assert result is not None and result["success"]
    assert "15" in json.dumps(result["output"]["data"], ensure_ascii=False)
