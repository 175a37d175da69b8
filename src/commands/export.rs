//! `fmig export`: every selected table and the Supabase users, from one snapshot, into the
//! export directory.
//!
//! The stages, in order:
//! 1. prepare the directory: remove `metadata.json` first (so the directory stops looking
//!    complete), then the previous export's data files and leftover temporary files;
//! 2. open one REPEATABLE READ, READ ONLY transaction and export its snapshot; with `--jobs N`,
//!    N-1 more connections adopt it (`SET TRANSACTION SNAPSHOT`), so every file shows the same
//!    instant, as pg_dump's do;
//! 3. per table, `COPY (SELECT ...) TO STDOUT (FORMAT binary)` streams into a parser on a
//!    blocking thread that writes one JSON object per line (see `codec`), feeds the content
//!    checksum, and writes the file under a temporary name (see `files`). Memory is bounded by
//!    the channel between the two (a few COPY chunks) and one row;
//! 4. `auth_users.json` the same way (mode 0600 like every export file: e-mails and hashes);
//! 5. `metadata.json`, last, with counts, sizes, SHA-256s, checksums and column types.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::{FutureExt, StreamExt, pin_mut};
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio_postgres::{IsolationLevel, Transaction};
use tracing::{info, warn};

use crate::Outcome;
use crate::catalog::{self, Column, Discovered};
use crate::checksum::{Checksum, RecordedChecksum, RowHasher};
use crate::cli::ExportArgs;
use crate::codec::{self, ColumnKind};
use crate::connect::{self, DbUrl, Side};
use crate::copy_binary::CopyBinaryParser;
use crate::files::{self, OutputFile, Written};
use crate::ident::{QualifiedName, quote_ident};
use crate::manifest::{self, APP_SCHEMA};
use crate::metadata::{self, ColumnEntry, FileEntry, Metadata};
use crate::progress;
use crate::report::{Align, TextTable, size, thousands};

/// What one file holds and how to read it from the source.
#[derive(Clone, Debug)]
struct FilePlan {
    name: String,
    schema: String,
    file: String,
    level: usize,
    select: String,
    columns: Vec<ColumnEntry>,
    kinds: Vec<ColumnKind>,
    user_id_columns: Vec<String>,
    /// Rough size, to start the largest tables first.
    size_bytes: i64,
    /// Rows the planner expects, for the progress bar.
    estimated_rows: u64,
}

/// What exporting one file produced.
struct Exported {
    shape: FilePlan,
    written: Written,
    checksum: Checksum,
    seconds: f64,
}

pub async fn run(args: &ExportArgs) -> Result<Outcome> {
    export(args).await.map_err(|e| {
        if files::is_out_of_space(&e) {
            return anyhow!(
                "{e:#}\n  next step: the file system holding {} has no room left for the export \
                 (or a file-size limit such as `ulimit -f` was reached); free space there or choose \
                 a directory with more room (--output-dir or EXPORT_DIR), then run `fmig export` \
                 again. `fmig export --dry-run` shows the size of the source tables; the export \
                 files take about that much. This directory has no metadata.json, so nothing will \
                 import it",
                args.output_dir.display()
            );
        }
        connect::explain_lost_connection(
            e,
            Side::Source,
            "once the source accepts connections again, run `fmig export` again; it starts the \
             export over (this directory has no metadata.json, so nothing will import it)",
        )
    })
}

