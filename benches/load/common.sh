# Shared by the load scripts (sourced): a temp work dir that is removed on exit (`KEEP=1`
# keeps it and says where), the processes a script starts (added to PIDS) stopped on exit,
# and a check for the tools a script needs.

# Makes $WORK (/tmp/switchyard-NAME.XXXXXX) and the exit trap.
start_work() { # name
  WORK=$(mktemp -d "/tmp/switchyard-$1.XXXXXX")
  # nginx workers drop privileges: the content must be reachable by them.
  chmod 755 "$WORK"
  PIDS=()
  trap cleanup EXIT
}

cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}

# Exits with a message naming the packages (`hint`) when a tool is missing.
need() { # hint tool...
  local hint=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "needs $tool ($hint)" >&2; exit 1; }
  done
}
