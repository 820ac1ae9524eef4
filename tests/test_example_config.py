"""The files under etc/ stay in step with the config model and DESIGN.md.

* every etc/**/*.toml loads with ``supervisord.config.load``;
* etc/jobsup.example.toml names every key of every config model (set, or
  commented out as ``# key = ...``) in the right table, and no unknown key;
* the Grafana dashboard and the Prometheus alert rules use only the metric
  names and labels of DESIGN.md section 5.

Fast: no processes, no network. The YAML is read without PyYAML (not a
dependency) by a small line parser that understands the layout of the rules file.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from supervisord import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
EXAMPLE = ETC / "jobsup.example.toml"
DASHBOARD = ETC / "grafana" / "jobsup-dashboard.json"
ALERTS = ETC / "prometheus" / "jobsup-alerts.yml"

# ---------------------------------------------------------------------------
# DESIGN.md section 5, "Metrics": family name -> labels. Counters are written
# there with their exposed _total suffix; histograms are exposed as
# NAME_bucket (plus the "le" label), NAME_sum and NAME_count.
# ---------------------------------------------------------------------------
PREFIX = "jobsup_"
COUNTERS = {
    "jobs_submitted_total": {"type"},
    "jobs_started_total": {"type"},
    "jobs_succeeded_total": {"type"},
    "jobs_failed_total": {"type", "kind"},
    "jobs_retried_total": {"type", "kind"},
    "worker_restarts_total": {"pool", "reason"},
}
HISTOGRAMS = {
    "job_duration_seconds": {"type"},
    "job_queue_wait_seconds": {"type"},
}
GAUGES = {
    "queue_depth": {"pool"},
    "jobs_running": {"pool"},
    "workers": {"pool", "state"},
    "worker_rss_bytes": {"pool", "worker"},
    "circuit_state": {"type"},
    "dead_letter_jobs": set(),
    "redis_up": set(),
    "pool_degraded": {"pool"},
}
# Labels that Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def _exposed() -> dict[str, set[str]]:
    """Every series name the daemon may expose -> the labels it may carry."""
    out: dict[str, set[str]] = {}
    for name, labels in {**COUNTERS, **GAUGES}.items():
        out[PREFIX + name] = labels | TARGET_LABELS
    for name, labels in HISTOGRAMS.items():
        out[PREFIX + name + "_bucket"] = labels | TARGET_LABELS | {"le"}
        out[PREFIX + name + "_sum"] = labels | TARGET_LABELS
        out[PREFIX + name + "_count"] = labels | TARGET_LABELS
    return out


EXPOSED = _exposed()
FAMILIES = (
    {PREFIX + n for n in COUNTERS} | {PREFIX + n for n in GAUGES} | {PREFIX + n for n in HISTOGRAMS}
)


def _family(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base[len(PREFIX) :] in HISTOGRAMS:
            return base
    return series


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------
TOML_FILES = sorted(ETC.rglob("*.toml"))


def test_the_example_configs_exist():
    names = {p.name for p in TOML_FILES}
    assert {"jobsup.example.toml", "jobsup.minimal.toml"} <= names


@pytest.mark.parametrize("path", TOML_FILES, ids=lambda p: str(p.relative_to(ETC)))
def test_every_toml_in_etc_loads(path: Path):
    cfg = config_mod.load(path)
    assert cfg.pools
    assert cfg.jobs
    for job in cfg.jobs.values():
        assert job.handler.startswith("examples.demo:"), job.handler


def test_example_uses_the_documented_state_dir():
    assert config_mod.load(EXAMPLE).daemon.state_dir == "/var/lib/jobsup"


def _unwrap(annotation: object) -> list[object]:
    """Strip Annotated, Optional and unions down to the member types."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _children(annotation: object) -> list[tuple[str, object]]:
    """(path suffix, type) of what a field holds: "" for a list item or a
    nested model, ".*" for the values of a dict (one table per key)."""
    out = []
    for t in _unwrap(annotation):
        origin = typing.get_origin(t)
        if origin is list:
            out += [("", inner) for inner in _unwrap(typing.get_args(t)[0])]
        elif origin is dict:
            out += [(".*", inner) for inner in _unwrap(typing.get_args(t)[1])]
        elif t is dict:
            out.append((".*", object))
        else:
            out.append(("", t))
    return out


