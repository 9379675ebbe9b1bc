"""Anonymization of an Odoo database copy, and the proof that no original personal value is left.

Why it is built this way:

* **Set-based, inside PostgreSQL.** One ``UPDATE table SET col1 = expr1, col2 = expr2, ...`` per table,
  never row by row and no per-row plpgsql: on a million partners this is the difference between
  seconds and hours. Every replacement is a pure SQL expression of the original value and a secret key
  (``md5(key || value)`` indexes small word arrays), so it is deterministic: the same input gives the
  same output in every table and in every copy anonymized with the same key, and a different key gives
  different values. The key travels as a bound query parameter: it is never part of a query's text, a
  log line, the report or an exception. A table's plain secondary indexes are dropped for its UPDATE
  and built again in the same transaction (see ``_set_aside_indexes``): maintaining them row by row
  was most of the cost.
* **Odoo's stored computed fields are rewritten with their sources** (``complete_name``,
  ``email_normalized``, ``phone_sanitized``, ``commercial_company_name``, ``sanitized_acc_number``,
  ``mail_message.record_name`` and ``email_from``, users' signatures), in the same statement, so
  the copy stays consistent without running Odoo.
* **Old row versions are destroyed**: the touched tables get ``VACUUM (FULL, ANALYZE)`` (dead tuples and
  the planner's sampled values in ``pg_statistic`` would otherwise still hold the originals).
* **Proof, not hope.** Before anything changes, original values are sampled from the rule tables (held
  in memory only, each with the rule it came from); afterwards every text/varchar/jsonb column of every
  row of every table and every text attachment file is searched for them, one streamed pass per table
  with all needles (see ``_scan_table``), so the scan is linear in the database's text. Values the rules
  keep (the company, OdooBot) are kept wherever Odoo copies them and never searched for. Residue raises
  :class:`ResidueFound`, naming table, column, row count and rule, never a value; the copy is marked
  ``odoops.anonymization = residue`` and the report lists the row ids.
* **Filestore files are never modified in place** (a copy's filestore may share inodes with
  production's through hard links): scrubbed attachments point at a new file named by the SHA-1 of the
  new content, and old files no longer referenced are unlinked.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import logging
import os
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from odoops.errors import ConfigError, IntegrityError, OdoopsError, ToolFailed

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "deployments" / "anonymize-rules.yaml"
KEY_ENV = "ODOOPS_ANONYMIZE_KEY"
PASSWORD_ENV = "ODOOPS_ANONYMIZED_PASSWORD"

STRATEGIES = ("fake", "hash", "mask", "constant", "null", "keep", "derived", "password")
FAKE_KINDS = ("person_name", "first_name", "last_name", "company_name", "partner_name", "email",
              "email_formatted", "phone", "street", "street2", "city", "zip", "vat", "iban", "url", "text",
              "html", "code")
RECIPES = ("lower", "phone_sanitized", "sanitized_acc_number", "partner_complete_name",
           "commercial_company_name", "message_record_name", "message_email_from", "user_signature")
TEXT_TYPES = ("text", "character varying", "character", "jsonb")
ATTACHMENT_MODES = ("scrub", "drop", "keep")
DEFAULT_TEXT_MIMETYPES = ("text/plain", "text/csv", "text/html", "text/markdown", "text/xml", "text/x-vcard",
                          "text/vcard", "text/calendar", "text/tab-separated-values", "application/json",
                          "application/xml", "message/rfc822")
PLACEHOLDER = b"This file was removed by odoops anonymization.\n"
FAKE_DOMAIN = "example.invalid"

# Word lists of the generator: plausible, but chosen away from the most common real names so that a
# generated value rarely equals an original one (a needle made only of these words is not counted as
# residue: it cannot be told from a generated value, see _generated_shape).
FIRST_NAMES = ("Aino", "Brisa", "Caius", "Dagny", "Eero", "Fenna", "Gaute", "Hedda", "Ilkka", "Jorun", "Kalle",
               "Liesel", "Magni", "Noor", "Orla", "Pekka", "Quilla", "Runa", "Saku", "Tove", "Ulla", "Vidar",
               "Wilma", "Xavi", "Ylva", "Zeno", "Aurel", "Benedek", "Cosima", "Dorian", "Elin", "Frode",
               "Gisela", "Halvard", "Ines", "Jarl", "Kirsi", "Leif", "Maelle", "Nils", "Oona", "Piet",
               "Ragna", "Sigrun", "Tuomas", "Veikko", "Wendelin", "Yrsa")
LAST_NAMES = ("Aaltonen", "Brekke", "Castellvi", "Dahlgren", "Ekdahl", "Falkvik", "Grunewald", "Haugland",
              "Ilves", "Jokinen", "Kallio", "Lindroos", "Mikkelsen", "Nyberg", "Oksanen", "Pellinen", "Quist",
              "Rautio", "Sandvik", "Tammisto", "Uusitalo", "Vesterlund", "Wikstrom", "Ylonen", "Zetterlund",
              "Alderete", "Berglund", "Carrasquel", "Dunmore", "Esterhazy", "Fairweather", "Gjerde",
              "Hollander", "Isaksen", "Juvonen", "Kettunen", "Lagerkvist", "Moilanen", "Nordgren", "Ostrander")
COMPANY_WORDS = ("Alder", "Birchwood", "Cobalt", "Driftwood", "Fjord", "Glacier", "Heron", "Indigo", "Jadeite",
                 "Kelpie", "Larkspur", "Mistral", "Nimbus", "Obsidian", "Pebble", "Quillon", "Rowan", "Saffron",
                 "Tundra", "Umbra", "Verdant", "Wavecrest")
COMPANY_SUFFIXES = ("Works", "Labs", "Atelier", "Supply", "Systems", "Goods", "Collective", "Outfitters",
                    "Instruments", "Mercantile", "Fabrication", "Ventures")
STREET_WORDS = ("Lark", "Moss", "Fern", "Quarry", "Sorrel", "Thistle", "Wren", "Cairn", "Dune", "Heather",
                "Bracken", "Tarn", "Gorse", "Sedge", "Shingle", "Rookery")
STREET_TYPES = ("Lane", "Row", "Close", "Gate", "Walk", "Mews", "Terrace", "Crescent")
CITIES = ("Aldmoor", "Brackenridge", "Corriston", "Dunhallow", "Eskerby", "Fallowmere", "Glenmarrow",
          "Hollinsby", "Irongate", "Kestermouth", "Lowhaven", "Marrowdale", "Northwick Vale", "Oakhurst Mill",
          "Pendlebrook", "Quarrington", "Ravensmoor", "Stonebeck", "Thornwick", "Wyndholm")
LOREM = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod",
         "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim", "minim", "veniam",
         "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi", "aliquip", "commodo", "consequat")
SENTENCES = tuple(
    " ".join([LOREM[(7 * i + 3 * j) % len(LOREM)] for j in range(6 + i % 7)]).capitalize() + "."
    for i in range(64))
_VOCAB = {"w_sentence": SENTENCES, "w_first": FIRST_NAMES, "w_last": LAST_NAMES, "w_co1": COMPANY_WORDS, "w_co2": COMPANY_SUFFIXES,
          "w_street": STREET_WORDS, "w_stype": STREET_TYPES, "w_city": CITIES, "w_lorem": LOREM}
_VOCAB_TOKENS = {t for words in _VOCAB.values() for w in words for t in re.findall(r"[0-9a-z]+", w.lower())} | {
    "unit", "example", "invalid", "https", "www", "user", "p"}


class ResidueFound(IntegrityError):
    """Original personal values are still in the database or the filestore after anonymizing."""

    def __init__(self, message: str, report: AnonymizationReport) -> None:
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RowSelector:
    """Rows named by Odoo xml ids, by references from another table's column, or by column values."""

    xmlids: tuple[str, ...] = ()
    referenced_by: tuple[tuple[str, str], ...] = ()
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.xmlids or self.referenced_by or self.where)


@dataclass(frozen=True)
class ColumnRule:
    column: str
    strategy: str
    kind: str | None = None          # fake kind
    recipe: str | None = None        # derived recipe
    sources: tuple[str, ...] = ()    # derived: source columns
    value: Any = None                # constant
    keep_first: int = 1              # mask
    keep_last: int = 1               # mask
    optional: bool = False           # absent column: skip instead of error
    proof: bool = True               # sample its original values as needles for the residue scan
    keep_rows: RowSelector = RowSelector()
    only_rows: RowSelector = RowSelector()


@dataclass(frozen=True)
class TableRule:
    table: str
    columns: tuple[ColumnRule, ...]
    module: str | None = None
    required: bool = False
    keep_rows: RowSelector = RowSelector()


@dataclass(frozen=True)
class AttachmentRule:
    mode: str = "scrub"
    mimetypes: tuple[str, ...] = DEFAULT_TEXT_MIMETYPES


@dataclass(frozen=True)
class Rules:
    source: str
    tables: tuple[TableRule, ...]
    attachments: AttachmentRule = AttachmentRule()
    sample_rows: int = 500

    def only(self, *tables: str) -> Rules:
        """The same rules restricted to some tables (keeps their order); attachments are left alone."""
        return Rules(self.source, tuple(t for t in self.tables if t.table in tables), AttachmentRule("keep"),
                     self.sample_rows)


