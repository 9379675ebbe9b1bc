"""The hot loop: how a block of complete records becomes counts, with Python touching few of them.

Why so shaped: the analyzer must stream multi-gigabyte logs. A 4 MB block is read by two ``findall``
passes run in C, each returning one string per match so that ``Counter`` counts identical strings in
C. The header pass gives "PID LEVEL DB LOGGER" for INFO and DEBUG records (a few distinct strings per
block) and the whole text of the other records; the request pass starts at the literal " werkzeug:"
(valid when a count shows that every one is a werkzeug header's logger; otherwise ``_scan_combined``
reads requests in header context in one pass). Python only handles the rare records, in log order.
``_scan_slow`` is the one-step-per-record reference path (``--since`` boundaries, gates below WARNING,
callbacks); tests check that the paths agree. ``_BlockScanner`` is a part of ``LogAnalyzer``, whose
``__init__`` holds its state.
"""

from __future__ import annotations

from collections import Counter
from operator import itemgetter

from tasks.logs.records import (
    _RX_FIRST,
    _RX_KEYS,
    _RX_KEYS_REQ,
    _RX_RECORD,
    _RX_REQ_REST,
    _RX_TB_LINE,
    _RX_TS,
    _RX_WZ_REQ,
    _TB,
    _WZ,
    _keyword_hits,
    _last_header,
    _split_record,
)

MAX_PIDS = 1000
MAX_LOGGERS = 5000

_QUIET = frozenset((b"INFO", b"DEBUG"))
_FIRST = itemgetter(0)
_FIRST_TWO = itemgetter(0, 1)


