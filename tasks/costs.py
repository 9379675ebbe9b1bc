"""The cost model behind the "cost report" runbook: Odoo.sh against self-hosted Docker.

Operators asking "should we leave Odoo.sh?" (or "should we move to it?") need the answer from their
own figures, not from a blog post: every price is an input, every default is a labelled estimate
(the seed runbook's table where it has one), and sizes measured on the real environments replace
the guesses when they are available. The model is plain pandas so tests can check it by hand; the
Prefect flow (``flows/cost_report.py``) and the CLI (``odoops/cli_costs.py``) only wrap it.

Formulas are documented in ``docs/costs.md``.
"""

from __future__ import annotations

import difflib
import errno
import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from odoops.errors import ConfigError, DiskFull

OPTIONS: dict[str, str] = {"odoosh": "Odoo.sh", "selfhosted": "Self-hosted Docker"}
MEASURED_KEYS: tuple[str, ...] = ("database_gb", "filestore_gb", "backup_repository_gb")
# Order in which sources are listed in a line item's "basis" column.
SOURCES: tuple[str, ...] = ("measured", "input", "override", "estimate")
LINE_ITEM_COLUMNS: list[str] = [
    "option", "item", "quantity", "unit", "unit_price", "monthly", "one_time", "horizon_total", "basis",
]


@dataclass(frozen=True)
class InputSpec:
    """One input of the model: its default, type, unit and where the default comes from."""

    default: Any
    kind: type
    unit: str
    note: str
    minimum: float = 0
    nullable: bool = False


INPUTS: dict[str, InputSpec] = {
    # --- what is being hosted ---------------------------------------------------------------------
    "currency": InputSpec("USD", str, "", "label only; every price must be in this currency"),
    "months": InputSpec(36, int, "months", "horizon of the totals", minimum=1),
    "users": InputSpec(10, int, "users", "estimate: the seed's Standard plan (10 users)"),
    "workers": InputSpec(2, int, "workers", "estimate: production Odoo workers"),
    "staging_environments": InputSpec(1, int, "envs", "estimate: one staging copy of production"),
    "database_gb": InputSpec(4.0, float, "GB", "estimate: PostgreSQL size of production"),
    "filestore_gb": InputSpec(6.0, float, "GB", "estimate: filestore size (seed: 10 GB storage in all)"),
    "backup_repository_gb": InputSpec(
        None, float, "GB", "backup repository after deduplication; empty: data x backup_retention_factor",
        nullable=True),
    "backup_retention_factor": InputSpec(
        3.0, float, "x data", "estimate: ~30 daily backups deduplicated take about 3x the live data"),
    # --- shared prices ----------------------------------------------------------------------------
    "license_per_user_month": InputSpec(
        37.40, float, "per user/month", "estimate: Odoo Enterprise Custom plan list price (Odoo.sh needs it)"),
    "enterprise_self_hosted": InputSpec(
        False, bool, "", "true: self-hosted also runs Enterprise and pays the licence; false: Community"),
    "maintenance_hourly_rate": InputSpec(75.0, float, "per hour", "estimate: operator/contractor rate"),
    # --- Odoo.sh ----------------------------------------------------------------------------------
    "odoosh_worker_month": InputSpec(
        25.0, float, "per worker/month", "seed estimate: Standard plan $20-30/month, read as one worker"),
    "odoosh_included_storage_gb": InputSpec(10.0, float, "GB", "seed estimate: Standard plan includes 10 GB"),
    "odoosh_storage_gb_month": InputSpec(0.25, float, "per GB/month", "estimate: storage above the included"),
    "odoosh_staging_env_month": InputSpec(18.0, float, "per env/month", "estimate: each staging environment"),
    "odoosh_maintenance_hours_month": InputSpec(1.0, float, "hours/month", "estimate: operator time on Odoo.sh"),
    "odoosh_setup_hours": InputSpec(4.0, float, "hours", "estimate: one-time setup or migration to Odoo.sh"),
    # --- self-hosted Docker -----------------------------------------------------------------------
    "selfhosted_server_month": InputSpec(
        48.0, float, "per server/month", "seed estimate: VPS 4 vCPU 8 GB RAM $48/month"),
    "selfhosted_workers_per_server": InputSpec(
        4, int, "workers", "estimate: Odoo workers one such server carries next to PostgreSQL", minimum=1),
    "selfhosted_staging_workers": InputSpec(1, int, "workers", "estimate: worker slots each staging env takes"),
    "selfhosted_block_storage_gb_month": InputSpec(
        0.10, float, "per GB/month", "seed estimate: 100 GB SSD block storage $10/month"),
    "selfhosted_s3_gb_month": InputSpec(0.025, float, "per GB/month", "seed estimate: S3 100 GB $2-3/month"),
    "selfhosted_monitoring_month": InputSpec(0.0, float, "per month", "seed estimate: self-hosted Grafana $0"),
    "selfhosted_maintenance_hours_month": InputSpec(
        4.0, float, "hours/month", "estimate: updates, backups checks, incidents"),
    "selfhosted_setup_hours": InputSpec(24.0, float, "hours", "estimate: one-time server setup and migration"),
}


