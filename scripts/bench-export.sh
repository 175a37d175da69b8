#!/usr/bin/env bash
# The export benchmark (issue #3): builds the release fmig, then times `fmig export` of a
# generated sensor_readings table next to psql's \copy of row_to_json and of plain text, on a
# throwaway local PostgreSQL cluster (see examples/bench_export.rs). Arguments go to the
# benchmark: --rows N[,N...] (default 1000000), --repeat R (3), --fmig-arg ARG, --workdir DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v initdb >/dev/null 2>&1; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_bin" ]; then
        echo "bench-export: PostgreSQL server binaries not found; install them (apt-get install postgresql)" >&2
        exit 2
    fi
    export PATH="$PATH:$pg_bin"
fi
if ! command -v psql >/dev/null 2>&1; then
    echo "bench-export: psql not found; install it (apt-get install postgresql-client)" >&2
    exit 2
fi
cargo build --release --quiet --bin fmig --example bench_export
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_export" "$@"
