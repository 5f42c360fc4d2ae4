#!/usr/bin/env bash
# Measures what the metrics exporter costs the training loop: the mean time of one training
# iteration (n_critic critic updates + 1 generator update) with metrics off, with the exporter
# on but never scraped, and with the exporter scraped every second (curl GET /metrics, what a
# Prometheus with scrape_interval 1s does). Single process, the variants interleaved ROUNDS
# times, medians reported. Iteration time comes from the run's metrics.jsonl (elapsed seconds
# between the first and the last logged step), so start-up is left out. Also reported: the
# CPU seconds of each whole run (less sensitive than wall time to other load on the machine)
# and how long one scrape takes to serve.
#
#   bash monitoring/measure-scrape-overhead.sh [ROUNDS] [ITERATIONS] [--set k=v ...]
#
# Uses target/debug/gandist (build it first) and configs/smoke.toml with larger networks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. launch/env.sh
rounds="${1:-3}"; iterations="${2:-150}"; shift 2 || shift $#
BIN=target/debug/gandist
DATA="${GANDIST_TEST_DATA:-$PWD/data/mnist}"
[ -x "$BIN" ] || { echo "build first: cargo build --bin gandist" >&2; exit 1; }
tmp="$(mktemp -d /tmp/gandist-scrape.XXXXXX)"
pids=""
trap 'for p in $pids; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT

# One run of a variant; prints its seconds per iteration.
one() {
  local variant="$1" run="$tmp/$1-$2" metrics=false
  shift 2
  [ "$variant" != off ] && metrics=true
  python3 -c 'import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime}\n")
sys.exit(rc)' "$run.cpu" "$BIN" train --config configs/smoke.toml --data "$DATA" --run-dir "$run" \
    --set critic.width=16 --set generator.width=16 --set model.latent=64 --set data.batch_size=32 --set train.threads=1 \
    --set train.iterations="$iterations" --set train.log_every=10 --set train.sample_every=100000 \
    --set train.checkpoint_every=100000 --set metrics.enabled=$metrics --set metrics.port_base=0 "$@" \
    >"$run.log" 2>&1 &
  local pid=$! scraper=""
  pids="$pid"
  if [ "$variant" = scraped ]; then
    until [ -s "$run/prometheus-targets.json" ] && [ "$(jq length "$run/prometheus-targets.json")" = 1 ]; do sleep 0.05; done
    local addr; addr="$(jq -r '.[0].targets[0]' "$run/prometheus-targets.json")"
    ( while kill -0 "$pid" 2>/dev/null; do
        curl -s -o /dev/null -w '%{time_total}\n' "http://$addr/metrics" >>"$tmp/scrape-seconds" || true
        sleep 1
      done ) &
    scraper=$!
    pids="$pid $scraper"
  fi
  wait "$pid"
  [ -n "$scraper" ] && wait "$scraper" 2>/dev/null || true
  python3 - "$run/metrics.jsonl" "$run.cpu" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
a, b = recs[0], recs[-1]
print((b["elapsed_seconds"] - a["elapsed_seconds"]) / (b["step"] - a["step"]), open(sys.argv[2]).read().strip())
EOF
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "rounds $rounds, $iterations iterations per run; seconds per iteration, CPU seconds per run:"
for r in $(seq "$rounds"); do
  for v in off on scraped; do
    s="$(one "$v" "$r" "$@")"
    echo "$v $s" | tee -a "$tmp/results"
  done
done
python3 - "$tmp/results" "$tmp/scrape-seconds" <<'EOF'
import statistics, sys
wall, cpu = {}, {}
for line in open(sys.argv[1]):
    v, s, c = line.split()
    wall.setdefault(v, []).append(float(s))
    cpu.setdefault(v, []).append(float(c))
bw, bc = statistics.median(wall["off"]), statistics.median(cpu["off"])
for v in ("off", "on", "scraped"):
    w, c = statistics.median(wall[v]), statistics.median(cpu[v])
    print(f"{v:8s} median {w * 1000:7.1f} ms/iteration ({(w / bw - 1) * 100:+5.1f}%), {c:6.2f} CPU s/run ({(c / bc - 1) * 100:+5.1f}%)"
          f"  runs: {', '.join(f'{x * 1000:.0f}' for x in wall[v])} ms; {', '.join(f'{x:.1f}' for x in cpu[v])} s")
s = sorted(float(x) for x in open(sys.argv[2]) if x.strip())
print(f"one scrape of /metrics: median {statistics.median(s) * 1000:.1f} ms, max {s[-1] * 1000:.1f} ms ({len(s)} scrapes)")
EOF