@dataclass(frozen=True)
class CostInputs:
    """Validated input values and, per key, where each came from (estimate/input/override/measured)."""

    values: dict[str, Any]
    sources: dict[str, str]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


@dataclass
class CostReport:
    """The model's result: line items, totals, cumulative costs and break-even points."""

    inputs: CostInputs
    line_items: pd.DataFrame  # LINE_ITEM_COLUMNS, one row per option and item
    totals: pd.DataFrame  # index: option id; columns: label, monthly, one_time, horizon_total
    cumulative: pd.DataFrame  # index: month 0..months; columns: option ids
    break_even_users: float | None  # monthly costs equal at this user count; None: never
    break_even_storage_gb: float | None  # monthly costs equal at this data size (db + filestore)
    break_even_month: float | None  # cumulative costs (one-time included) cross in this month
    cheaper: str  # option id cheaper over the horizon ("equal" if tied)
    notes: list[str] = field(default_factory=list)

    @property
    def months(self) -> int:
        return int(self.inputs["months"])

    @property
    def currency(self) -> str:
        return str(self.inputs["currency"])


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def default_inputs() -> dict[str, Any]:
    """The default value of every input (all of them estimates)."""
    return {key: spec.default for key, spec in INPUTS.items()}


def _check_value(key: str, value: Any, origin: str) -> Any:
    """One input value converted to its kind, or a ConfigError naming the key and the fix."""
    if key not in INPUTS:
        close = difflib.get_close_matches(key, list(INPUTS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see deployments/cost-inputs.example.yaml"
        raise ConfigError(f"{origin}: unknown key '{key}'; {hint}")
    spec = INPUTS[key]
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(
            f"{origin}: '{key}' has no value; give a number >= {spec.minimum:g} ({spec.unit}) "
            f"or remove the line to use the estimate {spec.default!r}")
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: '{key}' must be true or false, not {value!r}")
        return value
    if spec.kind is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{origin}: '{key}' must be a non-empty text such as 'USD', not {value!r}")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{origin}: '{key}' must be a number ({spec.unit}), not {value!r}; write it without quotes "
            "or currency signs, e.g. 25.0")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{origin}: '{key}' must be a finite number, not {value!r}")
    if value < spec.minimum:
        raise ConfigError(
            f"{origin}: '{key}' is {value!r} but must be >= {spec.minimum:g}; "
            f"set it to a value >= {spec.minimum:g} ({spec.unit})")
    if spec.kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{origin}: '{key}' must be a whole number, not {value!r}")
        return int(value)
    return float(value)


def validate_inputs(raw: Mapping[str, Any], origin: str = "cost inputs") -> dict[str, Any]:
    """Check every key of ``raw`` (known, right type, >= minimum) and return converted values."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: expected a mapping of 'key: value' lines, got {type(raw).__name__}")
    return {str(key): _check_value(str(key), value, origin) for key, value in raw.items()}


def read_inputs_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML inputs file (see ``deployments/cost-inputs.example.yaml``)."""
    path = Path(path)
    origin = f"cost inputs {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"cost inputs file {path} not found; give an existing file or copy "
            "deployments/cost-inputs.example.yaml") from None
    except OSError as exc:
        raise ConfigError(f"cost inputs file {path} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}: not valid YAML{where}; fix the syntax (one 'key: value' per line)") from None
    if data is None:
        return {}
    return validate_inputs(data, origin)


