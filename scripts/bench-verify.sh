#!/usr/bin/env bash
# The verify benchmark (issue #7): a throwaway local cluster with the fixture source and target
# schemas, ROWS (default 1,000,000) generated sensor_readings in the source copied unchanged into
# the target; then `fmig verify --table sensor_readings` (wall time and peak RSS from
# /usr/bin/time) next to the previous scripts' method run by psql on both databases:
# SELECT md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM sensor_readings t.
# Environment: ROWS, PORT (default 55437), FMIG (default: a release build of this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
PORT=${PORT:-55437}
if ! command -v initdb >/dev/null 2>&1; then
    export PATH="$PATH:$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
if [ -z "${FMIG:-}" ]; then
    cargo build --release --quiet --bin fmig
    FMIG="$(pwd)/${CARGO_TARGET_DIR:-target}/release/fmig"
fi
work=$(mktemp -d /tmp/fmig-bench-verify.XXXXXX)
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$work"
    as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" initdb -D "$work/data" -U postgres --auth=trust >/dev/null
"${as_pg[@]}" pg_ctl -D "$work/data" -l "$work/server.log" -w \
    -o "-p $PORT -k $work -c listen_addresses=127.0.0.1 -c shared_buffers=256MB" start >/dev/null
trap '"${as_pg[@]}" pg_ctl -D "$work/data" -m fast stop >/dev/null; rm -rf "$work"' EXIT
psql() { command psql -h 127.0.0.1 -p "$PORT" -U postgres -X -q -At -v ON_ERROR_STOP=1 "$@"; }

psql -d postgres -c "CREATE DATABASE src" -c "CREATE DATABASE tgt"
psql -d src -f tests/fixtures/source_schema.sql >/dev/null
psql -d tgt -f tests/fixtures/target_schema.sql >/dev/null
parents="INSERT INTO public.organizations (id, name, slug) VALUES ('00000000-0000-0000-0000-000000000001', 'o', 'o');
INSERT INTO public.sites (id, organization_id, name) VALUES ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-000000000001', 's');
INSERT INTO public.areas (id, site_id, name) VALUES ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000002', 'a');
INSERT INTO public.units (id, area_id, name, unit_type) VALUES ('00000000-0000-0000-0000-000000000004', '00000000-0000-0000-0000-000000000003', 'u', 'fridge');"
psql -d src -c "$parents"
psql -d tgt -c "$parents"
psql -d src -c "INSERT INTO public.sensor_readings (id, unit_id, recorded_at, temperature, humidity,
    battery_voltage, rssi, snr, frame_counter, raw_payload, received_at)
  SELECT i, '00000000-0000-0000-0000-000000000004', '2024-01-01'::timestamptz + i * interval '7 seconds',
    round((random() * 40 - 10)::numeric, 2), (random() * 100)::real, 3 + random(), (-120 + i % 60),
    (random() * 10)::real, 4294967296 + i, '\\x00ff10'::bytea, '2024-01-01'::timestamptz + i * interval '7.5 seconds'
  FROM generate_series(1, $ROWS) AS i"
cols="id, unit_id, device_id, recorded_at, temperature, humidity, battery_voltage, rssi, snr, frame_counter, raw_payload, received_at"
psql -d src -c "COPY (SELECT $cols FROM public.sensor_readings) TO STDOUT" \
    | psql -d tgt -c "COPY public.sensor_readings ($cols) FROM STDIN"
psql -d src -c "VACUUM ANALYZE public.sensor_readings"
psql -d tgt -c "VACUUM ANALYZE public.sensor_readings"

url() { echo "postgresql://postgres@127.0.0.1:$PORT/$1?sslmode=disable"; }
echo "rows: $ROWS"
# Warm both caches once, so neither method pays for the first read from disk.
psql -d src -c "SELECT count(*) FROM public.sensor_readings" >/dev/null
psql -d tgt -c "SELECT count(*) FROM public.sensor_readings" >/dev/null

start=$(date +%s.%N)
for db in src tgt; do
    psql -d "$db" -c "SELECT md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM public.sensor_readings t" >/dev/null
done
end=$(date +%s.%N)
echo "previous scripts' method (psql, both databases): $(echo "$end - $start" | bc) s"

cd "$work"
SUPABASE_DB_URL=$(url src) DATABASE_URL=$(url tgt) /usr/bin/time -f "fmig verify: %e s wall, %M KiB peak RSS, exit %x" \
    "$FMIG" --no-progress -q verify --table sensor_readings --export-dir "$work/out" --log-file "$work/verify.log" \
    || true

# The staging path (a table with a `set` expression): the source streamed through a staging
# table on the target in batches and read back with the expression applied.
printf '[tables.sensor_readings.set]\nrssi = "src.rssi"\n' > "$work/staged.toml"
SUPABASE_DB_URL=$(url src) DATABASE_URL=$(url tgt) /usr/bin/time -f "fmig verify, staged path: %e s wall, %M KiB peak RSS, exit %x" \
    "$FMIG" --no-progress -q verify --table sensor_readings --export-dir "$work/out" --log-file "$work/verify.log" \
    --mapping-config "$work/staged.toml" | grep -E "sensor_readings|verified" || true

# One changed row: the checksum differs, and the locating pass re-reads both sides keeping only
# the rows of the one differing bucket.
psql -d tgt -c "UPDATE public.sensor_readings SET temperature = temperature + 1 WHERE id = $((ROWS / 2))"
SUPABASE_DB_URL=$(url src) DATABASE_URL=$(url tgt) /usr/bin/time -f "fmig verify, one row changed: %e s wall, %M KiB peak RSS, exit %x" \
    "$FMIG" --no-progress -q verify --table sensor_readings --export-dir "$work/out" --log-file "$work/verify.log" \
    | grep -E "changed|buckets" || true