def _err(source: str, where: str, problem: str) -> ConfigError:
    return ConfigError(f"rules file {source}: {where}: {problem}")


def _selector(source: str, where: str, data: Any) -> RowSelector:
    if data is None:
        return RowSelector()
    if not isinstance(data, Mapping) or set(data) - {"xmlids", "referenced_by", "where"}:
        raise _err(source, where, "a row selector takes xmlids, referenced_by and where: fix the rule")
    refs = []
    for ref in data.get("referenced_by") or ():
        if not isinstance(ref, str) or ref.count(".") != 1:
            raise _err(source, where, f"referenced_by {ref!r} is not table.column: fix the rule")
        refs.append(tuple(ref.split(".")))
    conds = []
    for col, values in (data.get("where") or {}).items():
        if not isinstance(values, list):
            raise _err(source, where, f"where {col}: give a list of values")
        conds.append((str(col), tuple(str(v) for v in values)))
    xmlids = tuple(str(x) for x in data.get("xmlids") or ())
    for x in xmlids:
        if x.count(".") != 1:
            raise _err(source, where, f"xml id {x!r} is not module.name: fix the rule")
    return RowSelector(xmlids=xmlids, referenced_by=tuple(refs), where=tuple(conds))


_COLUMN_KEYS = {"strategy", "kind", "recipe", "from", "value", "keep_first", "keep_last", "optional", "proof",
                "keep_rows", "only_rows"}


