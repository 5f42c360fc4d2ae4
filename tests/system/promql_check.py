#!/usr/bin/env python3
"""Checks a live Prometheus that scrapes a gandist run (used by tests/system/prometheus.sh).

Usage: promql_check.py PROMETHEUS_URL RANKS DASHBOARD.json... -- RULES.yml...

1. Every gandist metric family (and the process metrics) has series for every rank 0..RANKS-1.
2. Every PromQL expression of every dashboard panel parses and returns data. Grafana's
   variables are replaced: $__rate_interval -> 10s, $__interval -> 2s, $__range -> 1m.
3. Every alert rule parses, and returns data once its threshold comparisons are made `bool`
   comparisons (`x > 1000` -> `x > bool 1000`), which yield 0 or 1 for every series whether or
   not the alert fires: so each alert is shown to see the metrics it watches (each operand of
   a top-level `or` on its own, as `or` hides the right side's series behind the left's).
Prints one line per check; exits 1 when any check fails.
"""
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import yaml

FAMILIES = [
    "gandist_loss", "gandist_wasserstein_estimate", "gandist_gp_input_grad_norm", "gandist_layer_grad_norm",
    "gandist_grad_norm_before_clip", "gandist_grad_norm_after_clip", "gandist_clip_events_total",
    "gandist_nonfinite_skipped_updates_total", "gandist_gradient_health", "gandist_learning_rate",
    "gandist_updates_total", "gandist_images_processed_total", "gandist_step_phase_seconds",
    "gandist_allreduce_bytes_total", "gandist_world_size", "gandist_step", "gandist_target_step", "gandist_build_info",
    "gandist_eval_fid", "gandist_eval_classes_covered", "gandist_eval_step",
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
]
HISTOGRAMS = {"gandist_step_phase_seconds"}
GRAFANA_VARS = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m"}
# A comparison operator followed by a number (not a label matcher, which a quote follows).
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*)(?=[-+]?(\d|\.\d))")

failures = []


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    return body


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def expect_data(base, name, expr):
    body = query(base, expr)
    if body.get("status") != "success":
        check(name, False, f"{body.get('errorType')}: {body.get('error')} in {expr!r}")
        return None
    result = body["data"]["result"]
    check(name, len(result) > 0, f"{len(result)} series" if result else f"no data for {expr!r}")
    return result


def top_level_or(expr):
    """The operands of `or` outside any parentheses or brackets (the whole expression if none)."""
    arms, depth, start = [], 0, 0
    for m in re.finditer(r"[()\[\]{}]|\bor\b", expr):
        tok = m.group(0)
        if tok in "([{":
            depth += 1
        elif tok in ")]}":
            depth -= 1
        elif depth == 0:
            arms.append(expr[start:m.start()])
            start = m.end()
    arms.append(expr[start:])
    return [a.strip() for a in arms]


def main(argv):
    base, ranks, rest = argv[0].rstrip("/"), int(argv[1]), argv[2:]
    sep = rest.index("--")
    dashboards, rule_files = rest[:sep], rest[sep + 1:]
    want = {str(r) for r in range(ranks)}

    for fam in FAMILIES:
        series = f"{fam}_count" if fam in HISTOGRAMS else fam
        result = query(base, f"count by (rank) ({series})")["data"]["result"]
        got = {s["metric"].get("rank") for s in result}
        check(f"family {fam}", got == want, f"ranks {sorted(got)} (want {sorted(want)})")
    result = query(base, 'up{job="gandist"} == 1')["data"]["result"]
    check("scrape targets up", {s["metric"].get("rank") for s in result} == want, f"{len(result)} up")

    n_panels = 0
    for path in dashboards:
        dash = json.load(open(path))
        panels = list(dash.get("panels", []))
        for p in list(panels):
            panels.extend(p.get("panels", []))
        for p in panels:
            for t in p.get("targets", []):
                expr = t.get("expr")
                if not expr:
                    continue
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                n_panels += 1
                expect_data(base, f"panel {p.get('title')!r} {t.get('refId')}", expr)
    check("dashboard queries found", n_panels > 0, f"{n_panels} queries")

    n_rules = 0
    for path in rule_files:
        for group in yaml.safe_load(open(path))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                expr = rule["expr"].strip()
                n_rules += 1
                body = query(base, expr)
                check(f"rule {name} parses", body.get("status") == "success", body.get("error") or "ok")
                if rule.get("alert"):
                    as_bool = COMPARISON.sub(lambda m: f"{m.group(1)} bool{m.group(2) or ' '}", expr)
                    check(f"rule {name} is a comparison", as_bool != expr, as_bool.replace("\n", " "))
                    # `a or b` hides b's series where a has the same labels: check each arm.
                    for i, arm in enumerate(top_level_or(as_bool)):
                        expect_data(base, f"rule {name} sees its metrics ({i + 1})", arm)
                else:
                    expect_data(base, f"rule {name}", expr)
    check("rules found", n_rules > 0, f"{n_rules} rules")

    print(f"promql checks: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
