#!/usr/bin/env bash
# System test of the monitoring: a real Prometheus (Debian's) scrapes a real 2-rank mpirun
# training run through the targets file that rank 0 writes, and then
#   - every gandist metric family has series for both ranks;
#   - every PromQL expression of the Grafana dashboard and of every alert rule parses and
#     returns data (tests/system/promql_check.py);
#   - `promtool check metrics` passes on each rank's exposition; /healthz answers;
#   - `promtool check config` and `promtool test rules` pass;
#   - the dashboard type-checks against @grafana/schema (npm, TypeScript; cached in
#     $GANDIST_CACHE/grafana-schema) and the provisioning/compose YAML parses;
#   - the run, stopped by SIGTERM, empties the targets file and leaves its PNG plots.
# Every daemon is stopped by pid. Takes about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
export OMPI_MCA_rmaps_base_oversubscribe=1

BIN=target/debug/gandist
DATA="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
SCHEMA_DIR="$GANDIST_CACHE/grafana-schema"
GRAFANA_SCHEMA_VERSION=13.2.3
TYPESCRIPT_VERSION=7.0.2
[ -x "$BIN" ] || cargo build --bin gandist

tmp="$(mktemp -d /tmp/gandist-prometheus.XXXXXX)"
train_pid=""; prom_pid=""
cleanup() {
  for p in $prom_pid $train_pid; do kill "$p" 2>/dev/null || true; done
  for p in $prom_pid $train_pid; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
say() { echo "--- $*"; }
fail() { echo "FAIL: $*" >&2; for f in "$tmp"/*.log; do echo "== $f" >&2; tail -20 "$f" >&2; done; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# PyYAML for the checks; a throwaway venv when the system python lacks it.
PY=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m venv "$tmp/venv" && "$tmp/venv/bin/pip" install -q pyyaml
  PY="$tmp/venv/bin/python"
fi

say "promtool check rules, test rules, check config (shipped files)"
promtool check rules monitoring/prometheus/alerts.yml || fail "promtool check rules"
(cd monitoring/prometheus && promtool test rules alerts_test.yml) || fail "promtool test rules"
promtool check config monitoring/prometheus/prometheus.yml || fail "promtool check config"

say "compose file and Grafana provisioning parse and point at files that exist"
"$PY" - <<'EOF' || fail "compose/provisioning"
import json, os, yaml
m = "monitoring"
compose = yaml.safe_load(open(f"{m}/docker-compose.yml"))
assert set(compose["services"]) == {"prometheus", "grafana"}, compose["services"].keys()
for svc in compose["services"].values():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("./"):
            assert os.path.exists(os.path.join(m, src)), f"compose mounts missing {src}"
ds = yaml.safe_load(open(f"{m}/grafana/provisioning/datasources/prometheus.yml"))["datasources"][0]
dash = json.load(open(f"{m}/grafana/dashboards/gandist.json"))
uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
assert uids == {ds["uid"]}, f"panels use data sources {uids}, provisioning defines {ds['uid']}"
yaml.safe_load(open(f"{m}/grafana/provisioning/dashboards/gandist.yml"))["providers"][0]["options"]["path"]
print("compose, data source and dashboard provider ok")
EOF

say "start a 2-rank training run with metrics on free ports"
run="$tmp/run"
mpirun -n 2 "$BIN" train --config configs/smoke.toml --data "$DATA" --run-dir "$run" \
  --set train.iterations=100000 --set train.log_every=5 --set train.sample_every=100000 \
  --set train.checkpoint_every=100000 --set metrics.enabled=true --set metrics.port_base=0 \
  >"$tmp/train.log" 2>&1 &
train_pid=$!
targets="$run/prometheus-targets.json"
for _ in $(seq 120); do
  [ -s "$targets" ] && [ "$(jq length "$targets")" = 2 ] && break
  kill -0 "$train_pid" 2>/dev/null || fail "training ended early"
  sleep 0.5
done
[ "$(jq length "$targets" 2>/dev/null)" = 2 ] || fail "no targets file with 2 ranks at $targets"
jq -c '.[]' "$targets"

say "each rank's exporter: /healthz, /metrics through promtool check metrics"
for t in $(jq -r '.[].targets[0]' "$targets"); do
  [ "$(curl -sf "http://$t/healthz")" = ok ] || fail "/healthz of $t"
  curl -sf "http://$t/metrics" >"$tmp/exposition.txt" || fail "/metrics of $t"
  promtool check metrics <"$tmp/exposition.txt" || fail "promtool check metrics on $t"
  echo "$t: $(grep -c '^# TYPE' "$tmp/exposition.txt") families, promtool check metrics ok"
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://$t/nope")"
  [ "$code" = 404 ] || fail "unknown path on $t answered $code"
done

say "start Prometheus (scrape every 1 s) on the shipped config, pointed at the run's targets"
mkdir -p "$tmp/prom"
cp monitoring/prometheus/alerts.yml "$tmp/prom/"
sed -e "s#/gandist-run/prometheus-targets.json#$targets#" -e 's/scrape_interval: .*/scrape_interval: 1s/' \
  -e 's/scrape_timeout: .*/scrape_timeout: 900ms/' -e 's/evaluation_interval: .*/evaluation_interval: 1s/' \
  -e 's/refresh_interval: .*/refresh_interval: 1s/' monitoring/prometheus/prometheus.yml >"$tmp/prom/prometheus.yml"
promtool check config "$tmp/prom/prometheus.yml" || fail "promtool check config (test copy)"
port="$(free_port)"
prometheus --config.file="$tmp/prom/prometheus.yml" --storage.tsdb.path="$tmp/prom/data" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
url="http://127.0.0.1:$port"
# Queryable once both ranks are up and enough 1 s samples exist for the 10 s rate windows.
ready=""
for _ in $(seq 60); do
  kill -0 "$prom_pid" 2>/dev/null || fail "Prometheus exited"
  kill -0 "$train_pid" 2>/dev/null || fail "training ended before Prometheus had data"
  n="$(curl -sf "$url/api/v1/query" --data-urlencode 'query=count(count_over_time(gandist_step[30s]) >= 8)' | jq -r '.data.result[0].value[1] // 0' || echo 0)"
  [ "$n" = 2 ] && { ready=1; break; }
  sleep 1
done
[ -n "$ready" ] || fail "Prometheus has no 8 samples of both ranks within 60 s"
"$PY" tests/system/promql_check.py "$url" 2 monitoring/grafana/dashboards/*.json -- monitoring/prometheus/alerts.yml \
  || fail "PromQL checks"

say "Grafana dashboard type-checks against @grafana/schema $GRAFANA_SCHEMA_VERSION"
if [ ! -x "$SCHEMA_DIR/node_modules/.bin/tsc" ] || ! grep -q "\"version\": \"$GRAFANA_SCHEMA_VERSION\"" "$SCHEMA_DIR/node_modules/@grafana/schema/package.json" 2>/dev/null; then
  mkdir -p "$SCHEMA_DIR"
  (cd "$SCHEMA_DIR" && npm install --no-audit --no-fund --silent "@grafana/schema@$GRAFANA_SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION") \
    || fail "npm install of @grafana/schema"
fi
for d in monitoring/grafana/dashboards/*.json; do
  check="$SCHEMA_DIR/check-$(basename "$d" .json).ts"
  "$PY" tests/system/dashboard_schema.py "$d" "$check"
  (cd "$SCHEMA_DIR" && node_modules/.bin/tsc --noEmit --strict --skipLibCheck --module nodenext --moduleResolution nodenext "$check") \
    || fail "$d does not type-check against @grafana/schema"
  echo "$d: type-checks"
done

say "stop the run with SIGTERM: it checkpoints, empties the targets file and writes plots"
# Signal the ranks (mpirun's children), which agree on a stop at the next update.
for p in $(pgrep -P "$train_pid"); do kill -TERM "$p"; done
rc=0; wait "$train_pid" || rc=$?
train_pid=""
grep -q "stop requested" "$tmp/train.log" || fail "run did not stop cleanly (mpirun exit $rc)"
[ "$(jq length "$targets")" = 0 ] || fail "targets file not emptied at the end: $(cat "$targets")"
for f in losses grad_norms; do
  [ "$(head -c 8 "$run/plots/$f.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "no PNG $run/plots/$f.png"
done
echo "stopped (mpirun exit $rc); targets emptied; plots written"

kill "$prom_pid"; wait "$prom_pid" 2>/dev/null || true; prom_pid=""
echo "prometheus system test: ok"
