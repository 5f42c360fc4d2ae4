#!/usr/bin/env python3
"""Checks a live Prometheus that scrapes gandist runs (used by tests/system/prometheus.sh).

Usage: promql_check.py PROMETHEUS_URL RUN=RANKS[,RUN=RANKS...] DASHBOARD.json... -- RULES.yml...

RUN=RANKS names each run being scraped (its `run` label) and its number of ranks.

1. Every gandist metric family (and the process metrics) has series for every rank of every run.
2. The dashboard's template variables: $datasource is a Prometheus data source variable, and
   the $job, $run and $rank queries (label_values) find the job, both runs and each run's ranks.
3. Every PromQL expression of every dashboard panel, parsed (promql-parser): every vector
   selector filters by job="$job", run="$run" and rank=~"$rank", and panels use $datasource.
4. Every panel expression, with Grafana's variables replaced for each run in turn
   ($__rate_interval -> 10s, $__interval -> 2s, $__range -> 1m, $rank -> .* as "All"), parses
   and returns data; every returned series that keeps a `run` label is of the selected run,
   one that keeps `rank` is one of that run's ranks; with $rank = 1, only rank 1. The runs
   differ in world size, so the "World size" and "Ranks up" panels must give each run's own.
5. Every alert rule parses, and returns data once its threshold comparisons are made `bool`
   comparisons (`x > 1000` -> `x > bool 1000`), which yield 0 or 1 for every series whether or
   not the alert fires: so each alert is shown to see the metrics it watches (each operand of
   a top-level `or` on its own, as `or` hides the right side's series behind the left's).
   Each alert's runbook_url names a section of docs/monitoring.md that exists.
Prints one line per check; exits 1 when any check fails.
"""
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import promql_parser
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
# The filter every selector of a panel must carry: (label, match operator, value).
PANEL_FILTER = {("job", "=", "$job"), ("run", "=", "$run"), ("rank", "=~", "$rank")}
JOB = "gandist"
# A comparison operator followed by a number (not a label matcher, which a quote follows).
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*)(?=[-+]?(\d|\.\d))")
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../docs/monitoring.md")

failures = []


def get(base, path, params):
    url = f"{base}{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def query(base, expr):
    return get(base, "/api/v1/query", {"query": expr})


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


def selectors(expr):
    """Every vector selector of a parsed PromQL expression (matrix selectors included)."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def matchers(sel):
    """(label, op, value) of a selector's matchers; `op` as PromQL writes it."""
    ops = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}
    out = set()
    for m in sel.matchers.matchers:
        op = str(m.op)
        out.add((m.name, ops.get(op, op), m.value))
    return out


