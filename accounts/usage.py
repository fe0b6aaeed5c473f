"""Usage rows kept in memory and written in batches by one background thread.

A request only appends to a list, never waits for the database. The
flusher thread writes what has gathered every ``flush_interval`` seconds,
or at once when ``buffer_limit`` rows are waiting. So a crash loses at most
the rows gathered since the last write: about ``flush_interval`` seconds of
traffic and normally no more than ``buffer_limit`` rows (plus the batch
being written at that moment). While the database cannot be written, rows
are kept and retried each interval, up to ``backlog_limit``; beyond it the
oldest are dropped and the number dropped is logged. :meth:`close` writes
whatever is left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from accounts.errors import DatabaseUnavailable, StoreClosed

log = structlog.get_logger(__name__)

Row = dict[str, Any]


class UsageBuffer:
    """Batches rows for ``write`` on a daemon thread started by the first :meth:`add`.

    Parameters:
        write: writes a list of rows in one transaction; raises
            :class:`DatabaseUnavailable` when the rows should be retried later.
        flush_interval: seconds between writes.
        buffer_limit: rows that force a write before the interval is up.
        backlog_limit: most rows kept while writes fail; the oldest go first.
    """

    def __init__(
        self,
        write: Callable[[list[Row]], None],
        flush_interval: float,
        buffer_limit: int,
        backlog_limit: int,
    ) -> None:
        self._write = write
        self._interval = flush_interval
        self._limit = buffer_limit
        self._backlog_limit = backlog_limit
        self._pending: list[Row] = []
        self._changed = threading.Condition()
        self._writing = threading.Lock()  # one batch at a time, in order
        self._thread: threading.Thread | None = None
        self._closing = False
        self.written = 0  # rows written so far (read under _changed)
        self.dropped = 0  # rows given up so far

    def add(self, row: Row) -> None:
        """Queue one row; returns at once."""
        with self._changed:
            if self._closing:
                raise StoreClosed("usage recorded after the store was closed")
            self._pending.append(row)
            if self._thread is None:
                self._start()
            if len(self._pending) >= self._limit:
                self._changed.notify_all()

    def flush(self) -> None:
        """Write every queued row now; raises :class:`DatabaseUnavailable` if that fails
        (the rows stay queued for the next try)."""
        with self._writing:
            with self._changed:
                batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self._write(batch)
            except DatabaseUnavailable:
                self._put_back(batch)
                raise
            except Exception:
                with self._changed:
                    self.dropped += len(batch)
                log.error("usage_records_lost", count=len(batch), reason="write failed")
                raise
            with self._changed:
                self.written += len(batch)
                self._changed.notify_all()

    def wait_written(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` rows in all have been written (for tests and shutdown)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.written >= count, timeout)

    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def close(self) -> None:
        """Stop the thread and write what is left; rows that cannot be written are logged as lost."""
        with self._changed:
            self._closing = True
            thread = self._thread
            self._changed.notify_all()
        if thread is not None:
            thread.join()
        try:
            self.flush()
        except DatabaseUnavailable:
            lost = self.pending()
            log.error("usage_records_lost", count=lost, reason="database unavailable at close")
            with self._changed:
                self._pending.clear()
                self.dropped += lost

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="accounts-usage-flusher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failed = False
        while True:
            with self._changed:
                # After a failure, wait the whole interval even if the buffer is full.
                self._changed.wait_for(
                    lambda: self._closing or (not failed and len(self._pending) >= self._limit),
                    self._interval,
                )
                if self._closing:
                    return  # close() writes the rest in its own thread
            failed = not self._flush_logging_failures()

    def _flush_logging_failures(self) -> bool:
        try:
            self.flush()
        except DatabaseUnavailable as error:
            log.warning("usage_flush_failed", pending=self.pending(), reason=error.message)
            return False
        except Exception:
            log.exception("usage_flush_crashed")
            return False
        return True

    def _put_back(self, batch: list[Row]) -> None:
        with self._changed:
            self._pending[:0] = batch
            excess = len(self._pending) - self._backlog_limit
            if excess > 0:
                del self._pending[:excess]
                self.dropped += excess
        if excess > 0:
            log.error("usage_records_lost", count=excess, reason="backlog limit reached")
