#!/usr/bin/env bash
# The import benchmark (issue #5): builds the release fmig, then times `fmig import` of a
# generated sensor_readings export next to `psql \copy ... from` of the same rows (text format)
# into an identical partitioned table with the same indexes and foreign keys, on a throwaway
# local PostgreSQL cluster (see examples/bench_import.rs). Arguments go to the benchmark:
# --rows N[,N...] (default 100000,1000000; the issue also names 3000000), --repeat R (3),
# --extra-batch-sizes B[,B...]|none (5000), --max-load L, --max-wait S, --fmig-arg ARG,
# --whole-jobs J[,J...]|none (1,4: the whole fixture imported with each --jobs),
# --workdir DIR. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v initdb >/dev/null 2>&1; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_bin" ]; then
        echo "bench-import: PostgreSQL server binaries not found; install them (apt-get install postgresql)" >&2
        exit 2
    fi
    export PATH="$PATH:$pg_bin"
fi
if ! command -v psql >/dev/null 2>&1; then
    echo "bench-import: psql not found; install it (apt-get install postgresql-client)" >&2
    exit 2
fi
cargo build --release --quiet --bin fmig --example bench_import
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_import" "$@"