def _column_rule(source: str, table: str, column: str, data: Any) -> ColumnRule:
    where = f"{table}.{column}"
    if isinstance(data, str):
        data = {"strategy": data}
    if not isinstance(data, Mapping):
        raise _err(source, where, "a column rule is a strategy name or a mapping with strategy: fix the rule")
    unknown = set(data) - _COLUMN_KEYS
    if unknown:
        raise _err(source, where, f"unknown option(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(_COLUMN_KEYS))}")
    strategy = data.get("strategy")
    if strategy is None and "strategy" in data:
        strategy = "null"  # YAML reads a bare `null` as None
    if strategy not in STRATEGIES:
        raise _err(source, where, f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    kind = data.get("kind")
    recipe = data.get("recipe")
    if strategy == "fake" and kind not in FAKE_KINDS:
        raise _err(source, where, f"unknown fake kind {kind!r}: use one of {', '.join(FAKE_KINDS)}")
    if strategy == "derived" and recipe not in RECIPES:
        raise _err(source, where, f"unknown derived recipe {recipe!r}: use one of {', '.join(RECIPES)}")
    if strategy == "constant" and "value" not in data:
        raise _err(source, where, "strategy constant needs a value: add value: ...")
    sources = data.get("from") or ()
    if isinstance(sources, str):
        sources = (sources,)
    if strategy == "derived" and recipe in ("lower", "phone_sanitized", "sanitized_acc_number") and not sources:
        raise _err(source, where, f"recipe {recipe} needs from: <source column(s)>")
    for opt in ("keep_first", "keep_last"):
        if not isinstance(data.get(opt, 1), int) or data.get(opt, 1) < 0:
            raise _err(source, where, f"{opt} must be a whole number >= 0")
    return ColumnRule(
        column=column, strategy=strategy, kind=kind, recipe=recipe, sources=tuple(str(s) for s in sources),
        value=data.get("value"), keep_first=data.get("keep_first", 1), keep_last=data.get("keep_last", 1),
        optional=bool(data.get("optional", False)), proof=bool(data.get("proof", True)),
        keep_rows=_selector(source, where, data.get("keep_rows")),
        only_rows=_selector(source, where, data.get("only_rows")),
    )


def parse_rules(data: Any, source: str = "<rules>") -> Rules:
    """Validate the structure of a rules document (the database is checked later, by ``anonymize``)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tables"), Mapping):
        raise _err(source, "top level", "expected a mapping with a 'tables' mapping: see deployments/anonymize-rules.yaml")
    unknown = set(data) - {"version", "tables", "attachments", "sample_rows"}
    if unknown:
        raise _err(source, "top level", f"unknown key(s) {', '.join(sorted(unknown))}: use tables, attachments, sample_rows")
    tables = []
    for table, tdata in data["tables"].items():
        if not isinstance(tdata, Mapping) or not isinstance(tdata.get("columns"), Mapping):
            raise _err(source, str(table), "a table rule needs a 'columns' mapping: fix the rule")
        extra = set(tdata) - {"columns", "module", "required", "keep_rows"}
        if extra:
            raise _err(source, str(table), f"unknown option(s) {', '.join(sorted(extra))}: use columns, module, required, keep_rows")
        cols = tuple(_column_rule(source, str(table), str(c), d) for c, d in tdata["columns"].items())
        tables.append(TableRule(table=str(table), columns=cols, module=tdata.get("module"),
                                required=bool(tdata.get("required", False)),
                                keep_rows=_selector(source, str(table), tdata.get("keep_rows"))))
    att = data.get("attachments") or {}
    mode = att.get("mode", "scrub")
    if mode not in ATTACHMENT_MODES:
        raise _err(source, "attachments", f"unknown mode {mode!r}: use one of {', '.join(ATTACHMENT_MODES)}")
    mimetypes = tuple(att.get("mimetypes") or DEFAULT_TEXT_MIMETYPES)
    sample_rows = data.get("sample_rows", 500)
    if not isinstance(sample_rows, int) or sample_rows < 1:
        raise _err(source, "sample_rows", "must be a whole number >= 1")
    return Rules(source=source, tables=tuple(tables), attachments=AttachmentRule(mode, mimetypes),
                 sample_rows=sample_rows)


def load_rules(path: str | Path | None = None) -> Rules:
    """Read a rules YAML file (default: the Odoo rule set in deployments/anonymize-rules.yaml)."""
    path = Path(path) if path else DEFAULT_RULES
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"rules file {path} not found: give an existing file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"rules file {path} is not valid YAML{at}: fix its syntax") from None
    return parse_rules(data, source=path.name)


def key_from_env(var: str = KEY_ENV) -> str:
    """The anonymization key; never logged, stored or put in a report.

    A configured key (``ODOOPS_ANONYMIZE_KEY``) keeps pseudonyms stable from one run to the next. Without
    one, a random key made for this run alone: pseudonyms are consistent within the run (across tables),
    and since the key is forgotten when the run ends, nobody can map them back or repeat them.
    """
    key = os.environ.get(var, "")
    return key or secrets.token_urlsafe(32)


def key_source(var: str = KEY_ENV) -> str:
    """For the report and the audit record: ``configured`` or ``one-time`` (never the key)."""
    return "configured" if os.environ.get(var) else "one-time"


ONE_TIME_KEY_NOTE = (f"no {KEY_ENV} configured: this run used a random one-time key (pseudonyms consistent within "
                     f"the run, irreversible, never stored); set {KEY_ENV} for pseudonyms that stay the same "
                     "across runs")


def odoo_password_hash(password: str, rounds: int = 600_000, salt: bytes | None = None) -> str:
    """The passlib ``pbkdf2_sha512`` hash Odoo stores in ``res_users.password``, computed with hashlib."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, rounds)

    def ab64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii").rstrip("=").replace("+", ".")

    return f"$pbkdf2-sha512${rounds}${ab64(salt)}${ab64(digest)}"


# ------------------------------------------------------------------------------------------ reports


@dataclass
class AttachmentReport:
    mode: str
    attachments: int = 0        # text attachments scrubbed or deleted
    files_written: int = 0      # new files in the filestore
    files_removed: int = 0      # old files unlinked (no attachment references them any more)


@dataclass
class AnonymizationReport:
    """What was replaced (counts per table/column), what was skipped, and the residue proof."""

    updated: list[tuple[str, str, int]] = field(default_factory=list)   # (table, column, values replaced)
    rows: dict[str, int] = field(default_factory=dict)                  # table -> rows updated
    skipped: list[tuple[str, str]] = field(default_factory=list)        # (table or table.column, reason)
    attachments: AttachmentReport | None = None
    needles: int = 0             # distinct original values searched for
    needles_public: int = 0      # left out: also in installed modules' own records (views, templates)
    needles_generated: int = 0   # left out: indistinguishable from generated values
    needles_kept: int = 0        # left out: values of rows the rules keep on purpose (company, OdooBot)
    residue: list[tuple[str, str, int]] = field(default_factory=list)  # (table, column, rows) / ("filestore", file, n)
    residue_found: list[Residue] = field(default_factory=list)          # the same, with row ids and the rules
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.residue

    def as_dict(self) -> dict[str, Any]:
        return {
            "updated": [{"table": t, "column": c, "values": n} for t, c, n in self.updated],
            "rows": dict(self.rows), "skipped": [{"what": w, "reason": r} for w, r in self.skipped],
            "attachments": vars(self.attachments) if self.attachments else None,
            "needles": self.needles, "needles_public": self.needles_public,
            "needles_generated": self.needles_generated, "needles_kept": self.needles_kept,
            "residue": [{"table": r.table, "column": r.column, "count": r.rows, "rules": sorted(r.rules),
                         "row_ids": list(r.row_ids), "row_ids_complete": len(r.row_ids) == r.rows}
                        for r in self.residue_found] or
                       [{"table": t, "column": c, "count": n} for t, c, n in self.residue],
            "seconds": dict(self.seconds),
        }

    def write(self, path: str | Path) -> Path:
        """The report as JSON (counts, row ids, rule names, timings; never a value), for ``--report FILE``."""
        import json

        target = Path(path)
        try:
            target.write_text(json.dumps({"clean": self.clean, **self.as_dict()}, indent=1, default=str) + "\n",
                              encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the report to {target}: {exc.strerror}; give a writable --report path") \
                from None
        return target


# --------------------------------------------------------------------------------- SQL generation


def _id(name: str) -> sql.Identifier:
    return sql.Identifier(name)


class _Params:
    """Named query parameters; every statement carries the key and the generator's word lists."""

    def __init__(self, key: str) -> None:
        # kept_emails: addresses of kept rows, filled in once the plans are made (see _anonymize)
        self.values: dict[str, Any] = {"key": key, "kept_emails": [], **{k: list(v) for k, v in _VOCAB.items()}}
        self._n = 0

    def add(self, value: Any) -> sql.Composable:
        self._n += 1
        name = f"p{self._n}"
        self.values[name] = value
        return sql.Placeholder(name)


class _Hashes:
    """The keyed hashes one UPDATE needs, computed once per row and shared by every expression.

    ``decode(md5(key || value), 'hex')`` of each distinct source value becomes a column of a fenced
    (``OFFSET 0``) sub-select, so a value's hash is computed once however many fake parts and derived
    columns use it. Expressions over per-element values (jsonb translations) hash inline.
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.sources: dict[str, tuple[str, sql.Composable]] = {}
        self.inline = 0

    def ref(self, v: sql.Composable) -> sql.Composable:
        raw = sql.SQL("decode(md5({} || {}), 'hex')").format(sql.Placeholder("key"), v)
        if self.inline:
            return raw
        text = v.as_string(self.conn)
        if text not in self.sources:
            self.sources[text] = (f"odoops_h{len(self.sources) + 1}", raw)
        return sql.SQL("odoops_h.{}").format(_id(self.sources[text][0]))

    def select(self) -> sql.Composable:
        if not self.sources:
            return sql.SQL("(SELECT 1 OFFSET 0) odoops_h")
        return sql.SQL("(SELECT {} OFFSET 0) odoops_h").format(
            sql.SQL(", ").join(sql.SQL("{} AS {}").format(raw, _id(name)) for name, raw in self.sources.values()))


_HASHES: list[_Hashes] = []  # the registry of the UPDATE being built (a stack; planning is single-threaded)


def _h(v: sql.Composable) -> sql.Composable:
    """16 keyed bytes of v (bytea)."""
    if _HASHES:
        return _HASHES[-1].ref(v)
    return sql.SQL("decode(md5({} || {}), 'hex')").format(sql.Placeholder("key"), v)


def _byte(h: sql.Composable, pos: int) -> sql.Composable:
    return sql.SQL("get_byte({}, {})").format(h, sql.Literal(pos % 16))


def _pick(words: str, h: sql.Composable, pos: int) -> sql.Composable:
    return sql.SQL("({}::text[])[1 + mod({}, {})]").format(
        sql.Placeholder(words), _byte(h, pos), sql.Literal(len(_VOCAB[words])))


def _digits(h: sql.Composable, pos: int, n: int) -> sql.Composable:
    """n (<= 9) decimal digits from 4 bytes of h starting at pos."""
    b = [_byte(h, pos + i) for i in range(4)]
    return sql.SQL("lpad(mod(({}::bigint << 24) | ({} << 16) | ({} << 8) | {}, {})::text, {}, '0')").format(
        *b, sql.Literal(10 ** n), sql.Literal(n))


def _hex(h: sql.Composable, start: int, n: int) -> sql.Composable:
    return sql.SQL("substr(encode({}, 'hex'), {}, {})").format(h, sql.Literal(start), sql.Literal(n))


def _cat(*parts: sql.Composable | str) -> sql.Composable:
    return sql.SQL("(") + sql.SQL(" || ").join(sql.Literal(p) if isinstance(p, str) else p for p in parts) + sql.SQL(")")


def _fake_email_of(v: sql.Composable) -> sql.Composable:
    h = _h(sql.SQL("lower(btrim({}))").format(v))
    return _cat(sql.SQL("lower({})").format(_pick("w_first", h, 0)), ".",
                sql.SQL("lower({})").format(_pick("w_last", h, 1)), ".", _hex(h, 5, 8), "@" + FAKE_DOMAIN)


def _person(v: sql.Composable) -> sql.Composable:
    h = _h(v)
    return _cat(_pick("w_first", h, 0), " ", _pick("w_last", h, 1))


def _company(v: sql.Composable) -> sql.Composable:
    h = _h(v)
    return _cat(_pick("w_co1", h, 0), " ", _pick("w_co2", h, 1))


def _lorem(v: sql.Composable, sentences: int = 1) -> sql.Composable:
    h = _h(v)
    parts: list[sql.Composable | str] = [_pick("w_sentence", h, 0)]
    for i in range(1, sentences):
        parts += [" ", _pick("w_sentence", h, i)]
    return _cat(*parts)


def fake_expr(kind: str, v: sql.Composable) -> sql.Composable:
    """SQL expression of a plausible fake value of ``kind`` for the original text ``v``."""
    if kind == "person_name":
        return _person(v)
    if kind == "company_name":
        return _company(v)
    if kind == "partner_name":
        return sql.SQL("CASE WHEN coalesce({}, false) THEN {} ELSE {} END").format(
            _id("is_company"), _company(v), _person(v))
    if kind == "email":  # a kept row's address (the company's, OdooBot's) stays, as it does in its own row
        return sql.SQL("CASE WHEN lower(btrim({v})) = ANY({k}::text[]) THEN {v} ELSE {f} END").format(
            v=v, k=sql.Placeholder("kept_emails"), f=_fake_email_of(v))
    if kind == "email_formatted":
        name = sql.SQL("btrim(substring({} from '^(.*)<'), ' \"''')").format(v)
        addr = sql.SQL("substring({} from '<([^>]*)>')").format(v)
        # kept only when it is that one address: a list with a kept address in it is still rewritten
        kept = sql.SQL("{v} !~ '@.*@' AND lower(btrim(coalesce({a}, {v}))) = ANY({k}::text[])").format(
            a=addr, v=v, k=sql.Placeholder("kept_emails"))
        return sql.SQL("CASE WHEN {kept} THEN {v} WHEN {v} ~ '<[^>]*@[^>]*>' THEN {fmt} ELSE {plain} END").format(
            kept=kept, v=v, fmt=_cat('"', _person(name), '" <', _fake_email_of(addr), ">"), plain=_fake_email_of(v))
    if kind == "text":
        return _lorem(v)
    if kind == "html":
        return _cat("<p>", _lorem(v, 2), "</p>")
    h = _h(v)
    if kind == "first_name":
        return _pick("w_first", h, 0)
    if kind == "last_name":
        return _pick("w_last", h, 1)
    if kind == "phone":
        return _cat("+999 ", _digits(h, 0, 3), " ", _digits(h, 4, 3), " ", _digits(h, 8, 4))
    if kind == "street":
        return _cat(sql.SQL("(1 + {})::text").format(_byte(h, 0)), " ", _pick("w_street", h, 1), " ",
                    _pick("w_stype", h, 2))
    if kind == "street2":
        return _cat("Unit ", sql.SQL("(1 + mod({}, 90))::text").format(_byte(h, 0)))
    if kind == "city":
        return _pick("w_city", h, 0)
    if kind == "zip":
        return _digits(h, 0, 5)
    if kind == "vat":
        return _cat(sql.SQL("CASE WHEN {} ~ '^[A-Za-z]{{2}}' THEN upper(left({}, 2)) ELSE '' END").format(v, v),
                    _digits(h, 0, 5), _digits(h, 4, 5))
    if kind == "iban":
        cc = sql.SQL("CASE WHEN {} ~ '^[A-Za-z]{{2}}' THEN upper(left({}, 2)) ELSE 'XX' END").format(v, v)
        return _cat(cc, _digits(h, 0, 2), " ", _digits(h, 4, 4), " ", _digits(h, 8, 4), " ", _digits(h, 12, 4))
    if kind == "url":
        return _cat("https://www.", sql.SQL("lower({})").format(_pick("w_co1", h, 0)), "-", _hex(h, 5, 6),
                    "." + FAKE_DOMAIN)
    if kind == "code":
        return sql.SQL("upper({})").format(_hex(h, 1, 10))
    raise ValueError(kind)


def hash_expr(v: sql.Composable) -> sql.Composable:
    """Keyed pseudonym, 64 bits: 'p' + 16 hex; e-mail addresses keep an e-mail shape."""
    h = _h(sql.SQL("CASE WHEN {v} LIKE '%%@%%' THEN lower(btrim({v})) ELSE {v} END").format(v=v))
    return sql.SQL("CASE WHEN {v} LIKE '%%@%%' THEN {e} ELSE {p} END").format(
        v=v, e=_cat("p", _hex(h, 1, 16), "@" + FAKE_DOMAIN), p=_cat("p", _hex(h, 1, 16)))


def mask_expr(v: sql.Composable, first: int, last: int) -> sql.Composable:
    return sql.SQL(
        "CASE WHEN length({v}) <= {n} THEN repeat('*', length({v})) "
        "ELSE left({v}, {f}) || repeat('*', length({v}) - {n}) || right({v}, {l}) END"
    ).format(v=v, f=sql.Literal(first), l=sql.Literal(last), n=sql.Literal(first + last))


# ---------------------------------------------------------------------------------- the database


@dataclass
class _Column:
    name: str
    type: str
    unique: bool


def _columns(conn: psycopg.Connection, table: str) -> dict[str, _Column]:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, NULL), EXISTS ("
        "  SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indnatts = 1"
        "   AND i.indkey[0] = a.attnum AND i.indpred IS NULL) "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
        "AND NOT a.attisdropped", (table,)).fetchall()
    return {name: _Column(name, typ, uniq) for name, typ, uniq in rows}


def _set_aside_indexes(conn: psycopg.Connection, table: str) -> list[str]:
    """Drop the table's plain secondary indexes before its bulk UPDATE; return how to build them again.

    Every column the anonymizer replaces sits in some index, so no update is HOT and each new row version
    is inserted into every index one key at a time: two thirds of a bare UPDATE's time on Odoo's
    ``res_partner``. Building each index once afterwards costs a fraction of that. Only indexes that
    nothing else relies on are set aside (not unique, no constraint, valid, default tablespace, not the
    CLUSTER index, no comment, no per-column statistics, nothing depending on them), and only inside
    the UPDATE's transaction: a failure or a crash puts them back with everything else.
    """
    rows = conn.execute(
        "SELECT ns.nspname, ic.relname, pg_get_indexdef(i.indexrelid) "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
        "JOIN pg_namespace ns ON ns.oid = ic.relnamespace JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE t.relnamespace = 'public'::regnamespace AND t.relname = %s AND t.relkind = 'r' "
        "AND NOT t.relispartition AND NOT i.indisunique AND NOT i.indisexclusion AND NOT i.indisclustered "
        "AND i.indisvalid AND i.indisready AND i.indislive AND ic.reltablespace = 0 "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass "
        "                AND d.refobjid = i.indexrelid) "
        "AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.classoid = 'pg_class'::regclass "
        "                AND d.objoid = i.indexrelid) "
        "AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0) "
        "ORDER BY ic.relname", (table,)).fetchall()
    for schema, name, _ in rows:
        conn.execute(sql.SQL("DROP INDEX {}.{}").format(_id(schema), _id(name)))
    return [definition for _, _, definition in rows]


def _installed(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM ir_module_module WHERE state = 'installed'")}


def _selector_ids(conn: psycopg.Connection, table: str, sel: RowSelector, source: str) -> list[int]:
    ids: set[int] = set()
    if sel.xmlids:
        pairs = [x.split(".") for x in sel.xmlids]
        rows = conn.execute(
            "SELECT d.res_id FROM ir_model_data d JOIN ir_model m ON m.model = d.model "
            "WHERE replace(m.model, '.', '_') = %s AND (d.module, d.name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            (table, [p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
        ids.update(r[0] for r in rows)
    for ref_table, ref_col in sel.referenced_by:
        cols = _columns(conn, ref_table)
        if not cols:
            continue
        if ref_col not in cols:
            raise _err(source, table, f"referenced_by {ref_table}.{ref_col}: column does not exist: fix the rule")
        q = sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL").format(_id(ref_col), _id(ref_table), _id(ref_col))
        ids.update(r[0] for r in conn.execute(q))
    return sorted(ids)


def _selector_cond(conn: psycopg.Connection, table: str, cols: dict[str, _Column], sel: RowSelector,
                   params: _Params, source: str) -> sql.Composable | None:
    if not sel:
        return None
    parts: list[sql.Composable] = []
    if sel.xmlids or sel.referenced_by:
        if "id" not in cols:
            raise _err(source, table, "xmlids/referenced_by need an id column: fix the rule")
        parts.append(sql.SQL("{} = ANY({}::int[])").format(_id("id"), params.add(_selector_ids(conn, table, sel, source))))
    for col, values in sel.where:
        if col not in cols:
            raise _err(source, table, f"where column {table}.{col} does not exist: fix the rule or remove it")
        parts.append(sql.SQL("{}::text = ANY({}::text[])").format(_id(col), params.add(list(values))))
    return sql.SQL("(") + sql.SQL(" OR ").join(parts) + sql.SQL(")")


@dataclass
class _Plan:
    """One table's UPDATE, ready to run, and what it needs for sampling."""

    rule: TableRule
    cols: dict[str, _Column]
    assignments: list[tuple[str, sql.Composable]]
    where: sql.Composable | None           # rows to update (None: all)
    column_cond: dict[str, sql.Composable]  # column -> condition under which it is replaced
    params: _Params
    proof_columns: list[tuple[str, str]]    # (column, how to read needles: "value" | "free")
    hashes: _Hashes | None = None

    def update(self) -> sql.Composable:
        """UPDATE t SET (c1, ...) = (SELECT e1, ... FROM (SELECT <hashes> OFFSET 0) odoops_h) [WHERE ...]."""
        assert self.hashes is not None
        return sql.SQL("UPDATE {} SET ({}) = (SELECT {} FROM {}) {}").format(
            _id(self.rule.table), sql.SQL(", ").join(_id(c) for c, _ in self.assignments),
            sql.SQL(", ").join(e for _, e in self.assignments), self.hashes.select(),
            sql.SQL("WHERE {}").format(self.where) if self.where is not None else sql.SQL(""))


def _plan_table(conn: psycopg.Connection, rule: TableRule, cols: dict[str, _Column], key: str,
                password_hash: str | None, source: str) -> _Plan:
    params = _Params(key)
    table = rule.table
    active: list[ColumnRule] = []
    for cr in rule.columns:
        if cr.column not in cols:
            if cr.optional:
                continue
            raise _err(source, table, f"column {table}.{cr.column} does not exist: fix the rule or remove it")
        col = cols[cr.column]
        is_text = col.type in TEXT_TYPES
        if cr.strategy in ("fake", "hash", "mask", "derived", "password") and not is_text:
            raise _err(source, table, f"column {table}.{cr.column} is {col.type}: strategy {cr.strategy} needs a "
                                      "text column, use null, constant or keep")
        if col.unique and cr.strategy in ("fake", "mask", "constant"):
            raise _err(source, table, f"column {table}.{cr.column} is unique: strategy {cr.strategy} can collide, "
                                      "use hash")
        if cr.strategy == "fake" and cr.kind == "partner_name" and "is_company" not in cols:
            raise _err(source, table, f"{table}.{cr.column}: kind partner_name needs an is_company column")
        if cr.sources and not any(src in cols for src in cr.sources):
            raise _err(source, table, f"{table}.{cr.column}: source column(s) {', '.join(cr.sources)} do not exist: "
                                      "fix the rule")
        active.append(cr)

    plain = {cr.column: cr for cr in active if cr.strategy not in ("keep", "derived")}

    def new(col: str) -> sql.Composable:
        """The new value of a column of this row (its replacement expression, or the column itself)."""
        cr = plain.get(col)
        return _wrap(cr) if cr else _id(col)

    def typed(col: str, v_of) -> sql.Composable:
        """Apply a text->text function to a column, value by value for jsonb (Odoo translations)."""
        ident = _id(col)
        if cols[col].type == "jsonb":
            if _HASHES:
                _HASHES[-1].inline += 1  # e.value lives inside the jsonb sub-select: hash it there
            try:
                per_value = v_of(sql.SQL("e.value"))
            finally:
                if _HASHES:
                    _HASHES[-1].inline -= 1
            return sql.SQL(
                "CASE WHEN jsonb_typeof({c}) = 'object' THEN coalesce((SELECT jsonb_object_agg(e.key, "
                "CASE WHEN e.value IS NULL OR e.value = '' THEN e.value ELSE {x} END) FROM jsonb_each_text({c}) e), {c}) "
                "WHEN jsonb_typeof({c}) = 'string' THEN to_jsonb({y}) ELSE {c} END"
            ).format(c=ident, x=per_value, y=v_of(sql.SQL("({} #>> '{{}}')").format(ident)))
        return sql.SQL("CASE WHEN {c} IS NULL OR {c} = '' THEN {c} ELSE {x} END").format(c=ident, x=v_of(ident))

    def base_expr(cr: ColumnRule) -> sql.Composable:
        c = cr.column
        if cr.strategy == "fake":
            return typed(c, lambda v: fake_expr(cr.kind, v))
        if cr.strategy == "hash":
            return typed(c, hash_expr)
        if cr.strategy == "mask":
            return typed(c, lambda v: mask_expr(v, cr.keep_first, cr.keep_last))
        # CASE WHEN false THEN <column> ...: gives NULL and parameters the column's own type
        if cr.strategy == "constant":
            return sql.SQL("CASE WHEN false THEN {} ELSE {} END").format(_id(c), params.add(cr.value))
        if cr.strategy == "null":
            return sql.SQL("CASE WHEN false THEN {} END").format(_id(c))
        if cr.strategy == "password":
            return sql.SQL("CASE WHEN false THEN {} ELSE {} END").format(_id(c), params.add(password_hash))
        if cr.strategy == "derived":
            return _recipe(conn, cr, table, cols, new, params)
        raise ValueError(cr.strategy)

    column_cond: dict[str, sql.Composable] = {}

    def _wrap(cr: ColumnRule) -> sql.Composable:
        expr = base_expr(cr)
        keep = _selector_cond(conn, table, cols, cr.keep_rows, params, source)
        only = _selector_cond(conn, table, cols, cr.only_rows, params, source)
        conds = []
        if only is not None:
            conds.append(only)
        if keep is not None:
            conds.append(sql.SQL("NOT coalesce({}, false)").format(keep))
        if conds:
            cond = sql.SQL(" AND ").join(conds)
            column_cond[cr.column] = cond
            expr = sql.SQL("CASE WHEN {} THEN {} ELSE {} END").format(cond, expr, _id(cr.column))
        return expr

    hashes = _Hashes(conn)
    _HASHES.append(hashes)
    try:
        assignments = [(cr.column, _wrap(cr)) for cr in active if cr.strategy != "keep"]
    finally:
        _HASHES.pop()
    where = _selector_cond(conn, table, cols, rule.keep_rows, params, source)
    if where is not None:
        where = sql.SQL("NOT coalesce({}, false)").format(where)
    proof = [(cr.column, "free" if (cr.kind in ("text", "html") or cols[cr.column].type == "text"
                                    or cr.strategy in ("null", "constant")) else "value")
             for cr in active if cr.proof and cr.strategy not in ("keep", "password") and cols[cr.column].type in TEXT_TYPES]
    return _Plan(rule, cols, assignments, where, column_cond, params, proof, hashes)


def _recipe(conn: psycopg.Connection, cr: ColumnRule, table: str, cols: dict[str, _Column], new,
            params: _Params) -> sql.Composable:
    """Odoo's stored computed fields, recomputed from the new values of their sources."""
    me = _id(cr.column)
    r = cr.recipe

    def need(*names: str) -> None:
        missing = [n for n in names if n not in cols]
        if missing:
            raise ConfigError(f"recipe {r} for {table}.{cr.column} needs column(s) {', '.join(missing)} in {table}: "
                              "fix the rule")

    if r == "lower":
        return sql.SQL("CASE WHEN {me} IS NULL THEN NULL ELSE lower(btrim({s})) END").format(
            me=me, s=new(next(s for s in cr.sources if s in cols)))
    if r == "phone_sanitized":
        src = sql.SQL("coalesce(") + sql.SQL(", ").join(
            sql.SQL("nullif({}, '')").format(new(s)) for s in cr.sources if s in cols) + sql.SQL(")")
        return sql.SQL("CASE WHEN {me} IS NULL THEN NULL ELSE regexp_replace({s}, '[^0-9+]', '', 'g') END").format(
            me=me, s=src)
    if r == "sanitized_acc_number":
        return sql.SQL("CASE WHEN {me} IS NULL THEN NULL ELSE upper(regexp_replace({s}, '\\W+', '', 'g')) END").format(
            me=me, s=new(next(s for s in cr.sources if s in cols)))
    if r in ("partner_complete_name", "commercial_company_name"):
        need("name", "is_company", "parent_id", "commercial_company_name", "company_name")
        kept = sql.Placeholder("kept_names")  # filled in by _kept_partner_names
        params.values.setdefault("kept_names", [])
        ccn = _id("commercial_company_name")
        new_ccn = sql.SQL("CASE WHEN {c} IS NULL OR {c} = '' OR {c} = ANY({k}::text[]) THEN {c} ELSE {f} END").format(
            c=ccn, k=kept, f=_company(ccn))
        if r == "commercial_company_name":
            return new_ccn
        name = _id("name")
        old_prefix = sql.SQL("left({me}, greatest(length({me}) - length(coalesce({n}, '')) - 2, 0))").format(me=me, n=name)
        prefix = sql.SQL("CASE WHEN {c} IS NOT NULL AND {c} <> '' THEN {nc} "
                         "WHEN {p} = ANY({k}::text[]) THEN {p} ELSE {fp} END").format(
            c=ccn, nc=new_ccn, p=old_prefix, k=kept, fp=_person(old_prefix))
        return sql.SQL(
            "CASE WHEN {me} IS NULL THEN NULL "
            "WHEN NOT coalesce({ic}, false) AND ({pid} IS NOT NULL OR coalesce({cn}, '') <> '') "
            " AND position(', ' in {me}) > 0 THEN {prefix} || ', ' || coalesce({nn}, '') "
            "ELSE coalesce({nn}, {me}) END").format(
            me=me, ic=_id("is_company"), pid=_id("parent_id"), cn=_id("company_name"), prefix=prefix, nn=new("name"))
    if r == "message_record_name":
        need("model", "res_id")
        channel = sql.SQL("")
        for model, ctable in (("discuss.channel", "discuss_channel"), ("mail.channel", "mail_channel")):
            if "name" in _columns(conn, ctable):  # the channel's own (possibly anonymized) name
                channel = sql.SQL("WHEN model = {m} THEN coalesce((SELECT c.name FROM {t} c WHERE c.id = res_id), {f}) ").format(
                    m=sql.Literal(model), t=_id(ctable), f=_lorem(me))
        return sql.SQL(
            "CASE WHEN {me} IS NULL OR {me} = '' THEN {me} "
            "WHEN model = 'res.partner' THEN coalesce((SELECT p.complete_name FROM res_partner p WHERE p.id = res_id), {f}) "
            "WHEN model = 'res.users' THEN coalesce((SELECT p.name FROM res_users u JOIN res_partner p "
            " ON p.id = u.partner_id WHERE u.id = res_id), {f}) {channel}"
            "ELSE {f} END").format(me=me, f=_lorem(me), channel=channel)
    if r == "message_email_from":
        need("author_id")
        return sql.SQL(
            "CASE WHEN {me} IS NULL OR {me} = '' THEN {me} "
            "ELSE coalesce((SELECT '\"' || p.name || '\" <' || p.email || '>' FROM res_partner p "
            " WHERE p.id = author_id AND p.email IS NOT NULL AND p.email <> '' AND p.name IS NOT NULL), {f}) END"
        ).format(me=me, f=fake_expr("email_formatted", me))
    if r == "user_signature":
        need("partner_id")
        return sql.SQL(
            "CASE WHEN {me} IS NULL OR {me} = '' THEN {me} "
            "ELSE '<span data-o-mail-quote=\"1\">-- <br data-o-mail-quote=\"1\">' || coalesce(("
            " SELECT replace(replace(replace(p.name, '&', '&amp;'), '<', '&lt;'), '>', '&gt;') "
            " FROM res_partner p WHERE p.id = partner_id), '') || '</span>' END").format(me=me)
    raise ValueError(r)


def _kept_partner_names(conn: psycopg.Connection, plan: _Plan) -> None:
    """Names of kept res_partner rows: their children keep them in complete_name/commercial_company_name."""
    if "kept_names" not in plan.params.values or plan.where is None:
        return
    q = sql.SQL("SELECT DISTINCT name FROM {} WHERE name IS NOT NULL AND NOT ({})").format(
        _id(plan.rule.table), plan.where)
    plan.params.values["kept_names"] = [r[0] for r in conn.execute(q, plan.params.values)]


# ------------------------------------------------------------------------------------ the needles

_EMAIL_RE = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE_RE = re.compile(r"\+?\(?\d[\d\s().-]{6,}\d")
_TAG_RE = re.compile(r"<[^>]+>")
_TOKEN_RE = re.compile(r"[^0-9a-z]+")
_PSEUDONYM = re.compile(r"^p[0-9a-f]{16}$")
_QUOTED_NAME_RE = re.compile(r"\"([^\"<>]{1,200})\"\s*<[^>]*@")  # "Name" <address>, as Odoo formats senders
_EDGE = " \t\"'`-,;:.!?()[]{}<>|*/\\"  # punctuation a copied value picks up at its ends (quotes, "-- ", commas)


def _needles_of(value: Any, how: str) -> Iterable[str]:
    if value is None:
        return
    if isinstance(value, dict):
        for v in value.values():
            yield from _needles_of(v, how)
        return
    text = str(value)
    if how == "free":
        yield from _EMAIL_RE.findall(text)
        yield from _QUOTED_NAME_RE.findall(text)  # a formatted address inside free text: its name part too
        yield from (p.strip() for p in _PHONE_RE.findall(text))
        plain = " ".join(_TAG_RE.sub(" ", text).split())
        if len(plain) <= 200:
            yield plain
        return
    if "<" in text and "@" in text:  # "Name" <address>: its parts prove as much as the whole
        yield from _EMAIL_RE.findall(text)
        name = text.split("<", 1)[0].strip().strip('"\' ')
        if name:
            yield name
        return
    yield text.strip()


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN_RE.split(text.lower()) if t]


def _generated_shape(needle: str) -> bool:
    """True when a value could have come from the generator (so it cannot be proven original)."""
    if FAKE_DOMAIN in needle or needle.startswith("+999 ") or "***" in needle or _PSEUDONYM.match(needle):
        return True
    words = [t for t in _tokens(needle) if not t.isdigit()]
    return bool(words) and all(t in _VOCAB_TOKENS for t in words)


def _prepare_needles(raw: Iterable[str]) -> set[str]:
    """Lower-cased, whitespace-normalized, without the punctuation at their ends (a shorter needle is found
    wherever the longer one was: the proof only gets stricter)."""
    out = set()
    for n in raw:
        n = " ".join(n.split()).lower().strip(_EDGE)
        if len(n) >= 4 and _tokens(n):
            out.add(n)
    return out


def _sample(conn: psycopg.Connection, plan: _Plan, n: int) -> dict[str, set[str]]:
    """Original values of the columns about to be replaced, from up to n random rows (memory only),
    each with the rule columns (``table.column``) it was sampled from."""
    if not plan.proof_columns:
        return {}
    exprs = []
    for col, _ in plan.proof_columns:
        cond = plan.column_cond.get(col)
        ident = _id(col)
        exprs.append(sql.SQL("CASE WHEN {} THEN {} END").format(cond, ident) if cond is not None else ident)
    q = sql.SQL("SELECT {} FROM {} {} ORDER BY random() LIMIT {}").format(
        sql.SQL(", ").join(exprs), _id(plan.rule.table),
        sql.SQL("WHERE {}").format(plan.where) if plan.where is not None else sql.SQL(""), sql.Literal(n))
    found: dict[str, set[str]] = {}
    for row in conn.execute(q, plan.params.values):
        for (col, how), value in zip(plan.proof_columns, row, strict=True):
            for needle in _prepare_needles(_needles_of(value, how)):
                found.setdefault(needle, set()).add(f"{plan.rule.table}.{col}")
    return found


def _anchors(needles: Iterable[str]) -> dict[str, str]:
    """Each needle's anchor: the word it is looked up by (any of its words: a needle is matched as whole
    words), not a word the generator writes (anonymized text is full of those: "example", "lorem"), long,
    not only digits (numbers are everywhere) and rare among the needles."""
    needles = list(needles)
    freq = Counter(t for n in needles for t in set(_tokens(n)))
    return {n: min(_tokens(n), key=lambda t: (t in _VOCAB_TOKENS, len(t) < 4, t.isdigit(), freq[t], -len(t)))
            for n in needles}


def _kept_values(conn: psycopg.Connection, plan: _Plan) -> list[str]:
    """Values the rules deliberately keep (kept rows, rows outside only_rows), lower-cased, one per item.

    E.g. the company's own name and address, OdooBot's name and e-mail: they stay in the copy, so they
    are kept everywhere Odoo copies them and never searched for.
    """
    cols = [c for c, _ in plan.proof_columns]
    if not cols:
        return []
    row_kept = [sql.SQL("NOT ({})").format(plan.where)] if plan.where is not None else []
    exprs = []
    for col in cols:
        kept = list(row_kept)
        if col in plan.column_cond:
            kept.append(sql.SQL("NOT coalesce({}, false)").format(plan.column_cond[col]))
        if not kept:
            continue
        exprs.append(sql.SQL("CASE WHEN {} THEN {}::text END").format(sql.SQL(" OR ").join(kept), _id(col)))
    if not exprs:
        return []
    conds = row_kept + [sql.SQL("NOT coalesce({}, false)").format(c) for c in plan.column_cond.values()]
    q = sql.SQL("SELECT DISTINCT lower(v) FROM {} CROSS JOIN LATERAL unnest(ARRAY[{}]) AS k(v) "
                "WHERE ({}) AND v IS NOT NULL AND v <> ''").format(
        _id(plan.rule.table), sql.SQL(", ").join(exprs), sql.SQL(" OR ").join(conds))
    return [r[0] for r in conn.execute(q, plan.params.values)]


class _KeptSet:
    """The kept values, and the test "is this needle (a part of) a kept value?".

    A needle is kept when it occurs in a kept value as text, or when its words occur in one, in order, as
    whole words: a copy of a kept value picks up quotes and punctuation ('"OdooBot"' in a text column
    quoting '"OdooBot" <odoobot@example.com>') and must not be taken for an original left behind.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted(set(values))
        self.text = "\n".join(self.values)
        self.words = "\n".join(" " + " ".join(_tokens(v)) + " " for v in self.values)
        self.emails = sorted({e.lower() for v in self.values for e in _EMAIL_RE.findall(v)})

    def __contains__(self, needle: str) -> bool:
        toks = _tokens(needle)
        return needle in self.text or bool(toks) and (" " + " ".join(toks) + " ") in self.words


# ------------------------------------------------------------------------------------- the proof

# Every byte that is not [0-9a-z] becomes a space (rows stay lines): the words of _tokens() in lower-case text.
_WORD_BYTES = bytes(b if (48 <= b <= 57 or 97 <= b <= 122 or b == 10) else 32 for b in range(256))
_COPY_ESCAPES = (b"\\\\", b"\\n", b"\\t", b"\\r", b"\\b", b"\\f", b"\\v")  # COPY text format, two bytes each
_COPY_UNESCAPE = re.compile(r"\\(.)")
_COPY_CHARS = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}
_CHUNK = 8 << 20
_FIND_AT_MOST = 24  # anchor words looked for with bytes.find in a block; more: one pass over its rows
MAX_ROW_IDS = 10_000  # row ids kept per residue column in the report (the count is always exact)


@dataclass
class Residue:
    """Where original values were found: a column and its row ids (or a filestore file), never the values."""

    table: str
    column: str
    row_ids: list[str] = field(default_factory=list)
    rows: int = 0
    rules: set[str] = field(default_factory=set)   # the rule columns whose sampled originals were found here


class _Needles:
    """The needles by anchor word, for the scan (memory only).

    A needle is found in a text when its words occur there in order, next to each other, as whole words:
    case, punctuation and spacing are ignored ("Smith, John" is found in "SMITH John"), a word is never
    matched inside a longer one ("smith" is not in "blacksmith").
    """

    def __init__(self, sources: Mapping[str, set[str]]) -> None:
        self.sources = sources
        self.by_anchor: dict[bytes, list[tuple[str, bytes]]] = {}
        self.words: dict[str, set[bytes]] = {}
        for n, anchor in _anchors(sources).items():
            form = _word_form(n)
            self.by_anchor.setdefault(anchor.encode(), []).append((n, form))
            self.words[n] = set(form.split())

    def in_words(self, words: bytes, anchors: Iterable[bytes]) -> set[str]:
        """The needles among those of ``anchors`` whose word form is in ``words`` (a _word_form)."""
        return {n for a in anchors for n, form in self.by_anchor.get(a, ()) if form in words}

    def find(self, text: str) -> set[str]:
        words = _word_form(text)
        return self.in_words(words, set(words.split()) & self.by_anchor.keys())


def _word_form(text: str | bytes) -> bytes:
    """b" w1 w2 ... ": the lower-case [0-9a-z] words of a text, one space apart and around."""
    data = text.lower().encode("utf-8") if isinstance(text, str) else text
    return b" " + b" ".join(data.translate(_WORD_BYTES).split()) + b" "


def _copy_field(value: str) -> str:
    return _COPY_UNESCAPE.sub(lambda m: _COPY_CHARS.get(m.group(1), m.group(1)), value)


def _scan_table(conn: psycopg.Connection, table: str, cols: list[tuple[str, str]], needles: _Needles,
                where: sql.Composable | None = None) -> dict[str, Residue]:
    """One pass over the table's text with all needles at once.

    PostgreSQL streams the text columns (COPY); each 8 MB block is lower-cased and reduced to its words
    in C (bytes.translate, split). Only needles all of whose words are in the block go on: each is
    looked for only in the rows holding its anchor word, compared with them word by word, and only the
    rows that hold a needle are decoded column by column to say where.
    """
    rowid = sql.SQL("t.id::text") if "id" in _columns(conn, table) else sql.SQL("t.ctid::text")
    q = sql.SQL("COPY (SELECT {}, {} FROM {} t {}) TO STDOUT").format(
        rowid, sql.SQL(", ").join(_text_of(c, typ) for c, typ in cols), _id(table),
        sql.SQL("WHERE {}").format(where) if where is not None else sql.SQL(""))
    found: dict[str, Residue] = {}

    def block(data: bytes) -> None:
        low = data.lower() if data.isascii() else data.decode("utf-8", "replace").lower().encode("utf-8")
        for esc in _COPY_ESCAPES:
            if esc in low:
                low = low.replace(esc, b"  ")
        words = low.translate(_WORD_BYTES)
        present = set(words.split())
        if needles.by_anchor.keys().isdisjoint(present):
            return
        # needles all of whose words are in this block, looked up by their anchor word
        locators: dict[bytes, list[tuple[str, bytes]]] = {}
        for anchor in needles.by_anchor.keys() & present:
            live = [(n, form) for n, form in needles.by_anchor[anchor] if needles.words[n] <= present]
            if live:
                locators[anchor] = live
        if not locators:
            return
        wanted = locators.keys()
        candidates: dict[int, set[bytes]] = {}
        rows = words.split(b"\n")
        if len(wanted) <= _FIND_AT_MOST:  # a few words: find them in the whole block (C), then their rows
            padded = b" " + words.replace(b"\n", b" \n ") + b" "
            ends = [m.start() for m in re.finditer(b"\n", padded)]
            for word in wanted:
                key = b" " + word + b" "
                at = padded.find(key)
                while at != -1:
                    candidates.setdefault(bisect.bisect_left(ends, at), set()).add(word)
                    at = padded.find(key, at + len(key) - 1)
        else:
            for i, row in enumerate(rows):
                tokens = row.split()
                if not wanted.isdisjoint(tokens):
                    candidates[i] = wanted & set(tokens)
        lines: list[bytes] | None = None
        for i, located in candidates.items():
            row = b" " + b" ".join(rows[i].split()) + b" "
            if not any(form in row for word in located for _, form in locators[word]):
                continue
            lines = lines if lines is not None else data.split(b"\n")
            fields = lines[i].decode("utf-8", "replace").split("\t")
            for (col, _), value in zip(cols, fields[1:], strict=True):
                if value == "\\N":
                    continue
                form_of_value = _word_form(_copy_field(value))
                got = {n for word in located for n, form in locators[word] if form in form_of_value}
                if got:
                    res = found.setdefault(col, Residue(table, col))
                    res.rows += 1
                    if len(res.row_ids) < MAX_ROW_IDS:
                        res.row_ids.append(fields[0])
                    for n in got:
                        res.rules |= needles.sources.get(n, set())

    with conn.cursor() as cur, cur.copy(q) as copy:
        pending = bytearray()
        for data in copy:
            pending += data
            if len(pending) >= _CHUNK:
                cut = pending.rfind(b"\n") + 1
                block(bytes(pending[:cut]))
                del pending[:cut]
        if pending:
            block(bytes(pending.rstrip(b"\n")))
    return found


def scan_database(conn: psycopg.Connection, needles: Mapping[str, set[str]],
                  tables: Iterable[str] | None = None) -> list[Residue]:
    """Where any needle occurs, over every text/varchar/jsonb column of every table (or of ``tables``).

    ``needles`` maps each needle (lower-case) to the rule columns it was sampled from. A needle counts
    when its words occur in one column value, in order and next to each other, as whole words (case,
    punctuation and spacing ignored; see _Needles).
    """
    index = _Needles(needles)
    wanted = set(tables) if tables is not None else None
    hits: list[Residue] = []
    for table, cols in _text_tables(conn):
        if wanted is None or table in wanted:
            hits.extend(_scan_table(conn, table, cols, index).values())
    return hits


def _text_tables(conn: psycopg.Connection) -> list[tuple[str, list[tuple[str, str]]]]:
    rows = conn.execute(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum), array_agg(format_type(a.atttypid, NULL) "
        "ORDER BY a.attnum) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
        "AND a.attnum > 0 AND NOT a.attisdropped AND format_type(a.atttypid, NULL) = ANY(%s) "
        "AND c.relname NOT LIKE 'odoops\\_%%' GROUP BY c.relname ORDER BY c.relname", (list(TEXT_TYPES),)).fetchall()
    return [(t, list(zip(names, types, strict=True))) for t, names, types in rows]


def _text_of(col: str, typ: str) -> sql.Composable:
    ident = sql.SQL("t.{}").format(_id(col))
    if typ == "jsonb":
        return sql.SQL("CASE WHEN jsonb_typeof({c}) = 'object' THEN (SELECT string_agg(e.value, ' ') "
                       "FROM jsonb_each_text({c}) e) ELSE {c}::text END").format(c=ident)
    return sql.SQL("{}::text").format(ident)


# Records that installed modules define (views, e-mail templates, menus, ...): Odoo's own source text.
# Odoo's stock templates quote demo names ("Marc Demo", "Mitchell Admin"); such needles are not
# personal data of this database, so they are left out of the proof (and counted).
_SOURCE_MODELS = {"ir_ui_view": "ir.ui.view", "mail_template": "mail.template", "ir_ui_menu": "ir.ui.menu",
                  "ir_model_fields": "ir.model.fields", "ir_rule": "ir.rule", "res_groups": "res.groups",
                  "ir_act_window": "ir.actions.act_window", "ir_act_server": "ir.actions.server",
                  "ir_module_module": "ir.module.module", "ir_model": "ir.model"}


def _public_needles(conn: psycopg.Connection, needles: Mapping[str, set[str]]) -> set[str]:
    index = _Needles(needles)
    found: set[str] = set()
    tables = dict(_text_tables(conn))
    for table, model in _SOURCE_MODELS.items():
        if table not in tables or "id" not in _columns(conn, table):
            continue
        where = sql.SQL("t.id IN (SELECT d.res_id FROM ir_model_data d WHERE d.model = {} "
                        "AND d.module NOT IN ('__export__', '__import__', '__custom__', ''))").format(sql.Literal(model))
        q = sql.SQL("SELECT {} FROM {} t WHERE {}").format(
            sql.SQL(", ").join(_text_of(c, typ) for c, typ in tables[table]), _id(table), where)
        for row in conn.execute(q):
            for value in row:
                if value:
                    found |= index.find(value)
    return found


def _scan_files(paths: Iterable[Path], needles: Mapping[str, set[str]]) -> list[Residue]:
    index = _Needles(needles)
    hits = []
    for path in paths:
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        found = index.find(text)
        if found:
            hits.append(Residue("filestore", str(path.relative_to(path.parent.parent)), [], len(found),
                                {s for n in found for s in needles.get(n, set())}))
    return hits


# ---------------------------------------------------------------------------------- attachments


def _text_attachment_cond(any_text: bool = False) -> sql.Composable:
    """Text attachments a person may have written (not web assets nor view-generated files)."""
    mime = "(mimetype = ANY(%(mimes)s) OR mimetype LIKE 'text/%%')" if any_text else "mimetype = ANY(%(mimes)s)"
    return sql.SQL("type = 'binary' AND " + mime + " AND (url IS NULL OR url NOT LIKE '/web/%%') "
                   "AND res_model IS DISTINCT FROM 'ir.ui.view'")


def _write_file(filestore: Path, content: bytes) -> tuple[str, bool]:
    """Store content as Odoo does (<sha1[:2]>/<sha1>), as a new file; never rewrites an existing one."""
    sha = hashlib.sha1(content).hexdigest()
    rel = f"{sha[:2]}/{sha}"
    dest = filestore / rel
    if dest.exists():
        return rel, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".odoops-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rel, True


def anonymize_attachments(conn: psycopg.Connection, filestore_path: str | Path | None, mode: str = "scrub",
                          mimetypes: Iterable[str] = DEFAULT_TEXT_MIMETYPES) -> AttachmentReport:
    """Scrub (replace with a placeholder) or drop the text attachments, database and filestore.

    Needs an autocommit connection: the database change commits before old files are unlinked, so a
    crash leaves at worst an orphan file (that Odoo's garbage collector also removes), never an
    attachment pointing at a missing file.
    """
    if mode not in ATTACHMENT_MODES:
        raise ConfigError(f"attachment mode {mode!r} is unknown: use one of {', '.join(ATTACHMENT_MODES)}")
    report = AttachmentReport(mode=mode)
    if mode == "keep" or not _columns(conn, "ir_attachment"):
        return report
    fs = Path(filestore_path) if filestore_path else None
    sha = hashlib.sha1(PLACEHOLDER).hexdigest()
    target = conn.execute(
        sql.SQL("SELECT id, store_fname FROM ir_attachment WHERE {} AND (checksum IS DISTINCT FROM %(sha)s "
                "OR %(drop)s)").format(_text_attachment_cond()),
        {"mimes": list(mimetypes), "sha": sha, "drop": mode == "drop"}).fetchall()
    if not target:
        return report
    ids = [r[0] for r in target]
    old_files = {r[1] for r in target if r[1]}
    if old_files and fs is None:
        # Without the filestore the files cannot be replaced; the residue scan reports their indexed text.
        target = [r for r in target if not r[1]]
        ids = [r[0] for r in target]
        old_files = set()
        if not ids:
            return report
    with conn.transaction():
        if mode == "drop":
            cur = conn.execute("DELETE FROM ir_attachment WHERE id = ANY(%s)", (ids,))
        else:
            rel = None
            if fs is not None:
                rel, written = _write_file(fs, PLACEHOLDER)
                report.files_written += int(written)
            cur = conn.execute(
                "UPDATE ir_attachment SET "
                " store_fname = CASE WHEN store_fname IS NULL OR store_fname = '' THEN store_fname ELSE %(rel)s END,"
                " db_datas = CASE WHEN db_datas IS NULL THEN NULL ELSE %(data)s END,"
                " checksum = %(sha)s, file_size = %(size)s, index_content = %(text)s "
                "WHERE id = ANY(%(ids)s)",
                {"rel": rel, "data": PLACEHOLDER, "sha": sha, "size": len(PLACEHOLDER),
                 "text": PLACEHOLDER.decode().strip(), "ids": ids})
        report.attachments = cur.rowcount
    if fs is not None and old_files:
        still = {r[0] for r in conn.execute(
            "SELECT DISTINCT store_fname FROM ir_attachment WHERE store_fname = ANY(%s)", (sorted(old_files),))}
        for rel in sorted(old_files - still):
            path = fs / rel
            if path.resolve().parent.parent == fs.resolve() and path.is_file():
                path.unlink()  # removes this filestore's link only; another filestore's hard link stays intact
                report.files_removed += 1
    return report


def _text_attachment_files(conn: psycopg.Connection, filestore: Path, mimetypes: Iterable[str]) -> list[Path]:
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT store_fname FROM ir_attachment WHERE {} "
                "AND store_fname IS NOT NULL AND store_fname <> ''").format(_text_attachment_cond(any_text=True)),
        {"mimes": list(mimetypes)}).fetchall()
    return [filestore / r[0] for r in rows if (filestore / r[0]).is_file()]


# ------------------------------------------------------------------------------------- the engine


def _translate(exc: psycopg.Error, what: str) -> OdoopsError:
    # The primary message only: DETAIL lines can quote row values.
    primary = getattr(getattr(exc, "diag", None), "message_primary", None) or type(exc).__name__
    return ToolFailed(f"anonymization failed on {what}: {primary}")


def anonymize(conn: psycopg.Connection, rules: Rules | str | Path | None, key: str,
              filestore_path: str | Path | None = None, *, user_password: str | None = None,
              vacuum: bool = True, verify: bool = True) -> AnonymizationReport:
    """Anonymize the database behind ``conn`` (an autocommit connection) with ``rules``, keyed by ``key``.

    Raises ConfigError for rules that do not fit the database and ResidueFound when original values are
    still present afterwards (the report on the exception says where).
    """
    t_start = time.monotonic()
    if not isinstance(rules, Rules):
        rules = load_rules(rules)
    if not key:
        raise ConfigError(f"the anonymization key is empty: set {KEY_ENV} (or a Prefect Secret block)")
    if not conn.autocommit:
        raise ConfigError("anonymize needs an autocommit connection (VACUUM FULL cannot run in a transaction)")
    report = AnonymizationReport()
    try:
        return _anonymize(conn, rules, key, filestore_path, user_password, vacuum, verify, report, t_start)
    except psycopg.Error as exc:
        raise _translate(exc, "the database") from None


MARKER = "odoops.anonymization"  # ir_config_parameter: running -> clean | residue (a copy is usable only when clean)


def _mark(conn: psycopg.Connection, state: str) -> None:
    """Record the anonymization state in the copy itself, where Odoo and operators can read it."""
    if not {"key", "value"} <= set(_columns(conn, "ir_config_parameter")):
        return
    with conn.transaction():
        cur = conn.execute("UPDATE ir_config_parameter SET value = %s WHERE key = %s", (state, MARKER))
        if not cur.rowcount:
            conn.execute("INSERT INTO ir_config_parameter (key, value) VALUES (%s, %s)", (MARKER, state))


def _residue_message(report: AnonymizationReport) -> str:
    parts = []
    for r in report.residue_found[:8]:
        unit = "file" if r.table == "filestore" else f"{r.rows} row{'s' if r.rows != 1 else ''}"
        rules = ", ".join(sorted(r.rules)) or "?"
        parts.append(f"{r.table}.{r.column} ({unit}; originals of rule {rules})" if r.table != "filestore"
                     else f"filestore {r.column} ({r.rows} values; originals of rule {rules})")
    more = f" and {len(report.residue_found) - 8} more" if len(report.residue_found) > 8 else ""
    return (f"anonymization left original personal values in {'; '.join(parts)}{more}: the copy is marked "
            f"{MARKER}=residue and is not anonymized; list the row ids with --report FILE, then add or fix the rules "
            "for these columns (rules file) and run it again")


def _anonymize(conn: psycopg.Connection, rules: Rules, key: str, filestore_path: str | Path | None,
               user_password: str | None, vacuum: bool, verify: bool, report: AnonymizationReport,
               t_start: float) -> AnonymizationReport:
    installed = _installed(conn)
    needs_password = any(c.strategy == "password" for t in rules.tables for c in t.columns)
    password = user_password if user_password is not None else os.environ.get(PASSWORD_ENV) or None
    password_hash = odoo_password_hash(password) if (needs_password and password) else None

    # 1. plan every table against the real schema (errors before anything changes)
    plans: list[_Plan] = []
    for rule in rules.tables:
        cols = _columns(conn, rule.table)
        if not cols:
            if rule.required:
                raise _err(rules.source, rule.table, f"table {rule.table} does not exist (required: true): "
                                                     "fix the rule or remove it")
            report.skipped.append((rule.table, "table absent"))
            continue
        if rule.module and rule.module not in installed:
            report.skipped.append((rule.table, f"module {rule.module} not installed"))
            continue
        plan = _plan_table(conn, rule, cols, key, password_hash, rules.source)
        _kept_partner_names(conn, plan)
        plans.append(plan)
    # What the rules keep (kept rows, rows outside only_rows) is kept everywhere: an e-mail address of a kept
    # row stays as it is in every e-mail column (OdooBot's and the company's "Name" <address> copies).
    kept = _KeptSet(v for plan in plans for v in _kept_values(conn, plan))
    for plan in plans:
        plan.params.values["kept_emails"] = kept.emails
    report.seconds["plan"] = round(time.monotonic() - t_start, 3)

    # 2. count what will be replaced (for the report), sample the originals (memory only) and decide
    #    which needles prove anything
    t = time.monotonic()
    counts_of = {p.rule.table: _value_counts(conn, p) for p in plans if p.assignments}
    needles: dict[str, set[str]] = {}
    if verify:
        for plan in plans:
            for n, sources in _sample(conn, plan, rules.sample_rows).items():
                needles.setdefault(n, set()).update(sources)
        generated = {n for n in needles if _generated_shape(n)}
        kept_needles = {n for n in needles if n in kept}
        for n in generated | kept_needles:
            del needles[n]
        report.needles_generated = len(generated)
        report.needles_kept = len(kept_needles)
        if needles:
            public = _public_needles(conn, needles)
            for n in public:
                del needles[n]
            report.needles_public = len(public)
        report.needles = len(needles)
    report.seconds["sample"] = round(time.monotonic() - t, 3)

    # 3. one UPDATE per table, all in one transaction
    _mark(conn, "running")
    t = time.monotonic()
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = off")
        # the indexes set aside are built in memory: at least 256 MB for the sorts, never less than configured
        conn.execute("SELECT set_config('maintenance_work_mem', greatest(262144, "
                     "pg_size_bytes(current_setting('maintenance_work_mem')) / 1024)::text || 'kB', true)")
        for plan in plans:
            if not plan.assignments:
                continue
            table = plan.rule.table
            counts = counts_of[table]
            try:
                set_aside = _set_aside_indexes(conn, table)
                cur = conn.execute(plan.update(), plan.params.values)
                for definition in set_aside:
                    conn.execute(sql.SQL(definition))  # type: ignore[arg-type]  # the server's own DDL
            except psycopg.Error as exc:
                raise _translate(exc, f"table {table}") from None
            report.rows[table] = cur.rowcount
            report.updated.extend((table, c, counts.get(c, 0)) for c, _ in plan.assignments)
            log.info("anonymized %s: %d rows", table, cur.rowcount)
    report.seconds["update"] = round(time.monotonic() - t, 3)

    # 4. text attachments (filestore)
    t = time.monotonic()
    report.attachments = anonymize_attachments(conn, filestore_path, rules.attachments.mode,
                                               rules.attachments.mimetypes)
    report.seconds["attachments"] = round(time.monotonic() - t, 3)

    # 5. old row versions and sampled statistics
    t = time.monotonic()
    if vacuum:
        touched = [p.rule.table for p in plans if p.assignments]
        if report.attachments.attachments:
            touched.append("ir_attachment")
        for table in dict.fromkeys(touched):
            conn.execute(sql.SQL("VACUUM (FULL, ANALYZE) {}").format(_id(table)))
    report.seconds["vacuum"] = round(time.monotonic() - t, 3)

    # 6. the proof
    t = time.monotonic()
    if verify and needles:
        report.residue_found = scan_database(conn, needles)
        if filestore_path:
            files = _text_attachment_files(conn, Path(filestore_path), rules.attachments.mimetypes)
            report.residue_found += _scan_files(files, needles)
    report.residue = [(r.table, r.column, r.rows) for r in report.residue_found]
    needles.clear()
    report.seconds["scan"] = round(time.monotonic() - t, 3)
    _mark(conn, "residue" if report.residue else "clean" if verify else "unverified")
    report.seconds["total"] = round(time.monotonic() - t_start, 3)
    if report.residue:
        raise ResidueFound(_residue_message(report), report)
    return report


def _value_counts(conn: psycopg.Connection, plan: _Plan) -> dict[str, int]:
    """Non-empty values about to be replaced, per column (for the report)."""
    exprs = []
    for col, _ in plan.assignments:
        cond = plan.column_cond.get(col)
        ident = _id(col)
        base = sql.SQL("{} IS NOT NULL").format(ident)
        exprs.append(sql.SQL("count(*) FILTER (WHERE {}{})").format(
            base, sql.SQL(" AND {}").format(cond) if cond is not None else sql.SQL("")))
    q = sql.SQL("SELECT {} FROM {} {}").format(
        sql.SQL(", ").join(exprs), _id(plan.rule.table),
        sql.SQL("WHERE {}").format(plan.where) if plan.where is not None else sql.SQL(""))
    row = conn.execute(q, plan.params.values).fetchone()
    return {col: n for (col, _), n in zip(plan.assignments, row, strict=True)}
