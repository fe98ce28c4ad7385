"""Questions take turns at the model in the order they arrived, whoever asks: the page, the API, a script.

One in-process model answers one question at a time. Without a shared line, whoever reaches the model's lock
first wins: ten scripts streaming from ``/v1`` would keep overtaking the page, whose own queue admits only
``ui.concurrency`` events. With it, every question waits its turn and can say how many are ahead of it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial


@dataclass(frozen=True)
class Waiting:
    """Yielded by ``Assistant.stream`` while a question waits: ``ahead`` questions go before it (answering or
    waiting). Repeated every few seconds while nothing changes, so a stream's connection stays alive."""

    ahead: int


class Ticket:
    __slots__ = ("admitted",)

    def __init__(self) -> None:
        self.admitted = False


class Turns:
    """A first-come, first-served line in front of ``slots`` answers at once (``llm.concurrent_answers``)."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._changed = threading.Condition()
        self._line: deque[Ticket] = deque()
        self._answering = 0

    def join(self) -> Ticket:
        with self._changed:
            ticket = Ticket()
            self._line.append(ticket)
            return ticket

    def wait(self, ticket: Ticket, every_s: float = 5.0) -> Iterator[int]:
        """Yield how many go first until it is ``ticket``'s turn, then return with the turn taken.

        Yields at once (unless the turn is free), on every change and every ``every_s`` seconds. The caller must
        :meth:`leave` afterwards, also when it stops waiting early (a closed connection).
        """
        last: int | None = None
        while True:
            with self._changed:
                if last is not None:
                    self._changed.wait_for(partial(self._moved, ticket, last), timeout=every_s)
                ahead = self._ahead(ticket)
                if ahead == 0:
                    self._line.remove(ticket)
                    self._answering += 1
                    ticket.admitted = True
                    return
            yield ahead
            last = ahead

    def leave(self, ticket: Ticket) -> None:
        with self._changed:
            if ticket.admitted:
                self._answering -= 1
                ticket.admitted = False
            elif ticket in self._line:
                self._line.remove(ticket)
            self._changed.notify_all()

    def _moved(self, ticket: Ticket, shown: int) -> bool:
        return self._ahead(ticket) != shown

    def _ahead(self, ticket: Ticket) -> int:
        free = self._slots - self._answering
        place = self._line.index(ticket)
        return 0 if place < free else place - free + 1