async fn export(args: &ExportArgs) -> Result<Outcome> {
    let started = Instant::now();
    let url = args.source.url()?;
    // --table names are checked against the built-in list now, and against the source's
    // tables (discovered ones included) once its catalog is read.
    if args.tables.iter().all(|t| manifest::is_builtin(t)) {
        manifest::select(manifest::builtin(), &args.tables, args.skip_large)?;
    }
    let dir = args.output_dir.clone();
    let _lock = crate::lock::DirLock::acquire(&dir, "export")?;
    prepare_directory(&dir)?;

    let options = args.connect.options();
    let mut client = connect::connect(&url, &options).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("could not start a read-only snapshot on the source")?;
    let row = tx
        .query_one(
            "SELECT pg_export_snapshot(), current_setting('server_version'), \
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .context("could not export the source snapshot")?;
    let (snapshot_id, server_version, exported_at): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    info!(snapshot = %snapshot_id, "snapshot taken");

    let found = catalog::discover(&tx, APP_SCHEMA).await?;
    let manifest = manifest::effective(&found);
    let selected = manifest::select(manifest, &args.tables, args.skip_large)?;
    let mut shapes = Vec::new();
    for (level, spec) in manifest::import_order(manifest, &found) {
        if !selected.contains(spec.name) {
            continue;
        }
        let Some(info) = found.tables.get(spec.name) else {
            bail!(
                "table {APP_SCHEMA}.{} does not exist in the source ({}); nothing was exported.\n  \
                 next step: check the source URL's database, or leave the table out with --table/--skip-large \
                 (fmig export --dry-run lists what exists)",
                spec.name,
                url.describe()
            );
        };
        let user_ids = manifest::effective_user_id_columns(spec, &found);
        shapes.push(table_shape(&tx, level, spec.name, &info.columns, user_ids, args.gzip).await?);
    }
    let users_shape = if args.skip_auth {
        None
    } else {
        Some(auth_users_shape(&tx, &found, args.gzip).await?)
    };

    let mut work: Vec<FilePlan> = shapes.clone();
    work.extend(users_shape.clone());
    // Largest first, so parallel workers finish together.
    work.sort_by_key(|s| std::cmp::Reverse(s.size_bytes));
    let queue = Arc::new(Mutex::new(VecDeque::from(work)));
    let gzip = args.gzip;

    let mut results = Vec::new();
    let extra = usize::from(args.jobs).saturating_sub(1);
    if extra == 0 {
        results.extend(worker(&tx, &queue, &dir, gzip).await?);
    } else {
        let mut clients = Vec::new();
        for _ in 0..extra {
            clients.push(connect::connect(&url, &options).await?);
        }
        let mut workers = Vec::new();
        for client in clients.iter_mut() {
            workers.push(adopt_snapshot(client, &snapshot_id, &url).await?);
        }
        let mut all: Vec<_> = vec![worker(&tx, &queue, &dir, gzip)];
        for w in &workers {
            all.push(worker(w, &queue, &dir, gzip));
        }
        for part in futures::future::try_join_all(all).await? {
            results.extend(part);
        }
    }
    tx.commit()
        .await
        .context("could not close the source snapshot")?;

    // Import order in the metadata and the summary, whatever order the workers finished in.
    let position = |name: &str| {
        shapes
            .iter()
            .position(|s| s.name == name)
            .unwrap_or(usize::MAX)
    };
    results.sort_by_key(|r| position(&r.shape.name));
    let auth = results
        .iter()
        .position(|r| r.shape.schema == "auth")
        .map(|i| results.remove(i));
    let entry = |r: &Exported| FileEntry {
        name: r.shape.name.clone(),
        schema: r.shape.schema.clone(),
        file: r.shape.file.clone(),
        level: r.shape.level,
        rows: r.checksum.rows,
        bytes: r.written.bytes,
        sha256: r.written.sha256.clone(),
        checksum: RecordedChecksum::from(&r.checksum),
        columns: r.shape.columns.clone(),
        user_id_columns: r.shape.user_id_columns.clone(),
    };
    let total_rows: u64 = results.iter().chain(&auth).map(|r| r.checksum.rows).sum();
    let total_bytes: u64 = results.iter().chain(&auth).map(|r| r.written.bytes).sum();
    let metadata = Metadata {
        format_version: metadata::FORMAT_VERSION,
        fmig_version: env!("CARGO_PKG_VERSION").to_string(),
        exported_at,
        source: url.to_string(),
        server_version,
        snapshot_id,
        gzip,
        tables: results.iter().map(entry).collect(),
        auth_users: auth.as_ref().map(entry),
        total_rows,
        total_bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&metadata)?;
    files::write_atomically(&dir.join(metadata::FILE_NAME), &json)?;

    let summary = render_summary(
        &results,
        auth.as_ref(),
        &dir,
        started.elapsed().as_secs_f64(),
    );
    for r in results.iter().chain(&auth) {
        info!(target: "fmig::report", table = %r.shape.name, rows = r.checksum.rows, bytes = r.written.bytes, seconds = r.seconds, sha256 = %r.written.sha256, checksum = %r.checksum.hex(), "exported");
    }
    info!(target: "fmig::report", files = results.len() + auth.iter().count(), rows = total_rows, bytes = total_bytes, seconds = metadata.seconds, dir = %dir.display(), "export summary");
    progress::suspend(|| print!("{summary}"));
    Ok(Outcome::Success)
}

/// Makes the directory hold no finished-looking export while this one runs.
fn prepare_directory(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("could not create the export directory {}", dir.display()))?;
    let metadata_path = dir.join(metadata::FILE_NAME);
    if metadata_path.exists() {
        std::fs::remove_file(&metadata_path)
            .with_context(|| format!("could not remove {}", metadata_path.display()))?;
        files::sync_dir(dir)?;
        warn!(dir = %dir.display(), "replacing the previous export in this directory");
    }
    let ours: Vec<String> = manifest::builtin()
        .iter()
        .map(|t| t.name)
        .chain(["auth_users"])
        .flat_map(|n| [format!("{n}.json"), format!("{n}.json.gz")])
        .collect();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("could not read the export directory {}", dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(files::TEMP_PREFIX) || ours.contains(&name) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("could not remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

async fn adopt_snapshot<'a>(
    client: &'a mut tokio_postgres::Client,
    snapshot_id: &str,
    url: &DbUrl,
) -> Result<Transaction<'a>> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    tx.batch_execute(&format!(
        "SET TRANSACTION SNAPSHOT {}",
        crate::ident::quote_literal(snapshot_id)
    ))
    .await
    .with_context(|| {
        format!(
            "a worker connection could not adopt snapshot {snapshot_id} ({})",
            url.describe()
        )
    })?;
    Ok(tx)
}

