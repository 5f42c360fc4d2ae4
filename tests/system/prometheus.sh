#!/usr/bin/env bash
# System test of the monitoring: one real Prometheus (Debian's) scrapes two concurrent gandist
# runs (a 2-rank mpirun run and a single-process run) that it finds through one file_sd glob
# over the shared service-discovery folder (metrics.sd_dir), and then
#   - every gandist metric family has series for every rank of both runs, targets labelled
#     with run, rank and node;
#   - the dashboard's variables ($datasource, $job, $run, $rank) find the job, both runs and
#     their ranks; every panel query filters every selector by them, and returns data for the
#     selected run (and rank) only (tests/system/promql_check.py);
#   - every alert rule parses, sees its metrics, and links a runbook section of the docs;
#   - `promtool check metrics` passes on each rank's exposition; /healthz answers;
#   - `promtool check config` and `promtool test rules` pass;
#   - the dashboard type-checks against @grafana/schema (npm, TypeScript; cached in
#     $GANDIST_CACHE/grafana-schema) and the provisioning/compose YAML parses;
#   - the runs, stopped by SIGTERM, remove their files from the folder, empty their run
#     directory's targets file and leave their PNG plots.
# Every daemon and run is stopped by pid, also when a check fails. About 1-2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. launch/env.sh
export OMPI_MCA_rmaps_base_oversubscribe=1

BIN=target/debug/gandist
DATA="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
SCHEMA_DIR="$GANDIST_CACHE/grafana-schema"
GRAFANA_SCHEMA_VERSION=13.2.3
TYPESCRIPT_VERSION=7.0.2
# The checks' Python packages, pinned, in a cached venv.
PY_VENV="$GANDIST_CACHE/promql-check-venv"
PY_PACKAGES="pyyaml==6.0.3 promql-parser==0.12.0"
[ -x "$BIN" ] || cargo build --bin gandist

