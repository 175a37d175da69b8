#!/usr/bin/env bash
# The reliability suite (issue #8): kill storms, server faults, the hostile input corpus and,
# with --load, the 1,000,000-row window end to end and 10,000,000 sensor readings through
# export and import. Built in release mode (the load scenarios measure time and memory); writes
# the outcome table to docs/reliability.md. Other arguments go to the suite: a scenario-name
# substring to run only matching scenarios, --list. `cargo test` runs the same scenarios except
# the load ones, without writing the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v initdb >/dev/null 2>&1; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_bin" ]; then
        echo "reliability: PostgreSQL server binaries not found; install them (apt-get install postgresql)" >&2
        exit 2
    fi
    export PATH="$PATH:$pg_bin"
fi
exec cargo test --release --test reliability -- --write-docs docs/reliability.md "$@"