/// Takes shapes off the queue until it is empty.
async fn worker(
    tx: &Transaction<'_>,
    queue: &Mutex<VecDeque<FilePlan>>,
    dir: &Path,
    gzip: bool,
) -> Result<Vec<Exported>> {
    let mut done = Vec::new();
    loop {
        let next = queue.lock().expect("queue lock").pop_front();
        let Some(shape) = next else { break };
        done.push(export_one(tx, shape, dir, gzip).await?);
    }
    Ok(done)
}

async fn table_shape(
    tx: &Transaction<'_>,
    level: usize,
    table: &str,
    columns: &[Column],
    user_id_columns: Vec<String>,
    gzip: bool,
) -> Result<FilePlan> {
    let name = QualifiedName::new(APP_SCHEMA, table);
    let mut select = Vec::new();
    let mut entries = Vec::new();
    let mut kinds = Vec::new();
    for column in columns {
        let (kind, cast) = codec::column_kind(&column.pg_type());
        select.push(codec::select_expr(&quote_ident(&column.name), cast));
        entries.push(ColumnEntry {
            name: column.name.clone(),
            type_name: column.type_name.clone(),
            type_oid: column.type_oid,
            json: metadata::kind_label(&kind),
            not_null: column.not_null,
            generated: column.generated,
        });
        kinds.push(kind);
    }
    let row = tx
        .query_one(
            "SELECT GREATEST(COALESCE(sum(c.reltuples), 0), 0)::int8 \
             FROM pg_partition_tree($1::text::regclass) t JOIN pg_class c ON c.oid = t.relid",
            &[&name.quoted()],
        )
        .await?;
    let estimated: i64 = row.get(0);
    Ok(FilePlan {
        file: data_file_name(table, gzip),
        name: table.to_string(),
        schema: APP_SCHEMA.to_string(),
        level,
        select: format!("SELECT {} FROM {}", select.join(", "), name.quoted()),
        columns: entries,
        kinds,
        user_id_columns,
        size_bytes: catalog::total_size(tx, &name).await?,
        estimated_rows: estimated as u64,
    })
}

fn data_file_name(name: &str, gzip: bool) -> String {
    if gzip {
        format!("{name}.json.gz")
    } else {
        format!("{name}.json")
    }
}

/// The columns of `auth.users` the migration needs (those this GoTrue version has), with the
/// user's identities nested as a JSON array.
const AUTH_USER_COLUMNS: &[&str] = &[
    "id",
    "email",
    "encrypted_password",
    "email_confirmed_at",
    "phone",
    "phone_confirmed_at",
    "raw_user_meta_data",
    "raw_app_meta_data",
    "created_at",
    "updated_at",
    "last_sign_in_at",
    "banned_until",
    "deleted_at",
    "is_anonymous",
    "is_sso_user",
];

