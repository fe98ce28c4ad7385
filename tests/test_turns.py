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