def slug(heading):
    """The anchor GitHub gives a markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def panels_of(dash):
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))
    return panels


def check_variables(base, dash, runs):
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    check("variables", set(variables) >= {"datasource", "job", "run", "rank"}, sorted(variables))
    ds = variables.get("datasource", {})
    check("variable datasource", ds.get("type") == "datasource" and ds.get("query") == "prometheus", json.dumps(ds)[:120])
    rank = variables.get("rank", {})
    check("variable rank has All = .*", rank.get("includeAll") and rank.get("allValue") == ".*", f"includeAll {rank.get('includeAll')}, allValue {rank.get('allValue')!r}")
    first = next(iter(runs))
    bindings = {"$job": JOB, "$run": first}
    want = {"job": {JOB}, "run": set(runs), "rank": {str(r) for r in range(runs[first])}}
    for name in ("job", "run", "rank"):
        v = variables.get(name, {})
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
        if not m:
            check(f"variable {name}", False, f"query {q!r} is not label_values(selector, label)")
            continue
        selector, label = m.group(1), m.group(2)
        for var, value in bindings.items():
            selector = selector.replace(var, value)
        check(f"variable {name} uses $datasource", v.get("datasource", {}).get("uid") == "${datasource}", v.get("datasource"))
        body = get(base, f"/api/v1/label/{label}/values", {"match[]": selector})
        got = set(body.get("data") or [])
        check(f"variable {name}", got == want[name], f"{q} -> {sorted(got)} (want {sorted(want[name])})")


def check_panels(base, dash, runs):
    n = 0
    for p in panels_of(dash):
        if p.get("type") == "row":
            continue
        title = p.get("title")
        if p.get("targets"):
            check(f"panel {title!r} data source", p.get("datasource", {}).get("uid") == "${datasource}", p.get("datasource"))
        for t in p.get("targets", []):
            raw = t.get("expr")
            if not raw:
                continue
            n += 1
            name = f"panel {title!r} {t.get('refId')}"
            if "datasource" in t:
                check(f"{name} data source", t["datasource"].get("uid") == "${datasource}", t["datasource"])
            expr = raw
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            try:
                sels = selectors(expr)
            except Exception as e:  # the parser's own error type
                check(f"{name} parses", False, f"{e} in {raw!r}")
                continue
            unfiltered = [str(s) for s in sels if not PANEL_FILTER <= matchers(s)]
            check(f"{name} filters every selector", sels and not unfiltered, unfiltered or f"{len(sels)} selectors")
            for run, ranks in runs.items():
                for rank, allowed in ((".*", {str(r) for r in range(ranks)}), ("1", {"1"})):
                    if rank == "1" and ranks < 2:
                        continue
                    e = expr.replace("$job", JOB).replace("$run", run).replace("$rank", rank)
                    result = expect_data(base, f"{name} run={run} rank={rank}", e)
                    if not result:
                        continue
                    stray = [s["metric"] for s in result
                             if s["metric"].get("run", run) != run or s["metric"].get("rank", next(iter(allowed))) not in allowed]
                    check(f"{name} run={run} rank={rank} shows only its own", not stray, stray or "yes")
                    if rank == ".*" and title in ("World size", "Ranks up"):
                        value = float(result[0]["value"][1])
                        check(f"{name} run={run} value", len(result) == 1 and value == ranks, f"{value} (want {ranks})")
    check("dashboard queries found", n > 0, f"{n} queries")


def check_rules(base, rule_files):
    docs = open(DOCS).read()
    anchors = {slug(h) for h in re.findall(r"^#+\s+(.*)$", docs, flags=re.M)}
    n = 0
    for path in rule_files:
        for group in yaml.safe_load(open(path))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                expr = rule["expr"].strip()
                n += 1
                body = query(base, expr)
                check(f"rule {name} parses", body.get("status") == "success", body.get("error") or "ok")
                if rule.get("alert"):
                    url = rule.get("annotations", {}).get("runbook_url", "")
                    page, _, anchor = url.partition("#")
                    check(f"rule {name} runbook", page == "docs/monitoring.md" and anchor in anchors, f"{url!r}")
                    as_bool = COMPARISON.sub(lambda m: f"{m.group(1)} bool{m.group(2) or ' '}", expr)
                    check(f"rule {name} is a comparison", as_bool != expr, as_bool.replace("\n", " "))
                    # `a or b` hides b's series where a has the same labels: check each arm.
                    for i, arm in enumerate(top_level_or(as_bool)):
                        expect_data(base, f"rule {name} sees its metrics ({i + 1})", arm)
                else:
                    expect_data(base, f"rule {name}", expr)
    check("rules found", n > 0, f"{n} rules")


def main(argv):
    base, spec, rest = argv[0].rstrip("/"), argv[1], argv[2:]
    runs = {}
    for item in spec.split(","):
        run, _, ranks = item.partition("=")
        runs[run] = int(ranks)
    sep = rest.index("--")
    dashboards, rule_files = rest[:sep], rest[sep + 1:]

    for fam in FAMILIES:
        series = f"{fam}_count" if fam in HISTOGRAMS else fam
        result = query(base, f"count by (run, rank) ({series})")["data"]["result"]
        got = {(s["metric"].get("run"), s["metric"].get("rank")) for s in result}
        want = {(run, str(r)) for run, n in runs.items() for r in range(n)}
        check(f"family {fam}", got == want, f"{len(got)} (run, rank) pairs (want {len(want)})")
    result = query(base, f'up{{job="{JOB}"}} == 1')["data"]["result"]
    got = {(s["metric"].get("run"), s["metric"].get("rank")) for s in result}
    check("scrape targets up", got == {(run, str(r)) for run, n in runs.items() for r in range(n)}, f"{len(result)} up")
    nodes = {s["metric"].get("node") for s in result}
    check("targets carry the node label", None not in nodes and "" not in nodes, sorted(map(str, nodes)))

    for path in dashboards:
        dash = json.load(open(path))
        check_variables(base, dash, runs)
        check_panels(base, dash, runs)
    check_rules(base, rule_files)

    print(f"promql checks: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