async fn auth_users_shape(
    tx: &Transaction<'_>,
    found: &Discovered,
    gzip: bool,
) -> Result<FilePlan> {
    if !found.auth_users_present {
        bail!(
            "the source has no auth.users table: is it a Supabase database? \
             Use --skip-auth to export only the application tables"
        );
    }
    let present: Vec<String> = tx
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = 'auth.users'::regclass AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut select: Vec<String> = AUTH_USER_COLUMNS
        .iter()
        .filter(|c| present.iter().any(|p| p == *c))
        .map(|c| format!("u.{}", quote_ident(c)))
        .collect();
    // Identities in a stable order, timestamps as UTC ISO text like everything else.
    select.push(
        "COALESCE((SELECT json_agg(json_build_object( \
            'id', i.id, 'provider', i.provider, 'provider_id', i.provider_id, \
            'identity_data', i.identity_data, 'email', i.email, \
            'created_at', to_char(i.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
            'last_sign_in_at', to_char(i.last_sign_in_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) \
            ORDER BY i.created_at, i.id) \
          FROM auth.identities i WHERE i.user_id = u.id), '[]'::json) AS identities"
            .to_string(),
    );
    // Second factors (GoTrue's auth.mfa_factors; older versions have none), nested like the
    // identities: migrate-users carries verified TOTP secrets and names the users whose other
    // factors cannot be carried.
    let factor_columns: Vec<String> = tx
        .query(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = to_regclass('auth.mfa_factors') AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let has_factor = |c: &str| factor_columns.iter().any(|f| f == c);
    if ["user_id", "factor_type", "status", "secret"]
        .iter()
        .all(|c| has_factor(c))
    {
        let created = if has_factor("created_at") {
            "to_char(f.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        } else {
            "NULL"
        };
        select.push(format!(
            "COALESCE((SELECT json_agg(json_build_object( \
                'factor_type', f.factor_type::text, 'status', f.status::text, \
                'secret', f.secret, 'created_at', {created}) ORDER BY {created}, f.secret) \
              FROM auth.mfa_factors f WHERE f.user_id = u.id), '[]'::json) AS mfa_factors"
        ));
    } else {
        info!("the source has no auth.mfa_factors (an older GoTrue): no second factors to carry");
    }
    let sql = format!("SELECT {} FROM auth.users u", select.join(", "));
    let statement = tx
        .prepare(&sql)
        .await
        .context("could not prepare the auth.users export query")?;
    let mut columns = Vec::new();
    let mut kinds = Vec::new();
    for column in statement.columns() {
        let ty = column.type_();
        let kind = codec::builtin_kind(ty.oid()).ok_or_else(|| {
            anyhow!(
                "auth.users.{} has type {}, which fmig cannot export",
                column.name(),
                ty.name()
            )
        })?;
        columns.push(ColumnEntry {
            name: column.name().to_string(),
            type_name: ty.name().to_string(),
            type_oid: ty.oid(),
            json: metadata::kind_label(&kind),
            not_null: false,
            generated: false,
        });
        kinds.push(kind);
    }
    let size_bytes = catalog::total_size(tx, &QualifiedName::new("auth", "users")).await?;
    Ok(FilePlan {
        name: "auth_users".to_string(),
        schema: "auth".to_string(),
        file: data_file_name("auth_users", gzip),
        level: 0,
        select: sql,
        columns,
        kinds,
        user_id_columns: vec!["id".to_string()],
        size_bytes,
        estimated_rows: 0,
    })
}

/// Messages from the COPY stream to the file writer. The writer finishes the file only on
/// `End`: if the stream fails, the channel closes without it and the file is discarded.
enum Chunk {
    Data(Bytes),
    End,
}

