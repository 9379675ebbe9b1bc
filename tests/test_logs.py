"""The log analyzer: exact figures on real Odoo 12-18 logs, classification, bad input, flat memory, follow."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tasks.logs import (
    AnalysisOptions,
    LogAnalyzer,
    LogSourceError,
    analyze_lines,
    analyze_sources,
    analyze_stream,
    follow,
    gate_failed,
    iter_lines_from_stream,
    normalize_message,
    parse_records,
    parse_since,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "odoo-logs"
LOGS = sorted(FIXTURES.glob("*.log"))
SAMPLE = ROOT / "sample" / "odoo17" / "server.log"


def expected(log: Path) -> dict:
    return json.loads((FIXTURES / "expected" / f"{log.stem}.json").read_text())


def test_all_six_fixtures_are_there():
    assert len(LOGS) == 6


@pytest.mark.parametrize("log", LOGS, ids=[p.stem for p in LOGS])
def test_figures_match_the_expected_files_exactly(log):
    exp = expected(log)
    s = analyze_sources([str(log)])
    assert s["records"] == exp["records"]
    assert s["levels"] == exp["levels"]
    assert s["tracebacks"] == exp["traceback_header_lines"]
    assert s["records_with_traceback"] == exp["records_with_traceback"]
    req = s["requests"]
    assert req["total"] == exp["werkzeug_request_lines"]
    assert req["status"] == exp.get("status_codes", {})
    assert req["timed"] == exp.get("timed_request_lines", 0)
    assert req["query_count"] == exp.get("timed_sum_query_count", 0)
    assert req["query_time"] == exp.get("timed_sum_query_time", 0)
    assert req["remaining_time"] == exp.get("timed_sum_remaining_time", 0)
    assert req["untimed_dash"] == exp.get("dash_timing_request_lines", 0)
    assert s["databases"] == exp["databases_field"]
    assert s["lines"] == exp["physical_lines"]
    assert s["first_timestamp"] == exp["first_timestamp"]
    assert sorted(s["pids"]) == sorted(exp["pids"])
    assert s["format_warning"] is None


_HEAD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\d+) (\S+) (\S+) (\S+): ")


def test_sample_odoo17_log_against_a_plain_line_count():
    lines = SAMPLE.read_text(encoding="utf-8", errors="replace").splitlines()
    heads = [m for m in map(_HEAD.match, lines) if m]
    levels = {lv: sum(1 for m in heads if m.group(3) == lv) for lv in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
    werkzeug = [line for line, m in zip(lines, map(_HEAD.match, lines), strict=True)
                if m and m.group(5) == "werkzeug" and '" ' in line and " - - [" in line]
    timed = [line.split() for line in werkzeug if re.search(r" \d+ \d+\.\d+ \d+\.\d+$", line)]
    s = analyze_sources([str(SAMPLE)])
    assert s["records"] == len(heads) > 900
    assert s["levels"] == levels
    assert s["tracebacks"] == sum(1 for line in lines if line == "Traceback (most recent call last):") == 2
    assert s["requests"]["total"] == len(werkzeug)
    assert s["requests"]["timed"] == len(timed)
    assert s["requests"]["query_count"] == sum(int(t[-3]) for t in timed)
    assert s["requests"]["query_time"] == round(sum(float(t[-2]) for t in timed), 3)
    assert s["databases"] == {db: sum(1 for m in heads if m.group(4) == db) for db in {m.group(4) for m in heads}}
    # the two ERROR records are the master-password refusals of the database manager
    assert s["security"]["access_denied"]["total"] == 2
    assert s["errors"]["signatures"][0]["exception"] == "odoo.exceptions.AccessDenied"
    assert s["security"]["login_failed"]["top"][0]["login"] == "admin"


def _run(paths, fast=True, chunk=None, options=None):
    a = LogAnalyzer(options or AnalysisOptions(top=5), fast=fast)
    for path in paths:
        data = Path(path).read_bytes()
        step = chunk or len(data) or 1
        for i in range(0, len(data), step):
            a.feed(data[i:i + step])
        a.end_source(str(path))
    return a.summary()


def test_vectorised_and_per_record_paths_agree_whatever_the_block_boundaries():
    paths = [*LOGS, SAMPLE]
    reference = _run(paths, fast=False)
    assert _run(paths) == reference
    assert _run(paths, chunk=777) == reference
    assert _run(paths, fast=False, chunk=61) == reference


def test_one_source_mixing_every_fixture_gives_the_per_record_result_in_log_order(tmp_path):
    """Repeated records (same timestamp and text), keyword INFO records between WARNING+ ones: same summary,
    examples and signature first/last included, as the one-step-per-record reference path."""
    log = tmp_path / "mixed.log"
    log.write_bytes(b"".join(p.read_bytes() for p in [*LOGS, SAMPLE]) * 3)
    reference = _run([log], fast=False)
    for chunk in (None, 1 << 16, 9999):
        assert _run([log], chunk=chunk) == reference


_W = b"2024-01-01 10:00:0%d,000 12 INFO db werkzeug: "
AWKWARD = b"\n".join([
    _W % 1 + b'1.2.3.4 - - [x] "GET /a b HTTP/1.1" 200 - 1 0.1 0.2',  # a path with a space
    _W % 1 + b'1.2.3.4 - - [x] "GET /a HTTP/1.1" 200 x" HTTP/1.1" 404 - 1 0.1 0.2',  # a second " HTTP/ part
    _W % 2 + b'1.2.3.4 - - [x] "GET /a HTTP/1.1" 200 - 1 0.1 0.2 extra junk',
    _W % 2 + b' 1.2.3.4 - - [x] "GET /a HTTP/1.0" 304 - - - -',
    _W % 3 + b'1.2.3.4 - - [x] "GET /a HTTP/1.0" 200 123',  # no timing fields (Odoo < 12)
    _W % 3 + b'1.2.3.4 - - [x] "GET /a HTTP/1.0" 200 123 4 0.5 9.25 \r',
    _W % 3 + b"Detected change, reloading",  # a werkzeug record that is not a request
    b"2024-01-01 10:00:04,000 12 WARNING db werkzeug: " + b'1.2.3.4 - - [x] "POST /w HTTP/1.1" 500 - 9 3.5 4.5',
    b"2024-01-01 10:00:05,000 12 INFO db odoo.x: Login failed for db:db login:a from 1.2.3.4",
    b"2024-01-01 10:00:05,000 12 ERROR db odoo.x: same",
    b"2024-01-01 10:00:05,000 12 ERROR db odoo.x: same",
    b"2024-01-01 10:00:05,000 12 INFO db odoo.x: with tb\nTraceback (most recent call last):\n"
    b'  File "a.py", line 1, in f\nValueError: x',
    b"2024-01-01 10:00:05,000 12 IMPORTANT db odoo.x: custom level",
    b"2024-01-01 10:00:05,000 12 INFO_X db odoo.x:custom level",
    b"2024-01-01 10:00:05,000 12 ERROR db odoo.x: same\nTraceback (most recent call last):\n"
    b'  File "a.py", line 1, in f\nValueError: x\r',
]) + b"\n"
# " werkzeug:" inside another logger's message: the fast path must notice and fall back
TRICKY = b'2024-01-01 10:00:06,000 12 ERROR db odoo.x: boom werkzeug: 1.2.3.4 - - [x] "GET / HTTP/1.1" 200 - 1 0.1 0.2\n'


@pytest.mark.parametrize("mix", ["awkward-after", "awkward-before", "tricky", "repeated"])
def test_awkward_lines_give_the_per_record_result(tmp_path, mix):
    base = SAMPLE.read_bytes() + (FIXTURES / "14-odoo17-login-failed-http500.log").read_bytes()
    data = {"awkward-after": base + AWKWARD, "awkward-before": AWKWARD + base, "tricky": TRICKY + AWKWARD + base,
            "repeated": (base + AWKWARD) * 5}[mix]
    log = tmp_path / "awkward.log"
    log.write_bytes(data)
    reference = _run([log], fast=False)
    assert reference["requests"]["total"] > 0 and reference["levels"]["ERROR"] > 0
    for chunk in (None, 7, 1000, 65536):
        assert _run([log], chunk=chunk) == reference


def test_gzip_stdin_stream_and_lines_sources_give_the_same_figures(tmp_path):
    log = FIXTURES / "14-odoo17-login-failed-http500.log"
    plain = analyze_sources([str(log)])
    gz = tmp_path / "odoo.log.1.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    zipped = analyze_sources([str(gz)])
    streamed = analyze_stream(io.BytesIO(log.read_bytes()), name=str(log))
    lined = analyze_lines(log.read_text().splitlines(), name=str(log))
    for other in (zipped, streamed, lined):
        for key in ("records", "levels", "tracebacks", "requests", "databases", "errors", "security"):
            assert other[key] == plain[key], key
    assert list(iter_lines_from_stream(io.BytesIO(b"a\nb\r\nc"), chunk_size=2)) == [b"a", b"b\r", b"c"]


def test_a_truncated_gzip_is_analysed_as_far_as_it_goes(tmp_path):
    log = FIXTURES / "01-odoo12-debug-startup.log"
    gz = tmp_path / "odoo.log.2.gz"
    data = gzip.compress(log.read_bytes())
    gz.write_bytes(data[: len(data) // 2])
    s = analyze_sources([str(gz)])
    assert 0 < s["records"] < 263
    assert "truncated or corrupt" in s["io_warnings"][0]


def test_several_sources_add_up_and_records_never_span_files():
    s = analyze_sources([str(p) for p in LOGS])
    assert s["records"] == sum(expected(p)["records"] for p in LOGS)
    assert s["tracebacks"] == sum(expected(p)["traceback_header_lines"] for p in LOGS)
    assert [src["records"] for src in s["sources"]] == [expected(p)["records"] for p in LOGS]


def test_classification_on_real_logs():
    s = analyze_sources([str(FIXTURES / "04-odoo12-update-serialization-failure.log")])
    assert s["db_contention"]["kinds"]["serialization_failure"] == 6
    assert s["db_contention"]["kinds"]["bad_query"] == 2
    assert s["critical"]["total"] == 2
    assert s["module_failures"]["total"] >= 4
    top = s["errors"]["signatures"][0]
    assert top["exception"] == "psycopg2.extensions.TransactionRollbackError" and top["count"] == 4

    s = analyze_sources([str(FIXTURES / "17-odoo18-prefork-workers-lifecycle.log")])
    assert s["worker_limits"]["kinds"]["crash"] == 1
    assert s["db_contention"]["kinds"]["connection_failed"] == 1
    assert s["security"]["access_denied"]["total"] == 6
    assert s["errors"]["total"] == 7
    assert s["requests"]["slowest"]["total"][0]["path"] == "/web/database/create"

    s = analyze_sources([str(FIXTURES / "14-odoo17-login-failed-http500.log")])
    assert s["security"]["login_failed"]["total"] == 2
    assert s["security"]["login_failed"]["top"] == [{"db": "odoo_docker", "login": "odoo", "ip": "172.18.0.1",
                                                     "count": 2}]
    assert s["errors"]["signatures"][0]["signature"].startswith("ValueError: Module amunet_quality: invalid manifest")

    s = analyze_sources([str(FIXTURES / "09-odoo15-uninitialized-db-http500.log")])
    assert s["cron_failures"]["total"] == 2
    assert s["errors"]["total"] == 4 and s["errors"]["distinct"] == 3  # the two bad queries are one signature


SYNTHETIC = """\
2024-05-01 10:00:00,001 41 INFO ? odoo.service.server: Worker (41) virtual memory limit (2147483648) reached.
2024-05-01 10:00:01,001 42 INFO ? odoo.service.server: Worker (42) CPU time limit (60) reached.
2024-05-01 10:00:02,001 1 ERROR ? odoo.service.server: WorkerHTTP (43) timeout after 120s
2024-05-01 10:00:03,001 7 WARNING ? odoo.service.server: Thread <Thread(odoo.service.http.request.1, started 1)> virtual real time limit (151/120s) reached.
2024-05-01 10:00:04,001 44 INFO ? odoo.service.server: Worker (44) max request (8192) reached.
2024-05-01 10:00:05,001 45 ERROR shop odoo.sql_db: bad query: UPDATE stock_quant SET quantity=1 WHERE id=5
ERROR:  deadlock detected
DETAIL:  Process 1 waits for ShareLock on transaction 2; blocked by process 3.
2024-05-01 10:00:06,001 45 ERROR shop odoo.http: Exception during request handling.
Traceback (most recent call last):
  File "/opt/odoo/odoo/sql_db.py", line 700, in borrow
    raise PoolError('The Connection Pool Is Full')
