#!/usr/bin/env bash
# The README's first command on a fresh machine: a clean checkout, a new virtual environment with
# `pip install .` only (no extras), then `cogo demo` from an empty directory with no COGO_* variable.
# Fails unless the demo's run completes.
#
#   .ci/fresh-venv-demo.sh                 # a clean clone of HEAD of this repository (what CI has)
#   .ci/fresh-venv-demo.sh --working-tree  # a copy of the working tree, uncommitted files included
#
# Environment: PYTHON (default python3), FRESH_DEMO_TIMEOUT_S (default 900, the demo's own deadline).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
deadline_s="${FRESH_DEMO_TIMEOUT_S:-900}"
work="$(mktemp -d "${TMPDIR:-/tmp}/cogo-fresh-venv.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

say() { printf '[fresh-venv-demo +%ss] %s\n' "$((SECONDS - started))" "$*"; }

case "${1:-}" in
  --working-tree)
    say "copying the working tree of $repo"
    mkdir "$work/src"
    # What a clone would hold, plus uncommitted and untracked (not ignored) files; deleted ones stay out.
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard) \
      | tar -C "$repo" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$work/src" -xf -
    ;;
  "")
    say "cloning HEAD of $repo"
    git clone --quiet --no-local --depth 1 "file://$repo" "$work/src"
    ;;
  *) echo "usage: $0 [--working-tree]" >&2; exit 2 ;;
esac

say "creating a fresh virtual environment with $("$python" --version)"
"$python" -m venv "$work/venv"
say "pip install . (no extras)"
# (The machine's pip config names extra local indexes that may be absent; pip's warnings about them are noise.)
if ! (cd "$work/src" && "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check . 2>&1) \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }; then
  say "FAILED: pip install . failed"
  exit 1
fi

mkdir "$work/empty"
say "cogo demo in an empty directory, no COGO_* variable"
# A clean environment: no COGO_*, no PYTHONPATH, no virtualenv of the caller; the fresh venv first on PATH.
set +e
(cd "$work/empty" && env -i HOME="$work/home" LANG=C.UTF-8 TMPDIR="${TMPDIR:-/tmp}" \
    PATH="$work/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    timeout --kill-after=30 "$deadline_s" cogo demo)
code=$?
set -e
if [ "$code" -ne 0 ]; then
  say "FAILED: cogo demo exited with $code"
  for log in "$work/empty/.cogo/logs/"*.log; do
    [ -f "$log" ] || continue
    echo "── last lines of $log ──"
    tail -n 15 "$log"
  done
  exit 1
fi
if [ ! -f "$work/empty/.cogo/cogo.db" ]; then
  say "FAILED: the demo kept no ledger under ./.cogo of the directory it ran from"
  exit 1
fi
say "passed: cogo demo completed from a fresh virtual environment in $((SECONDS - started))s"