async fn export_one(
    tx: &Transaction<'_>,
    shape: FilePlan,
    dir: &Path,
    gzip: bool,
) -> Result<Exported> {
    let started = Instant::now();
    let label = if shape.schema == "auth" {
        "auth.users".to_string()
    } else {
        shape.name.clone()
    };
    let bar = progress::bar(shape.estimated_rows, &label);
    let sql = format!("COPY ({}) TO STDOUT (FORMAT binary)", shape.select);
    let stream = tx
        .copy_out(sql.as_str())
        .await
        .map_err(|e| source_error(e, format!("could not read {label} from the source")))?;
    pin_mut!(stream);

    // A handful of 64 KiB COPY chunks in flight: memory stays flat whatever the table size.
    let (sender, receiver) = mpsc::channel::<Chunk>(16);
    let writer = {
        let shape = shape.clone();
        let dir: PathBuf = dir.to_path_buf();
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || write_file(receiver, &shape, &dir, gzip, &bar))
    };
    // The server sends one CopyData message per row (~100-300 bytes). Handing each to the
    // writer thread on its own cost a cross-thread wake-up per row, most of the export's time,
    // so messages are gathered into batches of about BATCH bytes. While the stream has data
    // ready the batch just grows; when it has none, a partial batch waits at most FLUSH_AFTER
    // for more, so a slow source never holds rows back for long.
    const BATCH: usize = 64 * 1024;
    const FLUSH_AFTER: Duration = Duration::from_millis(10);
    let new_batch = || Vec::<u8>::with_capacity(BATCH + 8 * 1024);
    let mut batch = new_batch();
    let mut stream_error = None;
    let mut writer_gone = false;
    loop {
        let next = match stream.next().now_or_never() {
            Some(next) => next,
            None if batch.is_empty() => stream.next().await,
            None => match tokio::time::timeout(FLUSH_AFTER, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let full = std::mem::replace(&mut batch, new_batch());
                    if sender.send(Chunk::Data(Bytes::from(full))).await.is_err() {
                        writer_gone = true; // its error is reported below
                        break;
                    }
                    continue;
                }
            },
        };
        match next {
            Some(Ok(bytes)) => {
                batch.extend_from_slice(&bytes);
                if batch.len() >= BATCH {
                    let full = std::mem::replace(&mut batch, new_batch());
                    if sender.send(Chunk::Data(Bytes::from(full))).await.is_err() {
                        writer_gone = true;
                        break;
                    }
                }
            }
            Some(Err(e)) => {
                stream_error = Some(e);
                break;
            }
            None => break,
        }
    }
    if stream_error.is_none() && !writer_gone {
        if !batch.is_empty() {
            let _ = sender.send(Chunk::Data(Bytes::from(batch))).await;
        }
        let _ = sender.send(Chunk::End).await;
    }
    drop(sender);
    let written = writer.await.context("the file writer panicked")?;
    bar.finish_and_clear();
    if let Some(e) = stream_error {
        return Err(source_error(
            e,
            format!(
                "reading {label} from the source failed; no file was written for it and the \
                 export is incomplete (no metadata.json)"
            ),
        ));
    }
    let (written, checksum) = written.with_context(|| format!("exporting {label} failed"))?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::debug!(table = %label, rows = checksum.rows, bytes = written.bytes, seconds, "table exported");
    Ok(Exported {
        shape,
        written,
        checksum,
        seconds,
    })
}

/// `what: reason`; a lost connection keeps its error in the chain, so that `run` can say the
/// connection was lost.
fn source_error(e: tokio_postgres::Error, what: String) -> anyhow::Error {
    if connect::is_connection_lost(&e) {
        anyhow::Error::new(e).context(what)
    } else {
        anyhow!("{what}: {}", connect::server_message(&e))
    }
}