psycopg2.pool.PoolError: The Connection Pool Is Full
2024-05-01 10:00:07,001 45 WARNING shop odoo.http: CSRF validation failed on path '/web/login'
2024-05-01 10:00:08,001 46 ERROR shop odoo.addons.base.models.ir_cron: Call from cron Mail: Email Queue Manager for server action #12 failed in Job #3
Traceback (most recent call last):
  File "/opt/odoo/addons/mail/models/mail_mail.py", line 300, in process_email_queue
    self.browse(ids).send()
odoo.exceptions.AccessError: You are not allowed to access 'Email' (mail.mail) records.
2024-05-01 10:00:09,001 46 CRITICAL shop odoo.modules.module: Couldn't load module web_custom
2024-05-01 10:00:10,001 46 ERROR shop odoo.sql_db: bad query: SELECT 1 FROM res_partner WHERE id=7 FOR UPDATE NOWAIT
ERROR:  could not obtain lock on row in relation "res_partner"
"""


def test_classification_of_limits_contention_security_cron_and_modules():
    s = analyze_lines(SYNTHETIC.splitlines())
    assert s["records"] == 11
    assert s["worker_limits"]["kinds"] == {"memory": 1, "memory_hard": 0, "cpu_time": 1, "real_time": 2,
                                           "request_limit": 1, "crash": 0}
    kinds = s["db_contention"]["kinds"]
    assert (kinds["deadlock"], kinds["pool_full"], kinds["lock_timeout"], kinds["bad_query"]) == (1, 1, 1, 2)
    assert s["security"]["csrf"]["total"] == 1
    assert s["security"]["access_denied"]["kinds"] == {"AccessError": 1}
    assert s["cron_failures"]["total"] == 1
    assert s["module_failures"]["total"] == 1
    assert s["critical"]["examples"][0]["message"] == "Couldn't load module web_custom"
    sig = {e["signature"] for e in s["errors"]["signatures"]}
    assert "psycopg2.pool.PoolError: The Connection Pool Is Full [sql_db.py:borrow]" in sig


def test_signatures_group_messages_that_differ_only_by_numbers_and_ids():
    lines = [f"2024-05-01 10:00:0{i},000 9 ERROR db odoo.addons.sale.models.sale_order: Order {i * 17} "
             f"failed for record 0x7f3a{i}c9e res.partner({i + 3},)" for i in range(5)]
    s = analyze_lines(lines)
    assert s["errors"]["distinct"] == 1 and s["errors"]["signatures"][0]["count"] == 5
    assert normalize_message("id 42 at 0xdeadbeef and 3.5s") == "id N at H and Ns"


def test_binary_garbage_and_truncated_lines_do_not_crash():
    good = (FIXTURES / "17-odoo18-prefork-workers-lifecycle.log").read_bytes()
    garbage = bytes(range(256)) * 40 + b"\xff\xfe\x00\n\x00\x00\n"
    data = good + garbage + b"2025-08-06 16:50:00,000 31 ERROR ? odoo.http: caf\xc3\xa9 \xe9\xff broken\n" + b"2025-08-06 16:5"
    s = analyze_stream(io.BytesIO(data))
    assert s["records"] == 96
    assert s["levels"]["ERROR"] == 8
    assert any("caf\u00e9" in e["example"]["message"] for e in s["errors"]["signatures"])
    # the garbage and the cut-off last line belong to the records before them, as continuation lines
    assert s["lines"] == 188 + garbage.count(b"\n") + 2


def test_a_log_in_another_format_is_reported_not_invented(tmp_path):
    nginx = tmp_path / "access.log"
    nginx.write_text('127.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8"\n' * 50)
    s = analyze_sources([str(nginx)])
    assert s["records"] == 0 and s["unparsed_lines"] == 50
    assert s["format_warning"].startswith(f"no Odoo log records found in {nginx}: is it an Odoo log?")


def test_an_empty_log(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    s = analyze_sources([str(empty)])
    assert s["records"] == 0 and s["lines"] == 0 and s["format_warning"] is None
    assert s["levels"] == {"DEBUG": 0, "INFO": 0, "WARNING": 0, "ERROR": 0, "CRITICAL": 0}
    assert s["requests"]["total"] == 0 and s["first_timestamp"] is None


def test_missing_file_directory_and_bad_level_are_one_line_errors(tmp_path):
    with pytest.raises(LogSourceError, match=r"^log file not found: .*nope\.log: check the path"):
        analyze_sources([str(tmp_path / "nope.log")])
    with pytest.raises(LogSourceError, match="is a directory"):
        analyze_sources([str(tmp_path)])
    from odoops.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown log level"):
        AnalysisOptions(fail_on="loud") and LogAnalyzer(AnalysisOptions(fail_on="loud"))


_CHILD = """
import io, sys
from pathlib import Path
from tasks.logs import analyze_stream

