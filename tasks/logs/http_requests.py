"""Werkzeug request lines: HTTP status counts, timing sums, slow counts and the top-N slowest requests.

Why apart: request lines are most of an Odoo log. The block scanner hands their (status, timing)
fields over already counted; this part folds them into the counters, one Python step per distinct
value, and keeps the slowest requests in three bounded heaps (total, SQL and Python time).
``_RequestStats`` is a part of ``LogAnalyzer``, whose ``__init__`` holds its state.
"""

from __future__ import annotations

import heapq

from tasks.logs.records import _RX_REQ_ROW, _RX_REQUEST


class _RequestStats:
    """Part of ``LogAnalyzer``: fold werkzeug request lines into the request counters and heaps."""

    def _requests_fast(self, rows: dict[tuple[bytes, bytes], int], buf: bytes, start: int, end: int) -> None:
        """Fold a block's request lines into the counters, one Python step per distinct (status, timing)."""
        base = self.req_total
        self.req_total += sum(rows.values())
        st = self.req_status
        slow = self.req_slow
        floor = self._floor
        wanted: dict[tuple[bytes, bytes], tuple[float, float, float]] = {}
        for (status, timing), n in rows.items():
            st[status] = st.get(status, 0) + n
            if not timing:
                self.req_no_timing += n
                continue
            if timing == b" - - -":
                self.req_dash += n
                continue
            qc, qt, rt = timing.split()
            nqc, fqt, frt = int(qc), float(qt), float(rt)
            total = fqt + frt
            self.req_timed += n
            self.req_qc += nqc * n
            self.req_qt += fqt * n
            self.req_rt += frt * n
            if nqc > self.req_max_qc:
                self.req_max_qc = nqc
            if total >= self._slow_total:
                slow["total"] += n
            if fqt >= self._slow_sql:
                slow["sql"] += n
            if frt >= self._slow_python:
                slow["python"] += n
            if total > floor[0] or fqt > floor[1] or frt > floor[2]:
                wanted[(status, timing)] = (total, fqt, frt)
        if not wanted or self.options.top <= 0:
            return
        # rare once the heaps are full: walk the block's request lines to offer the candidates in order
        for r, m in enumerate(_RX_REQ_ROW.finditer(buf, start, end)):
            ts, db, method, path, status, qc, qt, rt, dash = m.groups()
            if qc is None:
                continue
            values = wanted.get((status, b" " + b" ".join((qc, qt, rt))))
            if values is not None:
                self._keep_slow(values, base + r + 1, (ts, db, method, path, status, qc, qt, rt))

    def _request(self, ts: bytes, db: bytes, msg: bytes) -> None:
        m = _RX_REQUEST.match(msg)
        if m is None:
            return
        self.req_total += 1
        method, path, status, qc, qt, rt, dash = m.groups()
        st = self.req_status
        st[status] = st.get(status, 0) + 1
        if dash:
            self.req_dash += 1
            return
        if qc is None:
            self.req_no_timing += 1
            return
        nqc = int(qc)
        fqt = float(qt)
        frt = float(rt)
        self.req_timed += 1
        self.req_qc += nqc
        if nqc > self.req_max_qc:
            self.req_max_qc = nqc
        self.req_qt += fqt
        self.req_rt += frt
        total = fqt + frt
        if total >= self._slow_total:
            self.req_slow["total"] += 1
        if fqt >= self._slow_sql:
            self.req_slow["sql"] += 1
        if frt >= self._slow_python:
            self.req_slow["python"] += 1
        if total > self._floor[0] or fqt > self._floor[1] or frt > self._floor[2]:
            self._keep_slow((total, fqt, frt), self.req_total, (ts, db, method, path, status, qc, qt, rt))

    def _keep_slow(self, values: tuple[float, float, float], ordinal: int, row: tuple[bytes, ...]) -> None:
        """Offer a timed request to the three bounded top-N heaps (total, SQL, Python time)."""
        for i in range(3):
            if values[i] > self._floor[i]:
                self._keep_one(i, values[i], ordinal, row)

    def _keep_one(self, i: int, value: float, ordinal: int, row: tuple[bytes, ...]) -> None:
        """Heap entries are (value, -ordinal, row): on ties the earliest request is kept."""
        top = self.options.top
        heap = self._heaps[("total", "sql", "python")[i]]
        item = (value, -ordinal, row)
        if len(heap) < top:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
        if len(heap) >= top:
            self._floor[i] = heap[0][0]