/// The blocking half: parse COPY chunks, write JSON lines, hash rows.
fn write_file(
    mut receiver: mpsc::Receiver<Chunk>,
    shape: &FilePlan,
    dir: &Path,
    gzip: bool,
    bar: &ProgressBar,
) -> Result<(Written, Checksum)> {
    let mut file = OutputFile::create(dir, &shape.file, gzip)?;
    let keys: Vec<Vec<u8>> = shape
        .columns
        .iter()
        .map(|c| codec::json_key(&c.name))
        .collect();
    let named: Vec<(String, ColumnKind)> = shape
        .columns
        .iter()
        .zip(&shape.kinds)
        .map(|(c, k)| (c.name.clone(), k.clone()))
        .collect();
    let mut hasher = RowHasher::new(&named);
    let mut checksum = Checksum::default();
    let mut parser = CopyBinaryParser::with_expected_fields(shape.columns.len());
    let mut line: Vec<u8> = Vec::with_capacity(4096);
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(keys.len());
    let path = file.path().to_path_buf();
    // A json/jsonb value that is the document `null` is written `null`, like SQL NULL: in a
    // NOT NULL column import knows which it is, in a nullable one it cannot. Counted, to warn.
    let json_column: Vec<bool> = shape
        .columns
        .iter()
        .zip(&shape.kinds)
        .map(|(c, k)| !c.not_null && matches!(k, ColumnKind::Json | ColumnKind::Jsonb))
        .collect();
    let mut json_nulls = vec![0u64; keys.len()];
    file.write_all(b"[")
        .with_context(|| format!("could not write {}", path.display()))?;

    loop {
        let chunk = match receiver.blocking_recv() {
            Some(Chunk::Data(bytes)) => bytes,
            Some(Chunk::End) => break,
            None => bail!("the source stream of {} ended early", shape.name),
        };
        parser.feed(&chunk, |fields: &[Option<&[u8]>]| -> Result<()> {
            line.clear();
            line.extend_from_slice(if checksum.rows == 0 { b"\n{" } else { b",\n{" });
            spans.clear();
            for (i, ((key, kind), raw)) in keys.iter().zip(&shape.kinds).zip(fields).enumerate() {
                if i > 0 {
                    line.push(b',');
                }
                line.extend_from_slice(key);
                let start = line.len();
                codec::write_json_value(&mut line, kind, *raw).map_err(|e| {
                    anyhow!(
                        "{}: row {} column {}: {e}",
                        shape.name,
                        checksum.rows + 1,
                        shape.columns[i].name
                    )
                })?;
                if json_column[i] && raw.is_some() && line[start..].trim_ascii() == b"null" {
                    json_nulls[i] += 1;
                }
                spans.push((start, line.len()));
            }
            line.push(b'}');
            checksum.add_row(&hasher.hash_spans(&line, &spans));
            file.write_all(&line)
                .with_context(|| format!("could not write {}", path.display()))?;
            if checksum.rows % 4096 == 0 {
                bar.set_position(checksum.rows);
            }
            Ok(())
        })?;
    }
    parser
        .finish()
        .with_context(|| format!("the COPY stream of {} was incomplete", shape.name))?;
    file.write_all(b"\n]\n")
        .with_context(|| format!("could not write {}", path.display()))?;
    let written = file.finish()?;
    bar.set_position(checksum.rows);
    for (column, &n) in shape
        .columns
        .iter()
        .zip(&json_nulls)
        .filter(|(_, n)| **n > 0)
    {
        warn!(
            "{}.{}: {n} row(s) hold the JSON document null, which the export file writes as null \
             like SQL NULL; import will load them as SQL NULL (next step: if the application \
             tells them apart, make the column NOT NULL or replace the documents before the \
             window)",
            shape.name, column.name
        );
    }
    Ok((written, checksum))
}

fn render_summary(
    results: &[Exported],
    auth: Option<&Exported>,
    dir: &Path,
    seconds: f64,
) -> String {
    let mut table = TextTable::new(&[
        ("file", Align::Left),
        ("rows", Align::Right),
        ("bytes", Align::Right),
        ("seconds", Align::Right),
        ("rows/s", Align::Right),
    ]);
    for r in results.iter().chain(auth) {
        let rate = if r.seconds > 0.0 {
            thousands((r.checksum.rows as f64 / r.seconds) as i64)
        } else {
            String::new()
        };
        table.row(vec![
            r.shape.file.clone(),
            thousands(r.checksum.rows as i64),
            size(r.written.bytes as i64),
            format!("{:.2}", r.seconds),
            rate,
        ]);
    }
    let rows: u64 = results.iter().chain(auth).map(|r| r.checksum.rows).sum();
    let bytes: u64 = results.iter().chain(auth).map(|r| r.written.bytes).sum();
    format!(
        "{}{} files, {} rows, {} in {:.1}s -> {} (metadata.json written last)\n",
        table.render(),
        results.len() + auth.iter().count(),
        thousands(rows as i64),
        size(bytes as i64),
        seconds,
        dir.display()
    )
}
