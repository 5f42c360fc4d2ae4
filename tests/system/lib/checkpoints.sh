# Checkpoints of a gandist run directory, for the system tests. Source it.
#
#   newest_checkpoint RUN_DIR    the newest complete checkpoint folder (state and meta present),
#                                or nothing
#   checkpoint_step DIR          the step of a checkpoint folder (step-000000012 -> 12)

newest_checkpoint() {
  local d best="" best_step=-1 s
  for d in "$1"/checkpoints/step-*; do
    [ -f "$d/state.safetensors" ] && [ -f "$d/meta.json" ] || continue
    s="$(checkpoint_step "$d")"
    [ -n "$s" ] && [ "$s" -gt "$best_step" ] && { best="$d"; best_step="$s"; }
  done
  if [ -n "$best" ]; then echo "$best"; fi
}

checkpoint_step() {
  local s="${1##*/step-}"
  if [[ "$s" =~ ^[0-9]+$ ]]; then echo $((10#$s)); fi
}
