#!/usr/bin/env bash
# The migrate-users benchmark (issue #6): builds the release fmig, then times
# `fmig migrate-users` against the in-process Stack Auth emulator with a fixed latency per
# request (see examples/bench_migrate_users.rs). Arguments go to the benchmark:
# --users N (2000), --latency MS (20), --concurrency 4,16,32, --legacy-users N (200; 0 skips),
# --verify-users N,... (2000,20000: `fmig verify --only users` seconds and peak RSS; needs /usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin fmig --example bench_migrate_users
exec "${CARGO_TARGET_DIR:-target}/release/examples/bench_migrate_users" "$@"