class _BlockScanner:
    """Part of ``LogAnalyzer``: analyse the complete records of a block (see the module docstring)."""

    def _gap(self, text: bytes) -> None:
        """Lines before the first record of a block: a tail of an over-long record, or not Odoo lines."""
        if not text.strip(b"\n"):
            return
        if self._overflow:
            self.tracebacks += len(_RX_TB_LINE.findall(text))
        else:
            self.unparsed_lines += text.count(b"\n") or 1

    def _process(self, buf: bytes, end: int) -> None:
        """Analyse the complete records of ``buf[:end]`` (``buf`` starts with a newline)."""
        if self._since is not None:
            stamps = _RX_TS.findall(buf, 0, end)
            if stamps and max(stamps) < self._since:
                self._gap_only(buf, end)
                self.skipped_before_since += len(stamps)
                return
            if stamps and min(stamps) < self._since:
                self._scan_slow(buf, end)
                return
        if self._needs_slow:
            self._scan_slow(buf, end)
        else:
            self._scan_fast(buf, end)

    def _gap_only(self, buf: bytes, end: int) -> None:
        m = _RX_FIRST.search(buf, 0, end)
        self._gap(buf[: m.start() if m else end])
        if m:
            self._overflow = False

    def _scan_slow(self, buf: bytes, end: int) -> None:
        """Reference path: one Python step per record (used with --since, low-level gates, callbacks)."""
        hits = _keyword_hits(buf, end)
        nhits = len(hits)
        hi = 0
        since = self._since
        levels, dbs, loggers, pids = self.levels, self.dbs, self.loggers, self.pids
        quiet = _QUIET
        classify_all = self._classify_all
        tb = _TB
        count = 0
        skipped = 0
        last_ts = None
        first = True
        for m in _RX_RECORD.finditer(buf, 0, end):
            if first:
                first = False
                if m.start() > 0:
                    self._gap(buf[: m.start()])
                self._overflow = False
            e = m.end()
            ts, pid, level, db, logger, msg, cont = m.groups()
            flag = classify_all or level not in quiet
            if nhits and hi < nhits and hits[hi] < e:
                if hits[hi] >= m.start():
                    flag = True
                while hi < nhits and hits[hi] < e:
                    hi += 1
            if since is not None and ts < since:
                skipped += 1
                continue
            if not count and self.first_ts is None:
                self.first_ts = ts
            count += 1
            last_ts = ts
            levels[level] = levels.get(level, 0) + 1
            if pid in pids:
                pids[pid] += 1
            elif len(pids) < MAX_PIDS:
                pids[pid] = 1
            dbs[db] = dbs.get(db, 0) + 1
            if logger in loggers:
                loggers[logger] += 1
            elif len(loggers) < MAX_LOGGERS:
                loggers[logger] = 1
            if logger == b"werkzeug":
                self._request(ts, db, msg)
            if cont:
                if tb in cont:
                    ntb = len(_RX_TB_LINE.findall(cont))
                    if ntb:
                        self.tracebacks += ntb
                        self.records_with_traceback += 1
            if flag:
                self._classify(ts, pid, level, db, logger, msg, cont)
        if first:
            self._gap(buf[:end])
        self.records += count
        self._src_records += count
        self.skipped_before_since += skipped
        if last_ts is not None:
            self.last_ts = last_ts

    def _scan_fast(self, buf: bytes, end: int) -> None:
        """Vectorised path: a header pass and a request pass counted in C, Python only for rare records."""
        mfirst = _RX_FIRST.search(buf, 0, end)
        if mfirst is None:
            self._gap(buf[:end])
            return
        start = mfirst.start()
        # INFO/DEBUG records holding a keyword (rare) cut the header pass, so that every record comes in log order
        extra: list[tuple[bytes, ...]] = []
        cuts: list[int] = []
        seen = -1
        for hit in _keyword_hits(buf, end, start):
            rec = _last_header(buf, hit + 1)
            if rec != seen:
                seen = rec
                m = _RX_RECORD.match(buf, rec, end)
                if m is not None and m.group(3) in _QUIET:
                    extra.append(m.groups())
                    cuts.append(rec)
        found: list[bytes] = []
        marks: list[int] = []  # where each keyword record comes, as a number of header-pass results before it
        pos = start
        for rec in cuts:
            found += _RX_KEYS.findall(buf, pos, rec)
            marks.append(len(found))
            pos = rec
        found += _RX_KEYS.findall(buf, pos, end)
        keys: dict[bytes, int] = {}  # in order of first appearance, like the other paths
        parsed: dict[bytes, tuple[bytes, ...]] = {}  # records at levels other than INFO/DEBUG
        repeated = False
        tb_lines = tb_records = 0
        counts = Counter(found)
        for text, n in counts.items():
            if text[4:5] == b"-":
                repeated = repeated or n > 1
                row = parsed[text] = _split_record(text)
                key = b" ".join(row[1:5])
                if _TB in text:
                    k = len(_RX_TB_LINE.findall(text))
                    if k:
                        tb_lines += k * n
                        tb_records += n
            else:
                key = text
            keys[key] = keys.get(key, 0) + n
        if extra:
            get = parsed.get
            todo: list[tuple[bytes, ...]] = []
            pos = 0
            for mark, groups in zip(marks, extra, strict=True):
                todo.extend(filter(None, map(get, found[pos:mark])))
                todo.append(groups)
                pos = mark
            todo.extend(filter(None, map(get, found[pos:])))
        elif repeated:
            todo = list(filter(None, map(parsed.get, found)))
        else:
            todo = list(parsed.values())
        del found, counts, parsed
        wz = 0
        for key, n in keys.items():
            if key.endswith(b" werkzeug"):
                wz += n
        requests: dict[tuple[bytes, bytes], int] = {}
        if wz != buf.count(_WZ, start, end):
            # " werkzeug:" also outside werkzeug headers: the one-pass path reads requests in header context
            self._scan_combined(buf, end)
            return
        if wz:
            rest = _RX_REQ_REST.match
            for text, n in Counter(_RX_WZ_REQ.findall(buf, start, end)).items():
                m = rest(text)
                if m is not None:
                    req = m.groups()
                    requests[req] = requests.get(req, 0) + n
        if start > 0:
            self._gap(buf[:start])
        self._overflow = False
        if self.first_ts is None:
            self.first_ts = mfirst.group(1)
        last = _last_header(buf, end)
        self.last_ts = _RX_FIRST.match(buf, last).group(1)
        levels, dbs, loggers, pids = self.levels, self.dbs, self.loggers, self.pids
        count = 0
        for key, n in keys.items():
            pid, level, db, logger = key.split(b" ")
            count += n
            levels[level] = levels.get(level, 0) + n
            dbs[db] = dbs.get(db, 0) + n
            if pid in pids:
                pids[pid] += n
            elif len(pids) < MAX_PIDS:
                pids[pid] = n
            if logger in loggers:
                loggers[logger] += n
            elif len(loggers) < MAX_LOGGERS:
                loggers[logger] = n
        self.records += count
        self._src_records += count
        if requests:
            self._requests_fast(requests, buf, start, end)
        if buf.find(_TB, start, end) >= 0:
            total = len(_RX_TB_LINE.findall(buf, start, end))
            if total == tb_lines:  # all in the records above INFO/DEBUG, whose text is at hand
                self.tracebacks += total
                self.records_with_traceback += tb_records
            else:
                self._tracebacks_fast(buf, start, end)
        self._classify_rows(todo)

    def _tracebacks_fast(self, buf: bytes, start: int, end: int) -> None:
        """Traceback lines of a block and the records holding them (rare: one Python step per traceback)."""
        if buf.find(_TB, start, end) >= 0:
            owners = set()
            for m in _RX_TB_LINE.finditer(buf, start, end):
                self.tracebacks += 1
                owners.add(_last_header(buf, m.start() + 1))
            self.records_with_traceback += len(owners)

    def _classify_rows(self, todo: list[tuple[bytes, ...]]) -> None:
        """Classify records in log order: those above INFO/DEBUG, and INFO/DEBUG ones holding a keyword."""
        simple = self._simple
        quiet = _QUIET
        for row in todo:
            ts, pid, level, db, logger, msg, cont = row
            hit = None if cont or level in quiet else simple.get((level, logger, msg))
            if hit is None:
                self._classify(ts, pid, level, db, logger, msg, cont)
                continue
            # a repeated single-line record that only counts under its signature: no Python detour
            entry, is_error = hit
            entry["count"] += 1
            entry["last"] = ts
            edbs = entry["databases"]
            if db not in edbs and len(edbs) < 5:
                edbs.append(db)
            if is_error:
                self.errors_total += 1
            else:
                self.warnings_total += 1

    def _scan_combined(self, buf: bytes, end: int) -> None:
        """One-pass vectorised path (blocks where " werkzeug:" also appears outside werkzeug headers)."""
        mfirst = _RX_FIRST.search(buf, 0, end)
        if mfirst is None:
            self._gap(buf[:end])
            return
        start = mfirst.start()
        if start > 0:
            self._gap(buf[:start])
        self._overflow = False
        if self.first_ts is None:
            self.first_ts = mfirst.group(1)
        last = _last_header(buf, end)
        self.last_ts = _RX_FIRST.match(buf, last).group(1)
        # header fields and request figures, counted in C then folded per distinct combination
        levels, dbs, loggers, pids = self.levels, self.dbs, self.loggers, self.pids
        count = 0
        keys: dict[bytes, int] = {}
        requests: dict[tuple[bytes, bytes], int] = {}
        found = _RX_KEYS_REQ.findall(buf, start, end)
        rows = list(filter(_FIRST, found))  # records at levels other than INFO/DEBUG, one by one, in log order
        for row, n in Counter(found).items():
            key, status = row[1], row[2]
            keys[key] = keys.get(key, 0) + n
            if status:
                requests[(status, row[3])] = requests.get((status, row[3]), 0) + n
        del found
        for key, n in keys.items():
            pid, level, db, logger = key.split(b" ")
            count += n
            levels[level] = levels.get(level, 0) + n
            dbs[db] = dbs.get(db, 0) + n
            if pid in pids:
                pids[pid] += n
            elif len(pids) < MAX_PIDS:
                pids[pid] = n
            if logger in loggers:
                loggers[logger] += n
            elif len(loggers) < MAX_LOGGERS:
                loggers[logger] = n
        self.records += count
        self._src_records += count
        if requests:
            self._requests_fast(requests, buf, start, end)
        # tracebacks
        if buf.find(_TB, start, end) >= 0:
            owners = set()
            for m in _RX_TB_LINE.finditer(buf, start, end):
                self.tracebacks += 1
                owners.add(_last_header(buf, m.start() + 1))
            self.records_with_traceback += len(owners)
        # INFO/DEBUG records holding a keyword (rare): classified in log order among the records above
        extra: list[tuple[int, tuple[bytes, ...]]] = []
        seen = -1
        for pos in _keyword_hits(buf, end, start):
            rec = _last_header(buf, pos + 1)
            if rec != seen:
                seen = rec
                m = _RX_RECORD.match(buf, rec, end)
                if m is not None and m.group(3) in _QUIET:
                    extra.append((rec, m.groups()))
        if extra:
            # place the records above by their header (found one after the other) and merge
            placed: list[tuple[int, int, tuple[bytes, ...]]] = []
            pos = start - 1
            for row in rows:
                at = buf.find(b"\n" + row[0] + b" " + row[1] + b":", pos + 1, end)
                pos = at if at >= 0 else pos
                placed.append((pos, 1, row))
            placed.extend((rec, 0, groups) for rec, groups in extra)
            placed.sort(key=_FIRST_TWO)
            todo = [(kind, row) for _, kind, row in placed]
        else:
            todo = [(1, row) for row in rows]
        simple = self._simple
        for kind, row in todo:
            if not kind:  # a keyword record, as matched by _RX_RECORD
                self._classify(*row)
                continue
            ts, key, _, _, msg, cont = row
            pid, level, db, logger = key.split(b" ")
            hit = None if cont else simple.get((level, logger, msg))
            if hit is None:
                self._classify(ts, pid, level, db, logger, msg, cont)
                continue
            # a repeated single-line record that only counts under its signature: no Python detour
            entry, is_error = hit
            entry["count"] += 1
            entry["last"] = ts
            edbs = entry["databases"]
            if db not in edbs and len(edbs) < 5:
                edbs.append(db)
            if is_error:
                self.errors_total += 1
            else:
                self.warnings_total += 1