class Repeating(io.RawIOBase):
    def __init__(self, total):
        self.block = b"".join(p.read_bytes() for p in sorted(Path("tests/fixtures/odoo-logs").glob("*.log"))) * 8
        self.left = total
    def readable(self):
        return True
    def read(self, size=-1):
        n = min(self.left, len(self.block))
        self.left -= n
        return self.block[:n]

s = analyze_stream(Repeating(int(sys.argv[1])))
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the forking parent's (pytest's) size
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(s["bytes"], s["records"], hwm // 1024)
"""


def _child_peak(total: int) -> tuple[int, int, int]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _CHILD, str(total)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def test_memory_stays_flat_however_long_the_log():
    """A generated 48 MB log needs no more memory than a 4 MB one (peak RSS of a child process)."""
    small_bytes, small_records, small_mb = _child_peak(4 << 20)
    big_bytes, big_records, big_mb = _child_peak(48 << 20)
    assert big_bytes == 48 << 20 and big_records > 10 * small_records
    assert big_mb < 150, big_mb
    assert big_mb - small_mb < 12, (small_mb, big_mb)


_PARALLEL = """
import json, sys
import tasks.logs.analyze as logs
from tasks.logs import AnalysisOptions, analyze_sources

opts = AnalysisOptions(top=5, fail_on="error", ignore=["invalid manifest"])
one = analyze_sources([sys.argv[1]], opts, jobs=1)
three = analyze_sources([sys.argv[1]], opts, jobs=3, parallel_min_bytes=1)
print(json.dumps({"equal": one == three, "records": three["records"], "parallel": logs._parallel_ok(sys.argv[1], 3, 1),
                  "parts": len(logs._split_points(sys.argv[1], 3)) - 1}))
"""


def test_big_files_are_split_across_processes_with_the_same_result(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "big.log"
    log.write_bytes(b"".join(p.read_bytes() for p in [*LOGS, SAMPLE]) * 12)
    out = subprocess.run([sys.executable, "-c", _PARALLEL, str(log)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    result = json.loads(out)
    assert result == {"equal": True, "records": 12 * (sum(expected(p)["records"] for p in LOGS) + 918),
                      "parallel": True, "parts": 3}


def test_since_filters_records_exactly():
    log = FIXTURES / "17-odoo18-prefork-workers-lifecycle.log"
    cut = "2025-08-06 16:40:19,763"
    heads = [m for m in map(_HEAD.match, log.read_text().splitlines()) if m]
    s = analyze_sources([str(log)], AnalysisOptions(since=parse_since("2025-08-06T16:40:19.763")))
    assert s["records"] == sum(1 for m in heads if m.group(1) >= cut)
    assert s["skipped_before_since"] == sum(1 for m in heads if m.group(1) < cut)
    assert s["first_timestamp"] >= cut
    now = datetime(2024, 5, 1, 12, 0, 0)
    assert parse_since("2h", now) == datetime(2024, 5, 1, 10, 0, 0)
    assert parse_since("30m", now) == datetime(2024, 5, 1, 11, 30, 0)
    assert parse_since("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, 0, 0)


def test_fail_on_gate_and_ignore_patterns():
    log = str(FIXTURES / "17-odoo18-prefork-workers-lifecycle.log")
    s = analyze_sources([log], AnalysisOptions(fail_on="error"))
    assert gate_failed(s) and s["gate"]["matched"] == 7
    s = analyze_sources([log], AnalysisOptions(fail_on="error", ignore=["Database creation error"]))
    assert gate_failed(s) and s["gate"]["matched"] == 1 and s["gate"]["ignored"] == 6
    s = analyze_sources([log], AnalysisOptions(fail_on="error", ignore=["Database creation error", "Worker \\(35\\)"]))
    assert not gate_failed(s)
    assert not gate_failed(analyze_sources([log], AnalysisOptions(fail_on="critical")))
    s = analyze_sources([log], AnalysisOptions(fail_on="info", ignore=["werkzeug"]))
    assert s["gate"]["matched"] == 95 - 44 - 2  # 44 request lines and 2 "HTTP service (werkzeug)" banners


def test_parse_records_yields_whole_records():
    records = list(parse_records((FIXTURES / "14-odoo17-login-failed-http500.log").read_bytes().splitlines()))
    assert len(records) == 16
    err = next(r for r in records if r.level == "ERROR")
    assert err.logger == "odoo.http" and err.continuation[0] == "Traceback (most recent call last):"
    assert err.text.splitlines()[0] == "2026-01-12 19:40:00,472 1 ERROR ? odoo.http: Exception during request handling."


ERR = "2024-05-01 10:00:{:02d},000 7 ERROR shop odoo.http: boom {}\nTraceback (most recent call last):\nKeyError: 'x'\n"
INFO = "2024-05-01 10:00:{:02d},000 7 INFO shop werkzeug: 127.0.0.1 - - [01/May/2024 10:00:00] \"GET / HTTP/1.1\" 200 - 3 0.010 0.020\n"


def _read_up_to_end(path: Path, timeout: float = 30) -> None:
    """Wait until a thread of this process has the file open at its end (its fd's offset, from /proc)."""
    deadline = time.monotonic() + timeout
    while True:
        size = path.stat().st_size
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                    info = Path(f"/proc/self/fdinfo/{fd}").read_text()
                    if int(info.split("pos:")[1].split()[0]) == size:
                        return
            except (OSError, IndexError, ValueError):  # fd closed while looking
                continue
        assert time.monotonic() < deadline, f"the watcher never read {path.name} to its end"
        time.sleep(0.01)


def test_follow_alerts_when_errors_cross_the_threshold_and_survives_rotation(tmp_path, caplog):
    log = tmp_path / "odoo.log"
    log.write_text(INFO.format(0))  # existing content is skipped: follow starts at the end
    stop = threading.Event()
    alerts: list[dict] = []
    result: dict = {}

    def run() -> None:
        result.update(follow(str(log), threshold_errors=3, window_minutes=1, stop_event=stop, poll_interval=0.02,
                             on_alert=alerts.append))

    caplog.set_level(logging.WARNING, logger="odoops.alerts")
    watcher = threading.Thread(target=run)
    watcher.start()
    _read_up_to_end(log)
    with log.open("a") as f:
        for i in range(3):
            f.write(ERR.format(i, i))
            f.flush()
    _read_up_to_end(log)
    assert alerts == []  # 3 is not more than 3
    with log.open("a") as f:
        f.write(INFO.format(5) + ERR.format(6, 6))
    deadline = time.monotonic() + 30
    while not alerts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(alerts) == 1 and alerts[0]["count"] == 4 and alerts[0]["prefect_event"] is False
    assert "4 ERROR-or-worse records in the last 1 min" in caplog.text
    # rotation: the file is renamed and a new one starts; the watcher switches to it
    os.rename(log, tmp_path / "odoo.log.1")
    log.write_text(INFO.format(10) + INFO.format(11))
    _read_up_to_end(log)
    # truncation in place (copytruncate); what is written before the stop is still read
    log.write_text(INFO.format(12))
    stop.set()
    watcher.join(30)
    assert not watcher.is_alive()
    assert result["levels"]["ERROR"] == 4
    assert result["requests"]["total"] == 4  # 1 before rotation, 2 after, 1 after truncation
    assert len(result["alerts"]) == 1


def test_follow_stops_after_max_seconds_and_refuses_stdin(tmp_path):
    log = tmp_path / "odoo.log"
    log.write_text(INFO.format(1))
    started = time.monotonic()
    s = follow(str(log), from_start=True, max_seconds=0.2, poll_interval=0.02)
    assert time.monotonic() - started < 20  # stopped by max_seconds, not by the end of the file
    assert s["records"] == 1 and s["alerts"] == []
    from odoops.errors import ConfigError

    with pytest.raises(ConfigError, match="--follow needs a local log file"):
        follow("-", max_seconds=0.1)
    with pytest.raises(LogSourceError, match="log file not found"):
        follow(str(tmp_path / "missing.log"), max_seconds=0.1)


def test_logs_flow_publishes_artifacts_and_fails_on_the_gate(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.logs import logs_flow
    from tasks.logs import LogGateFailed

    log = str(FIXTURES / "14-odoo17-login-failed-http500.log")
    summary = logs_flow([log])
    assert summary["records"] == 16 and summary["levels"]["ERROR"] == 5

    wanted = ["logs-error-signatures", "logs-slowest-requests", "logs-http-status", "logs-summary"]

    async def artifact_keys() -> set[str]:  # filtered: an unfiltered read returns only the first 200
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=wanted)))
            return {a.key for a in found}

    import asyncio

    assert set(wanted) == asyncio.run(artifact_keys())
    with pytest.raises(LogGateFailed, match="5 ERROR-or-worse records remain"):
        logs_flow([log], fail_on="error")
    assert logs_flow([log], fail_on="error", ignore=["invalid manifest"])["gate"]["failed"] is False

    from odoops.audit import read_audit
    from odoops.inventory import load_inventory
    from odoops.runtime import audit_repository
    from tests.helpers import write_inventory

    inventory = write_inventory(tmp_path / "environments.yaml", {"production": {
        "stage": "production", "platform": "host", "database": {"dsn": "postgresql://odoo@127.0.0.1:1/acme"},
        "filestore": str(tmp_path / "filestore"), "backup": {"storage": "local"}, "logs": [log]}})
    with pytest.raises(LogGateFailed):
        logs_flow(["env:production"], fail_on="error", inventory=str(inventory))
    logs_flow([log], inventory=str(inventory))
    records = read_audit(audit_repository(load_inventory(inventory)).store)
    assert [(r["runbook"], r["environment"], r["outcome"]) for r in records] == [
        ("logs", "production", "gate failed"), ("logs", None, "success")]
    assert records[0]["details"]["levels"]["ERROR"] == 5