def load_inputs(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    measured: Mapping[str, Any] | None = None,
) -> CostInputs:
    """Defaults, then the YAML file, then ``overrides`` (None values ignored), then measured sizes."""
    values = default_inputs()
    sources = dict.fromkeys(values, "estimate")
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append(("input", read_inputs_file(path)))
    if overrides:
        kept = {k: v for k, v in overrides.items() if v is not None}
        layers.append(("override", validate_inputs(kept, "cost report parameters")))
    if measured:
        if not isinstance(measured, Mapping):
            raise ConfigError("measured sizes: expected a mapping such as {'database_gb': 1.5}")
        for key in measured:
            if key not in MEASURED_KEYS:
                raise ConfigError(
                    f"measured sizes: unknown key '{key}'; use only {', '.join(MEASURED_KEYS)}")
        kept = {k: v for k, v in measured.items() if v is not None}
        layers.append(("measured", validate_inputs(kept, "measured sizes")))
    for source, layer in layers:
        values.update(layer)
        sources.update(dict.fromkeys(layer, source))
    return CostInputs(values=values, sources=sources)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

def data_gb(v: Mapping[str, Any]) -> float:
    """Live data of production: database plus filestore."""
    return float(v["database_gb"]) + float(v["filestore_gb"])


def backup_gb(v: Mapping[str, Any]) -> float:
    """Backup repository size: measured/given after deduplication, else data x retention factor."""
    if v["backup_repository_gb"] is not None:
        return float(v["backup_repository_gb"])
    return data_gb(v) * float(v["backup_retention_factor"])


def selfhosted_servers(v: Mapping[str, Any]) -> int:
    """Servers needed for production and staging workers (at least one)."""
    slots = int(v["workers"]) + int(v["staging_environments"]) * int(v["selfhosted_staging_workers"])
    return max(1, math.ceil(slots / int(v["selfhosted_workers_per_server"])))