tmp="$(mktemp -d /tmp/gandist-prometheus.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
say() { echo "--- $*"; }
fail() { echo "FAIL: $*" >&2; for f in "$tmp"/*.log; do echo "== $f" >&2; tail -20 "$f" >&2; done; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [ ! -x "$PY_VENV/bin/python" ] || [ "$(cat "$PY_VENV/packages" 2>/dev/null)" != "$PY_PACKAGES" ]; then
  rm -rf "$PY_VENV"
  python3 -m venv "$PY_VENV" && "$PY_VENV/bin/pip" install -q $PY_PACKAGES || fail "pip install $PY_PACKAGES"
  echo "$PY_PACKAGES" >"$PY_VENV/packages"
fi
PY="$PY_VENV/bin/python"

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
assert ds["type"] == "prometheus" and ds.get("isDefault"), ds
dash = json.load(open(f"{m}/grafana/dashboards/gandist.json"))
# Panels name the data source through the $datasource variable, which picks the default
# Prometheus (the provisioned one here, any other after an import elsewhere).
uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
assert uids == {"${datasource}"}, f"panels use data sources {uids}, not the $datasource variable"
yaml.safe_load(open(f"{m}/grafana/provisioning/dashboards/gandist.yml"))["providers"][0]["options"]["path"]
print("compose, data source and dashboard provider ok")
EOF

sd="$tmp/sd"
common=(--config configs/smoke.toml --data "$DATA" --set train.iterations=100000 --set train.log_every=5
  --set train.sample_every=100000 --set train.checkpoint_every=100000 --set metrics.enabled=true
  --set metrics.port_base=0 --set "metrics.sd_dir=$sd")
say "start two runs with metrics on free ports, both listed in $sd: runA (mpirun -n 2), runB (1 process)"
mpirun -n 2 "$BIN" train --run-dir "$tmp/runA" "${common[@]}" >"$tmp/trainA.log" 2>&1 &
pid_a=$!; pids+=("$pid_a")
"$BIN" train --run-dir "$tmp/runB" "${common[@]}" >"$tmp/trainB.log" 2>&1 &
pid_b=$!; pids+=("$pid_b")
listed() { cat "$sd"/gandist-*.json 2>/dev/null | jq -s 'map(length) | add // 0'; }
for _ in $(seq 120); do
  [ "$(ls "$sd"/gandist-runA-*.json "$sd"/gandist-runB-*.json 2>/dev/null | wc -l)" = 2 ] && [ "$(listed)" = 3 ] && break
  kill -0 "$pid_a" 2>/dev/null || fail "runA ended early"
  kill -0 "$pid_b" 2>/dev/null || fail "runB ended early"
  sleep 0.5
done
[ "$(listed)" = 3 ] || fail "no 3 targets in $sd: $(ls -la "$sd" 2>&1)"
ls "$sd"
jq -c '.[]' "$sd"/gandist-*.json

say "each rank's exporter: /healthz, /metrics through promtool check metrics"
for t in $(jq -r '.[].targets[0]' "$sd"/gandist-*.json); do
  [ "$(curl -sf "http://$t/healthz")" = ok ] || fail "/healthz of $t"
  curl -sf "http://$t/metrics" >"$tmp/exposition.txt" || fail "/metrics of $t"
  promtool check metrics <"$tmp/exposition.txt" || fail "promtool check metrics on $t"
  echo "$t: $(grep -c '^# TYPE' "$tmp/exposition.txt") families, promtool check metrics ok"
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://$t/nope")"
  [ "$code" = 404 ] || fail "unknown path on $t answered $code"
done

say "start Prometheus (scrape every 1 s) on the shipped config, its glob pointed at $sd"
mkdir -p "$tmp/prom"
cp monitoring/prometheus/alerts.yml "$tmp/prom/"
grep -q '/gandist-sd/gandist-\*.json' monitoring/prometheus/prometheus.yml || fail "the shipped config has no glob /gandist-sd/gandist-*.json"
sed -e "s#/gandist-sd/#$sd/#" -e 's/scrape_interval: .*/scrape_interval: 1s/' \
  -e 's/scrape_timeout: .*/scrape_timeout: 900ms/' -e 's/evaluation_interval: .*/evaluation_interval: 1s/' \
  -e 's/refresh_interval: .*/refresh_interval: 1s/' monitoring/prometheus/prometheus.yml >"$tmp/prom/prometheus.yml"
promtool check config "$tmp/prom/prometheus.yml" || fail "promtool check config (test copy)"
port="$(free_port)"
prometheus --config.file="$tmp/prom/prometheus.yml" --storage.tsdb.path="$tmp/prom/data" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!; pids+=("$prom_pid")
url="http://127.0.0.1:$port"
# Queryable once all 3 ranks are up and enough 1 s samples exist for the 10 s rate windows.
ready=""
for _ in $(seq 60); do
  kill -0 "$prom_pid" 2>/dev/null || fail "Prometheus exited"
  kill -0 "$pid_a" 2>/dev/null && kill -0 "$pid_b" 2>/dev/null || fail "a run ended before Prometheus had data"
  n="$(curl -sf "$url/api/v1/query" --data-urlencode 'query=count(count_over_time(gandist_step[30s]) >= 8)' | jq -r '.data.result[0].value[1] // 0' || echo 0)"
  [ "$n" = 3 ] && { ready=1; break; }
  sleep 1
done
[ -n "$ready" ] || fail "Prometheus has no 8 samples of all 3 ranks within 60 s"
"$PY" tests/system/promql_check.py "$url" runA=2,runB=1 monitoring/grafana/dashboards/*.json -- monitoring/prometheus/alerts.yml \
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

say "stop both runs with SIGTERM: they checkpoint, leave $sd, empty their targets files and write plots"
# Signal the ranks (mpirun's children, and runB itself), which agree on a stop at the next update.
for p in $(pgrep -P "$pid_a") "$pid_b"; do kill -TERM "$p"; done
rc_a=0; wait "$pid_a" || rc_a=$?
rc_b=0; wait "$pid_b" || rc_b=$?
for r in A B; do
  grep -q "stop requested" "$tmp/train$r.log" || fail "run$r did not stop cleanly (exit codes $rc_a, $rc_b)"
  [ "$(jq length "$tmp/run$r/prometheus-targets.json")" = 0 ] || fail "run$r's targets file not emptied at the end"
  for f in losses grad_norms; do
    [ "$(head -c 8 "$tmp/run$r/plots/$f.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "no PNG $tmp/run$r/plots/$f.png"
  done
done
[ -z "$(ls -A "$sd")" ] || fail "files left in metrics.sd_dir after clean ends: $(ls -A "$sd")"
echo "stopped (exit codes $rc_a, $rc_b); $sd empty; targets files emptied; plots written"

kill "$prom_pid"; wait "$prom_pid" 2>/dev/null || true
echo "prometheus system test: ok"
