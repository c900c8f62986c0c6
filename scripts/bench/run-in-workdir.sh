# Sourced by the bench wrappers: builds dist/fitha, then runs one bench script (bun) with every
# temp file under one directory of /var/tmp that is removed on exit however the run ends; the
# bench's daemons die with it (setpriv --pdeathsig).
#   fitha_bench_run NAME SCRIPT.ts ARGS...
fitha_bench_run() {
  local name="$1" script="$2"
  shift 2
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  cd "$root"
  # shellcheck source=../lib/ensure-deps.sh
  . "$root/scripts/lib/ensure-deps.sh"
  fitha_ensure_deps "$root"
  bash scripts/build >&2
  work="$(mktemp -d "/var/tmp/fitha-bench-$name-XXXXXX")"
  child=""
  trap fitha_bench_finish EXIT
  trap 'exit 130' INT TERM
  # FITHA_TEST_TMPDIR: the etcd helper and the bench make their temp dirs under $work.
  FITHA_TEST_TMPDIR="$work" node_modules/.bin/bun "$script" "$@" &
  child=$!
  wait "$child"
}

fitha_bench_finish() {
  local status=$?
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    # The bench cleans up within about 30 s; after that it is killed (its children with it).
    for _ in $(seq 60); do kill -0 "$child" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
