"""Answers waiting for their commit: one ordered queue and one timer, whoever does the committing
(the writer thread in this process, or the recorder process)."""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, Protocol, TypeVar


class _Ordered(Protocol):
    def __le__(self, other: object, /) -> bool: ...


Ticket = TypeVar("Ticket", bound=_Ordered)  # a sequence number, a journal position: commits pass them in order


class CommitWaiters(Generic[Ticket]):
    """Futures resolved True once the commits pass their ticket, False at their deadline or when the
    store is failing. One timer for all rather than one `wait_for` each: this runs for every response.
    Called on the event loop only."""

    def __init__(self) -> None:
        self._waiters: collections.deque[tuple[Ticket, asyncio.Future[bool], float]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def add(self, loop: asyncio.AbstractEventLoop, ticket: Ticket, timeout: float) -> asyncio.Future[bool]:
        self._loop = loop
        future: asyncio.Future[bool] = loop.create_future()
        deadline = loop.time() + timeout
        if self._waiters and self._waiters[-1][2] > deadline:
            deadline = self._waiters[-1][2]  # deadlines stay in order, as tickets do (see _sweep)
        self._waiters.append((ticket, future, deadline))
        if self._sweeper is None:
            self._sweeper = loop.call_at(deadline, self._sweep)
        return future

    def release_through(self, ticket: Ticket) -> None:
        """The commits have got to `ticket`: everyone waiting for it or before is answered True."""
        waiters = self._waiters
        while waiters and waiters[0][0] <= ticket:
            _, future, _ = waiters.popleft()
            if not future.done():
                future.set_result(True)

    def release_all(self) -> None:
        """The store is failing: nobody should wait for a commit that is not coming soon."""
        while self._waiters:
            _, future, _ = self._waiters.popleft()
            if not future.done():
                future.set_result(False)

    def _sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = None
        now = self._loop.time()
        waiters = self._waiters
        while waiters and waiters[0][2] <= now:
            _, future, _ = waiters.popleft()
            if not future.done():
                future.set_result(False)
        if waiters:
            self._sweeper = self._loop.call_at(waiters[0][2], self._sweep)
