#!/usr/bin/env bash
# The set-up on a machine that lacks what it installs. The README's first command once failed on
# a fresh machine because a file-name check mistook libclang-cpp (shipped by the image) for the
# libclang bindgen loads, while CI passed on a machine where the real one had been installed by
# hand. This test recreates that machine: it removes every package launch/setup.sh may install
# (except base tools the image itself depends on), keeps libclang-cpp14 (the decoy), then
#   1. checks the decoy is in place: the old check would have passed, the real need is unmet;
#   2. check-only mode reports the unmet needs by name with the apt-get command, exit 1;
#   3. the set-up installs them, and every consumer then works for real: mpi-sys builds with
#      bindgen in a fresh target dir, mpirun starts 2 ranks, the daemons and tools run.
# Needs root and apt (as CI has). Packages it removed are reinstalled by step 3; if step 3
# fails, so does this test (and the machine is left as a fresh one would be).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || { echo "FAIL: needs root and apt-get (set-up test)"; exit 1; }
tmp="$(mktemp -d /tmp/gandist-setup.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT

# Base tools of the image that other software here depends on, and Debian's essential
# packages (util-linux): never removed.
keep=" python3 build-essential pkg-config curl iproute2 npm python3-venv "
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
essential() { [ "$(dpkg-query -W -f='${Essential}' "$1" 2>/dev/null)" = yes ]; }
remove=()
while IFS='|' read -r _ _ pkg _; do
  case "$keep" in *" $pkg "*) continue ;; esac
  essential "$pkg" && continue
  installed "$pkg" && remove+=("$pkg")
done < <(GANDIST_SETUP_LIST=1 bash launch/setup.sh)
remove=($(printf '%s\n' "${remove[@]}" | sort -u))
echo "removing: ${remove[*]}"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q "${remove[@]}" >/dev/null
hash -r

# 1. The decoy: the image's libclang-cpp matches the old pattern, and no loadable libclang is left.
if ! installed libclang-cpp14; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libclang-cpp14 >/dev/null
fi
ls /usr/lib/x86_64-linux-gnu/libclang-*.so* >/dev/null 2>&1 || { echo "FAIL: decoy libclang-cpp missing"; exit 1; }

# 2. Check-only mode names what is missing and how to install it.
set +e
GANDIST_SETUP_CHECK=1 GANDIST_SETUP_ONLY=system bash launch/setup.sh >"$tmp/check.out" 2>&1
rc=$?
set -e
cat "$tmp/check.out"
[ "$rc" != 0 ] || { echo "FAIL: check-only set-up passed on a machine without ${remove[*]}"; exit 1; }
grep -q "loadable libclang" "$tmp/check.out" || { echo "FAIL: the missing libclang is not named"; exit 1; }
for p in "${remove[@]}"; do
  grep -q "apt-get install.* $p\b" "$tmp/check.out" || grep -q "apt-get install.* $p\$" "$tmp/check.out" \
    || { echo "FAIL: the install command does not name $p"; exit 1; }
done

# 3. The set-up installs what is missing; then each consumer works.
GANDIST_SETUP_ONLY=system bash launch/setup.sh
hash -r
. launch/env.sh
echo "--- mpi-sys (bindgen + libclang, mpicc) in a fresh target dir"
cargo build -q -p mpi-sys --target-dir "$tmp/target"
echo "--- mpirun"
[ "$(mpirun -n 2 --oversubscribe echo rank | grep -c rank)" = 2 ] || { echo "FAIL: mpirun -n 2"; exit 1; }
echo "--- daemons and tools"
for c in "slurmctld -V" "slurmd -V" "munged --version" "mungekey --version" "prometheus --version" "promtool --version" "jq --version"; do
  v="$($c 2>&1)" || { echo "FAIL: $c: $v"; exit 1; }
  echo "$c: ${v%%$'\n'*}"
done
v="$(bash -c '. /usr/share/modules/init/bash && module --version' 2>&1)" || { echo "FAIL: module: $v"; exit 1; }
echo "module --version: ${v%%$'\n'*}"
# The Slurm client reads a cluster's configuration even for --version: that it runs is enough.
for c in sbatch srun scontrol squeue; do command -v "$c" >/dev/null || { echo "FAIL: no $c"; exit 1; }; done
GANDIST_SETUP_CHECK=1 GANDIST_SETUP_ONLY=system bash launch/setup.sh
echo "PASS: set-up installs every need on a machine without ${remove[*]}"