def _items(v: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every line item as (option, item, quantity, unit, unit_price, monthly, one_time, keys used)."""
    rate = float(v["maintenance_hourly_rate"])
    data = data_gb(v)
    licence_sh = float(v["license_per_user_month"]) if v["enterprise_self_hosted"] else 0.0
    storage_keys = ("database_gb", "filestore_gb")
    backup_keys = ("backup_repository_gb",) if v["backup_repository_gb"] is not None else (
        *storage_keys, "backup_retention_factor")

    def item(option: str, name: str, qty: float, unit: str, price: float, *keys: str,
             one_time: bool = False) -> dict[str, Any]:
        cost = float(qty) * float(price)
        return {"option": option, "item": name, "quantity": float(qty), "unit": unit,
                "unit_price": float(price), "monthly": 0.0 if one_time else cost,
                "one_time": cost if one_time else 0.0, "keys": keys}

    return [
        item("odoosh", "Odoo Enterprise licences", v["users"], "user", v["license_per_user_month"],
             "users", "license_per_user_month"),
        item("odoosh", "Hosting workers", v["workers"], "worker", v["odoosh_worker_month"],
             "workers", "odoosh_worker_month"),
        item("odoosh", "Storage above included", max(0.0, data - float(v["odoosh_included_storage_gb"])),
             "GB", v["odoosh_storage_gb_month"], *storage_keys, "odoosh_included_storage_gb",
             "odoosh_storage_gb_month"),
        item("odoosh", "Staging environments", v["staging_environments"], "env", v["odoosh_staging_env_month"],
             "staging_environments", "odoosh_staging_env_month"),
        item("odoosh", "Maintenance", v["odoosh_maintenance_hours_month"], "hour", rate,
             "odoosh_maintenance_hours_month", "maintenance_hourly_rate"),
        item("odoosh", "Setup / migration (one-time)", v["odoosh_setup_hours"], "hour", rate,
             "odoosh_setup_hours", "maintenance_hourly_rate", one_time=True),
        item("selfhosted", "Odoo Enterprise licences", v["users"] if v["enterprise_self_hosted"] else 0,
             "user", licence_sh, "users", "license_per_user_month", "enterprise_self_hosted"),
        item("selfhosted", "Servers", selfhosted_servers(v), "server", v["selfhosted_server_month"],
             "workers", "staging_environments", "selfhosted_staging_workers",
             "selfhosted_workers_per_server", "selfhosted_server_month"),
        item("selfhosted", "Block storage", data * (1 + int(v["staging_environments"])), "GB",
             v["selfhosted_block_storage_gb_month"], *storage_keys, "staging_environments",
             "selfhosted_block_storage_gb_month"),
        item("selfhosted", "S3 backup storage", backup_gb(v), "GB", v["selfhosted_s3_gb_month"],
             *backup_keys, "selfhosted_s3_gb_month"),
        item("selfhosted", "Monitoring", 1, "month", v["selfhosted_monitoring_month"],
             "selfhosted_monitoring_month"),
        item("selfhosted", "Maintenance", v["selfhosted_maintenance_hours_month"], "hour", rate,
             "selfhosted_maintenance_hours_month", "maintenance_hourly_rate"),
        item("selfhosted", "Setup / migration (one-time)", v["selfhosted_setup_hours"], "hour", rate,
             "selfhosted_setup_hours", "maintenance_hourly_rate", one_time=True),
    ]


def monthly_totals(v: Mapping[str, Any]) -> dict[str, float]:
    """Recurring cost per month of each option for the input values ``v``."""
    totals = dict.fromkeys(OPTIONS, 0.0)
    for row in _items(v):
        totals[row["option"]] += row["monthly"]
    return totals


def _root_on_segment(f0: float, f1: float, x0: float, x1: float, bounded: bool) -> float | None:
    """Root of the line through (x0, f0), (x1, f1) within [x0, x1] (or [x0, inf) if not bounded)."""
    if f0 == 0:
        return x0
    slope = (f1 - f0) / (x1 - x0)
    if slope == 0:
        return None
    root = x0 - f0 / slope
    if root < x0 or (bounded and root > x1):
        return None
    return root


def _users_gap(v: Mapping[str, Any]) -> Callable[[float], float]:
    """Odoo.sh minus self-hosted monthly cost as a function of the user count."""
    def gap(users: float) -> float:
        t = monthly_totals({**v, "users": users})
        return t["odoosh"] - t["selfhosted"]
    return gap


def _storage_gap(v: Mapping[str, Any]) -> Callable[[float], float]:
    """Odoo.sh minus self-hosted monthly cost as a function of the data size (GB).

    The backup repository keeps its current ratio to the data (measured, or the retention factor).
    """
    current = data_gb(v)
    ratio = backup_gb(v) / current if current > 0 else float(v["backup_retention_factor"])

    def gap(gb: float) -> float:
        t = monthly_totals({**v, "database_gb": gb, "filestore_gb": 0.0, "backup_repository_gb": gb * ratio})
        return t["odoosh"] - t["selfhosted"]
    return gap


def break_even_users(v: Mapping[str, Any]) -> float | None:
    """Users at which both options cost the same per month (costs are linear in users); None: never."""
    gap = _users_gap(v)
    return _root_on_segment(gap(0), gap(1), 0.0, 1.0, bounded=False)


def break_even_storage_gb(v: Mapping[str, Any]) -> float | None:
    """Data size (database + filestore, GB) at which both options cost the same per month; None: never.

    Costs are piecewise linear in data size, with a kink where Odoo.sh's included storage ends.
    """
    gap = _storage_gap(v)
    kink = float(v["odoosh_included_storage_gb"])
    if kink > 0:
        root = _root_on_segment(gap(0.0), gap(kink), 0.0, kink, bounded=True)
        if root is not None:
            return root
    step = max(1000.0, kink)  # a long step keeps the slope exact in floating point
    return _root_on_segment(gap(kink), gap(kink + step), kink, kink + step, bounded=False)


def _cheaper_name(gap_value: float) -> str:
    """Which option a positive/negative Odoo.sh-minus-self-hosted gap favours."""
    if gap_value == 0:
        return "neither (equal)"
    return OPTIONS["selfhosted"] if gap_value > 0 else OPTIONS["odoosh"]


def compute_costs(inputs: CostInputs | Mapping[str, Any] | None = None) -> CostReport:
    """Run the model: line items, monthly and horizon totals, cumulative costs, break-even points.

    A plain mapping is taken as inputs-file values on top of the defaults.
    """
    if not isinstance(inputs, CostInputs):
        base = load_inputs()
        given = validate_inputs(inputs or {}, "cost inputs")
        inputs = CostInputs({**base.values, **given}, {**base.sources, **dict.fromkeys(given, "input")})
    v, months = inputs.values, int(inputs["months"])

    rows = []
    for row in _items(v):
        used = {inputs.sources[k] for k in row.pop("keys")}
        row["basis"] = "+".join(s for s in SOURCES if s in used)
        row["horizon_total"] = row["monthly"] * months + row["one_time"]
        rows.append(row)
    line_items = pd.DataFrame(rows, columns=LINE_ITEM_COLUMNS)

    sums = line_items.groupby("option", sort=False)[["monthly", "one_time", "horizon_total"]].sum()
    totals = sums.reindex(list(OPTIONS))
    totals.insert(0, "label", [OPTIONS[o] for o in totals.index])
    totals.index.name = "option"

    month_index = pd.RangeIndex(0, months + 1, name="month")
    cumulative = pd.DataFrame(
        {o: totals.at[o, "one_time"] + totals.at[o, "monthly"] * month_index.to_numpy() for o in OPTIONS},
        index=month_index)

    d_monthly = totals.at["odoosh", "monthly"] - totals.at["selfhosted", "monthly"]
    d_one_time = totals.at["selfhosted", "one_time"] - totals.at["odoosh", "one_time"]
    be_month = None
    if d_monthly != 0:
        m = d_one_time / d_monthly
        be_month = float(m) if 0 < m <= months else None  # month 0 is no break-even

    sh, ss = totals.at["odoosh", "horizon_total"], totals.at["selfhosted", "horizon_total"]
    cheaper = "equal" if sh == ss else ("odoosh" if sh < ss else "selfhosted")

    notes = ["Every default price is an estimate; replace it with your current prices (--inputs)."]
    measured = [k for k in MEASURED_KEYS if inputs.sources.get(k) == "measured"]
    if measured:
        notes.append("Measured on the environments: " + ", ".join(measured) + ".")
    if v["backup_repository_gb"] is None:
        notes.append("Backup repository size estimated as data x backup_retention_factor.")

    return CostReport(
        inputs=inputs, line_items=line_items, totals=totals, cumulative=cumulative,
        break_even_users=break_even_users(v), break_even_storage_gb=break_even_storage_gb(v),
        break_even_month=be_month, cheaper=cheaper, notes=notes)


# ------------------------------------------------------------------------------------------------
# Presentation
# ------------------------------------------------------------------------------------------------

def money(report: CostReport, amount: float) -> str:
    """An amount as shown in the report, e.g. ``USD 1,234.50``."""
    return f"{report.currency} {amount:,.2f}"


def break_even_lines(report: CostReport) -> list[str]:
    """Break-even points and the cheaper option in words, one line each."""
    v = report.inputs.values
    lines = []
    if report.break_even_users is None:
        lines.append("Break-even in users: never (one option is cheaper at every user count).")
    else:
        x = report.break_even_users
        above = _cheaper_name(_users_gap(v)(x + 1.0))
        lines.append(f"Break-even in users: {x:,.2f} users; above it {above} is cheaper "
                     f"(currently {v['users']} users).")
    if report.break_even_storage_gb is None:
        lines.append("Break-even in storage: never (one option is cheaper at every data size).")
    else:
        x = report.break_even_storage_gb
        above = _cheaper_name(_storage_gap(v)(x + 1.0))
        lines.append(f"Break-even in storage: {x:,.2f} GB of database + filestore; above it {above} is "
                     f"cheaper (currently {data_gb(v):,.2f} GB).")
    if report.break_even_month is None:
        lines.append(f"Cumulative costs do not cross within {report.months} months.")
    else:
        lines.append(f"Cumulative costs (one-time included) cross in month {report.break_even_month:,.1f}.")
    cheaper = "neither (equal)" if report.cheaper == "equal" else OPTIONS[report.cheaper]
    lines.append(f"Cheaper over {report.months} months: {cheaper}.")
    return lines


def summary(report: CostReport) -> dict[str, Any]:
    """Totals and break-even points as plain JSON-able values."""
    t = report.totals
    return {
        "currency": report.currency,
        "months": report.months,
        "monthly": {o: round(float(t.at[o, "monthly"]), 2) for o in OPTIONS},
        "one_time": {o: round(float(t.at[o, "one_time"]), 2) for o in OPTIONS},
        "horizon_total": {o: round(float(t.at[o, "horizon_total"]), 2) for o in OPTIONS},
        "break_even_users": None if report.break_even_users is None else round(report.break_even_users, 2),
        "break_even_storage_gb": (None if report.break_even_storage_gb is None
                                  else round(report.break_even_storage_gb, 2)),
        "break_even_month": None if report.break_even_month is None else round(report.break_even_month, 2),
        "cheaper": report.cheaper,
        "estimates": sorted(k for k, s in report.inputs.sources.items() if s == "estimate"),
        "measured": sorted(k for k, s in report.inputs.sources.items() if s == "measured"),
        "measured_sizes": {k: report.inputs[k] for k, s in sorted(report.inputs.sources.items()) if s == "measured"},
    }


def totals_table(report: CostReport) -> list[dict[str, Any]]:
    """Monthly, one-time and horizon totals per option (rows for a Prefect table artifact)."""
    return [
        {"option": OPTIONS[o], "monthly": round(float(r["monthly"]), 2), "one_time": round(float(r["one_time"]), 2),
         f"total_{report.months}_months": round(float(r["horizon_total"]), 2), "currency": report.currency}
        for o, r in report.totals.iterrows()
    ]


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(out)


def _input_rows(report: CostReport) -> list[list[Any]]:
    v, s = report.inputs.values, report.inputs.sources
    return [[k, "" if v[k] is None else v[k], INPUTS[k].unit, s[k], INPUTS[k].note] for k in INPUTS]


def render_markdown(report: CostReport, files: Mapping[str, Path | str] | None = None) -> str:
    """The whole report as Markdown: totals, break-even, line items, inputs with their sources."""
    m = report.months
    parts = [
        "# Odoo.sh vs self-hosted Docker: cost report",
        "",
        "*Prices marked `estimate` are defaults, not quotes: set your own in the inputs file.*",
        "",
        "## Totals",
        "",
        _md_table(["Option", "Monthly", "One-time", f"{m}-month total"],
                  [[r["label"], money(report, r["monthly"]), money(report, r["one_time"]),
                    money(report, r["horizon_total"])] for _, r in report.totals.iterrows()]),
        "",
        "## Break-even",
        "",
        *[f"- {line}" for line in break_even_lines(report)],
        "",
        "## Line items",
        "",
        _md_table(["Option", "Item", "Quantity", "Unit price", "Monthly", "One-time", "Basis"],
                  [[OPTIONS[r.option], r.item, f"{r.quantity:,.2f} {r.unit}", money(report, r.unit_price),
                    money(report, r.monthly), money(report, r.one_time), r.basis]
                   for r in report.line_items.itertuples()]),
        "",
        "## Inputs",
        "",
        _md_table(["Key", "Value", "Unit", "Source", "Note"], _input_rows(report)),
        "",
        *[f"- {note}" for note in report.notes],
    ]
    if files:
        parts += ["", "## Files", "", *[f"- {kind}: `{path}`" for kind, path in files.items()]]
    return "\n".join(parts) + "\n"


def render_html(report: CostReport, png_name: str | None = "costs.png") -> str:
    """The report as one self-contained HTML page (the chart referenced beside it)."""
    m = report.months
    totals = pd.DataFrame(
        [{"Option": r["label"], "Monthly": money(report, r["monthly"]), "One-time": money(report, r["one_time"]),
          f"{m}-month total": money(report, r["horizon_total"])} for _, r in report.totals.iterrows()])
    items = report.line_items.assign(option=report.line_items["option"].map(OPTIONS))
    inputs = pd.DataFrame(_input_rows(report), columns=["key", "value", "unit", "source", "note"])
    esc = html.escape
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Odoo cost report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>",
        "<h1>Odoo.sh vs self-hosted Docker: cost report</h1>",
        "<p><em>Prices marked <code>estimate</code> are defaults, not quotes: set your own in the inputs "
        "file.</em></p>",
        "<h2>Totals</h2>", totals.to_html(index=False, escape=True),
        "<h2>Break-even</h2><ul>", *[f"<li>{esc(line)}</li>" for line in break_even_lines(report)], "</ul>",
    ]
    if png_name:
        body.append(f'<img src="{esc(png_name)}" alt="Cumulative cost per option" width="800">')
    body += [
        "<h2>Line items</h2>", items.to_html(index=False, escape=True, float_format=lambda x: f"{x:,.2f}"),
        "<h2>Inputs</h2>", inputs.to_html(index=False, escape=True),
        "<ul>", *[f"<li>{esc(note)}</li>" for note in report.notes], "</ul>",
        "</body></html>",
    ]
    return "\n".join(body) + "\n"


def render_chart(report: CostReport, path: Path) -> Path:
    """Cumulative cost per option over the horizon, break-even month marked; written as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for option, label in OPTIONS.items():
        ax.plot(report.cumulative.index, report.cumulative[option], label=label, linewidth=2)
    if report.break_even_month is not None:
        x = report.break_even_month
        y = report.totals.at["odoosh", "one_time"] + report.totals.at["odoosh", "monthly"] * x
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.plot([x], [y], marker="o", color="black")
        ax.annotate(f"break-even: month {x:.1f}", (x, y), textcoords="offset points", xytext=(6, -14))
    ax.set_xlabel("Month")
    ax.set_ylabel(f"Cumulative cost ({report.currency})")
    ax.set_title(f"Odoo.sh vs self-hosted Docker over {report.months} months (estimates)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    users = "never" if report.break_even_users is None else f"{report.break_even_users:,.2f} users"
    storage = "never" if report.break_even_storage_gb is None else f"{report.break_even_storage_gb:,.2f} GB"
    fig.text(0.01, 0.01, f"Monthly break-even: {users}; {storage} of data", fontsize=8, color="dimgrey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, format="png")
    return path


def write_report(report: CostReport, out_dir: str | Path) -> dict[str, Path]:
    """Write costs.csv (line items), costs.md, costs.html and costs.png into ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {"csv": out / "costs.csv", "markdown": out / "costs.md", "html": out / "costs.html",
                 "png": out / "costs.png"}
        report.line_items.to_csv(files["csv"], index=False)
        render_chart(report, files["png"])
        files["html"].write_text(render_html(report, files["png"].name), encoding="utf-8")
        files["markdown"].write_text(render_markdown(report, {k: p.name for k, p in files.items()}),
                                     encoding="utf-8")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"no space left to write the cost report into {out}; free space or choose "
                           "another --out folder") from None
        raise ConfigError(
            f"cannot write the cost report into {out} ({exc.strerror}); choose a writable --out folder") from None
    return files


# ----------------------------------------------------------------------------- measured sizes

_GB = 1e9
