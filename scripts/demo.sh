#!/usr/bin/env bash
# The demo: builds fmig, then rehearses the maintenance window on throwaway local PostgreSQL
# clusters (see examples/demo.rs). Arguments go to the demo: --scale READINGS, --users N, --keep.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v initdb >/dev/null 2>&1; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_bin" ]; then
        echo "demo: PostgreSQL server binaries not found; install them (apt-get install postgresql)" >&2
        exit 2
    fi
    export PATH="$PATH:$pg_bin"
fi
cargo build --release --quiet --bin fmig --example demo
exec target/release/examples/demo "$@"