def _is_model(t: object) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def model_tables(model: type[BaseModel] = config_mod.Config, path: str = ""):
    """{table template: model} for Config and every model nested in it; "*"
    stands for one dict key (``jobs.*`` is any [jobs.NAME] table)."""
    tables = {path: model}
    for name, field in model.model_fields.items():
        key = field.alias or name
        for suffix, inner in _children(field.annotation):
            if _is_model(inner):
                tables.update(model_tables(inner, _join(path, key) + suffix))
    return tables


def free_tables(model: type[BaseModel] = config_mod.Config, path: str = "") -> set[str]:
    """Templates of free-form maps (e.g. ``pools.env``) whose keys are user data."""
    out = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        for suffix, inner in _children(field.annotation):
            if _is_model(inner):
                out |= free_tables(inner, _join(path, key) + suffix)
            elif suffix == ".*":
                out.add(_join(path, key))
    return out


def _matches(template: str, table: str) -> bool:
    pattern = (
        r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in template.split("."))
        if template
        else ""
    )
    return re.fullmatch(pattern, table) is not None


_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*(#)?\s*([A-Za-z_][\w-]*)\s*=\s*(.*)$")
_INLINE_KEY = re.compile(r"[{,]\s*([A-Za-z_][\w-]*)\s*=")


def scan_keys(text: str) -> list[tuple[str, str, bool]]:
    """(table, key, commented) for every ``key = value`` and ``# key = value``
    line; keys of an inline table ``k = { a = 1 }`` count as table ``T.k``."""
    table = ""
    found = []
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            table = ".".join(part.strip().strip('"') for part in header.group(1).split("."))
            continue
        key = _KEY.match(line)
        if not key:
            continue
        commented, name, value = bool(key.group(1)), key.group(2), key.group(3)
        found.append((table, name, commented))
        if value.lstrip().startswith("{"):
            found += [
                (_join(table, name), inner, commented) for inner in _INLINE_KEY.findall(value)
            ]
    return found


def test_the_model_walk_sees_every_model():
    tables = model_tables()
    assert tables[""] is config_mod.Config
    assert tables["pools"] is config_mod.PoolConfig
    assert tables["jobs.*"] is config_mod.JobTypeConfig
    assert tables["jobs.*.backoff"] is config_mod.Backoff
    assert tables["jobs.*.circuit_breaker"] is config_mod.CircuitBreaker
    assert "schema" in {f.alias or n for n, f in config_mod.JobTypeConfig.model_fields.items()}


def test_example_names_every_key_of_every_model():
    found = scan_keys(EXAMPLE.read_text())
    tables = {t for t, _, _ in found}
    missing = []
    for template, model in model_tables().items():
        for name, field in model.model_fields.items():
            key = field.alias or name
            as_key = any(_matches(template, t) and k == key for t, k, _ in found)
            child = _join(template, key)
            as_table = any(_matches(child, t) or _matches(child + ".*", t) for t in tables)
            if not (as_key or as_table):
                missing.append(f"{template or '(top)'}: {key}")
    assert not missing, f"keys not in {EXAMPLE.name}: {missing}"


def test_example_has_no_unknown_key_even_commented_out():
    templates = model_tables()
    free = free_tables()
    unknown = []
    for table, key, _commented in scan_keys(EXAMPLE.read_text()):
        if any(_matches(t, table) for t in free):
            continue
        models = [m for t, m in templates.items() if _matches(t, table)]
        if not models:
            unknown.append(f"[{table}] is no config table")
            continue
        known = {f.alias or n for m in models for n, f in m.model_fields.items()}
        if key not in known:
            unknown.append(f"{table}.{key}")
    assert not unknown, unknown


def test_example_shows_two_full_job_tables_and_a_gpu_pool():
    cfg = config_mod.load(EXAMPLE)
    job_keys = {f.alias or n for n, f in config_mod.JobTypeConfig.model_fields.items()}
    found = scan_keys(EXAMPLE.read_text())
    full = [
        name
        for name in cfg.jobs
        if job_keys
        <= {k for t, k, _ in found if t == f"jobs.{name}"}
        | {t.split(".")[2] for t, _, _ in found if t.startswith(f"jobs.{name}.")}
    ]
    assert len(full) >= 2, f"want two [jobs.NAME] tables with every key, got {full}"
    gpu = [p for p in cfg.pools if p.gpus]
    assert gpu, "the example should show a GPU pool"
    pool = gpu[0]
    assert pool.memory_limit_kind == "data"
    assert pool.memory_limit and pool.max_rss and pool.max_jobs_per_worker
    text = EXAMPLE.read_text()
    assert "RLIMIT_AS" in text and "RLIMIT_DATA" in text and "PROT_NONE" in text


# ---------------------------------------------------------------------------
# Metrics in the dashboard and the alert rules
# ---------------------------------------------------------------------------
_SERIES = re.compile(r"\b(jobsup_[A-Za-z0-9_:]+)")
_SELECTOR = re.compile(r"\b(jobsup_[A-Za-z0-9_:]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*(jobsup_\w+)\s*,\s*(\w+)\s*\)")


def metric_problems(expr: str) -> list[str]:
    """Names and labels in one PromQL expression that DESIGN.md does not define."""
    problems = []
    used = _SERIES.findall(expr)
    for series in used:
        if series not in EXPOSED:
            problems.append(f"unknown series {series}")
    for series, matchers in _SELECTOR.findall(expr):
        for label in _MATCHER.findall(matchers):
            if series in EXPOSED and label not in EXPOSED[series]:
                problems.append(f"{series} has no label {label!r}")
    allowed = set().union(*(EXPOSED.get(s, set()) for s in used)) if used else TARGET_LABELS
    for group in _GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in allowed:
                problems.append(f"grouping by {label!r}, which none of {used} has")
    for series, label in _LABEL_VALUES.findall(expr):
        if label not in EXPOSED.get(series, set()):
            problems.append(f"label_values: {series} has no label {label!r}")
    return problems


def test_the_metric_checker_rejects_wrong_names_and_labels():
    assert metric_problems("sum by (type) (rate(jobsup_jobs_failed_total{kind='x'}[5m]))") == []
    assert metric_problems("rate(jobsup_jobs_failed[5m])")
    assert metric_problems("jobsup_job_duration_seconds")  # a histogram has no bare series
    assert metric_problems("jobsup_queue_depth{type='x'}")
    assert metric_problems("sum by (node) (jobsup_redis_up)")


def dashboard_exprs(node: object) -> list[str]:
    """Every PromQL string in the dashboard: panel targets and variable queries."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            promql_key = key in ("expr", "definition") or (
                key == "query" and "jobsup_" in str(value)
            )
            if promql_key and isinstance(value, str):
                out.append(value)
            else:
                out += dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            out += dashboard_exprs(item)
    return out


def test_dashboard_uses_only_design_metrics_and_covers_them_all():
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dash)
    assert exprs
    problems = [f"{p}  in  {e}" for e in exprs for p in metric_problems(e)]
    assert not problems, "\n".join(problems)
    used = {_family(s) for e in exprs for s in _SERIES.findall(e)}
    assert FAMILIES - used == set(), f"metrics without a panel: {sorted(FAMILIES - used)}"
    quantiles = [e for e in exprs if "histogram_quantile" in e]
    assert any("jobsup_job_duration_seconds_bucket" in e for e in quantiles)
    assert any("jobsup_job_queue_wait_seconds_bucket" in e for e in quantiles)


def test_dashboard_is_importable_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = []
    for panel in dash["panels"]:
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def parse_alert_rules(text: str) -> list[dict]:
    """Alert rules of a Prometheus rules file, by indentation: enough for the
    layout of etc/prometheus (``- alert:`` items, block or inline scalars)."""
    assert "\t" not in text, "YAML forbids tabs in indentation"
    assert re.search(r"(?m)^groups:\s*$", text)
    lines = text.splitlines()
    rules: list[dict] = []
    i = 0
    while i < len(lines):
        start = re.match(r"^(\s*)- alert:\s*(\S+)\s*$", lines[i])
        if not start:
            i += 1
            continue
        rule = {"alert": start.group(2), "labels": {}, "annotations": {}}
        item_indent = len(start.group(1))
        i += 1
        section = None
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > item_indent):
            line = lines[i]
            m = re.match(r"^(\s*)([A-Za-z_]\w*):\s*(.*)$", line)
            if not m:
                i += 1
                continue
            indent, key, value = len(m.group(1)), m.group(2), m.group(3).strip()
            if value in ("|", "|-", ">", ">-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
                    block.append(lines[i].strip())
                    i += 1
                value = " ".join(b for b in block if b)
            else:
                i += 1
            value = value.strip().strip('"')
            if key in ("labels", "annotations") and not value:
                section = key
            elif section and indent > item_indent + 2:
                rule[section][key] = value
            else:
                section = None
                rule[key] = value
        rules.append(rule)
    return rules


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def test_the_rules_parser_reads_block_and_inline_scalars():
    text = (
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n"
        "          sum(\n            jobsup_redis_up)\n        for: 1m\n"
        "        labels:\n          severity: critical\n        annotations:\n"
        '          summary: "s"\n          description: >-\n            d1\n            d2\n'
        "      - alert: B\n        expr: jobsup_redis_up == 0\n"
    )
    a, b = parse_alert_rules(text)
    assert a["expr"] == "sum( jobsup_redis_up)"
    assert a["labels"] == {"severity": "critical"}
    assert a["annotations"] == {"summary": "s", "description": "d1 d2"}
    assert a["for"] == "1m"
    assert b["expr"] == "jobsup_redis_up == 0"


def test_alert_rules_use_only_design_metrics():
    rules = parse_alert_rules(ALERTS.read_text())
    assert len(rules) >= 10
    problems = [f"{r['alert']}: {p}" for r in rules for p in metric_problems(r["expr"])]
    assert not problems, "\n".join(problems)
    exprs_in_file = re.findall(r"(?m)^\s*expr:", ALERTS.read_text())
    assert len(exprs_in_file) == len(rules), "an expr outside an alert rule was not checked"


def test_alert_rules_are_actionable():
    rules = parse_alert_rules(ALERTS.read_text())
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule["labels"].get("severity") in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]
        assert len(rule["annotations"].get("description", "")) > 40, rule["alert"]
    text = ALERTS.read_text()
    assert "jobsup status" in text and "jobsup dlq list" in text


@pytest.mark.parametrize(
    "needle",
    [
        'up{job="jobsup"} == 0',
        "absent(up",
        "jobsup_redis_up == 0",
        "jobsup_pool_degraded == 1",
        "jobsup_circuit_state) == 2",
        "jobsup_dead_letter_jobs",
        "jobsup_jobs_failed_total",
        "jobsup_queue_depth",
        "jobsup_jobs_running",
        "jobsup_worker_restarts_total",
        'reason="memory"',
        "jobsup_job_duration_seconds_bucket",
    ],
)
def test_alert_rules_cover(needle: str):
    exprs = [r["expr"] for r in parse_alert_rules(ALERTS.read_text())]
    assert any(needle in e for e in exprs), f"no alert rule uses {needle}"


def test_circuit_alert_waits_five_minutes():
    rule = next(
        r for r in parse_alert_rules(ALERTS.read_text()) if "jobsup_circuit_state" in r["expr"]
    )
    assert rule.get("for") == "5m"
