"""Prometheus configuration and rule files for other targets and intervals, from the one committed copy.

The native launcher and the tests run the same prometheus/prometheus.yml, prometheus/rules/*.yml,
alerting/alerts.yml and alerting/budgets.rules.yml as docker-compose, with local targets and (for tests)
a short evaluation interval. Interval-dependent parts of the rules are rewritten together: each group's
`interval` and every `offset <that interval>` in its expressions (the per-evaluation deltas of the
accounting rules must look back exactly one evaluation; see docs/rules.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.errors import ConfigError

RULE_SOURCES = ("prometheus/rules/*.yml", "alerting/alerts.yml", "alerting/budgets.rules.yml")
# The accounting rules' look-back (how long an outage may last without losing a total). It must stay
# well above the evaluation interval, so for intervals longer than the committed one it grows with them.
LOOKBACK = "10m"


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def render_prometheus_config(
    repo_root: Path,
    targets: dict[str, list[str]],
    alertmanagers: list[str],
    scrape_interval: str,
    evaluation_interval: str,
    rule_dir: Path,
) -> str:
    """prometheus/prometheus.yml with `targets` per scrape job: jobs of the file keep their settings
    (honor_labels for the Pushgateway), jobs `targets` does not name are left out (their compose hostnames
    do not resolve locally), new names become plain jobs. Plus the given Alertmanagers (none: no alerting
    section), intervals, and rule files `rule_dir/*.yml` (what render_rules wrote)."""
    parse_duration(scrape_interval, "scrape_interval")
    parse_duration(evaluation_interval, "evaluation_interval")
    cfg = _load(Path(repo_root) / "prometheus" / "prometheus.yml")
    if not isinstance(cfg, dict):
        raise ConfigError("prometheus/prometheus.yml: expected a mapping")
    cfg.setdefault("global", {})
    cfg["global"]["scrape_interval"] = scrape_interval
    cfg["global"]["evaluation_interval"] = evaluation_interval
    cfg["rule_files"] = [str(Path(rule_dir).resolve() / "*.yml")]
    if alertmanagers:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    else:
        cfg.pop("alerting", None)
    jobs = [job for job in cfg.get("scrape_configs") or [] if job.get("job_name") in targets]
    seen = set()
    for job in jobs:
        job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
        seen.add(job["job_name"])
    for name, tgts in targets.items():
        if name not in seen:
            jobs.append({"job_name": name, "static_configs": [{"targets": list(tgts)}]})
    cfg["scrape_configs"] = jobs
    return _dump(cfg)


def rule_files(repo_root: Path) -> list[Path]:
    root = Path(repo_root)
    out: list[Path] = []
    for pattern in RULE_SOURCES:
        out += sorted(root.glob(pattern))
    return out


def rewrite_group(group: dict[str, Any], evaluation_interval: float, base_interval: float,
                  for_override: str | None = None) -> dict[str, Any]:
    """One rule group for `evaluation_interval` (seconds). Groups at the base interval move to the new one,
    longer groups are scaled by the same factor (never below it); `offset <old>` becomes `offset <new>`,
    and the `[LOOKBACK]` ranges grow in proportion when the interval grows."""
    old_text = group.get("interval")
    old = parse_duration(old_text, f"group {group.get('name')} interval") if old_text else base_interval
    if old == base_interval:
        new = evaluation_interval
    else:
        new = max(evaluation_interval, old * evaluation_interval / base_interval)
    out = dict(group)
    out["interval"] = format_duration(new)
    pattern = re.compile(r"offset\s+" + re.escape(format_duration(old)) + r"\b")
    lookback = f"[{format_duration(parse_duration(LOOKBACK) * new / old)}]" if new > old else f"[{LOOKBACK}]"
    rules = []
    for rule in group.get("rules") or []:
        r = dict(rule)
        r["expr"] = pattern.sub(f"offset {format_duration(new)}", str(r["expr"])).replace(f"[{LOOKBACK}]", lookback)
        if for_override is not None and "alert" in r:
            r["for"] = for_override
        rules.append(r)
    out["rules"] = rules
    return out


def render_rules(repo_root: Path, dest_dir: Path, evaluation_interval: str,
                 for_override: str | None = None) -> list[Path]:
    """Copies every rule file (prometheus/rules/*.yml, alerting/alerts.yml, alerting/budgets.rules.yml)
    into `dest_dir`, rewritten for `evaluation_interval`; `for_override` (tests) replaces each alert's
    `for:`. Returns the written paths."""
    new = parse_duration(evaluation_interval, "evaluation_interval")
    if new <= 0:
        raise ConfigError("evaluation_interval: must be more than 0")
    cfg = _load(Path(repo_root) / "prometheus" / "prometheus.yml")
    base = parse_duration(cfg.get("global", {}).get("evaluation_interval", "1m"), "global.evaluation_interval")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src in rule_files(repo_root):
        data = _load(src)
        if not data or not data.get("groups"):
            continue
        data["groups"] = [rewrite_group(g, new, base, for_override) for g in data["groups"]]
        out = dest / src.name
        out.write_text(f"# Rendered from {src.relative_to(repo_root)} for evaluation_interval {evaluation_interval}.\n"
                       + _dump(data))
        written.append(out)
    return written
