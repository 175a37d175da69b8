//! Foreign keys and secondary indexes set aside while a table loads, and rebuilt after, as
//! pg_restore and pgcopydb do: a row then costs one heap insert and the primary key's (and
//! unique constraints') index update instead of a trigger per foreign key and an update of
//! every index, and each index and foreign key is built or validated in one pass at the end.
//!
//! Crash safety rests on one rule: a definition is dropped only in the transaction that
//! records it in [`TABLE`] (exact text from `pg_get_indexdef` / `pg_get_constraintdef`, and
//! its comment), and its record is deleted only in the transaction that recreates it. So
//! whatever stops an import - `kill -9`, a server restart, a lost connection - every
//! definition is either in place or recorded, and [`restore`] (run by every import before it
//! does anything else, and by `fmig import --restore-schema` alone) puts back all that are
//! recorded.
//!
//! An index of a partitioned table is dropped with its partitions' indexes and recreated on the
//! parent (`ON ONLY` becomes `ON`), which builds them again; each partition's index is then
//! renamed to the name it had, so the result is the same schema, not merely an equivalent one.
//!
//! What stays in place: primary keys and unique constraints (they reject duplicates, and other
//! tables' foreign keys need them), check constraints, and indexes whose re-creation could not
//! be exact: unique, in a tablespace of their own, clustered or the replica identity, backing
//! a constraint, or not valid.

use std::time::Instant;

use anyhow::{Context, Result};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tracing::{info, warn};

use crate::connect::server_message;
use crate::ident::{QualifiedName, quote_ident};

/// Where the definitions that are set aside are kept, in the target.
pub const TABLE: &str = "fmig.deferred_definitions";
/// Every constraint and index of each table as the first import found it, before it set
/// anything aside: what `verify` expects to find afterwards.
pub const FINGERPRINT: &str = "fmig.schema_fingerprint";

/// `(object, definition)` of every constraint and index of table `$1` (a quoted name), the
/// indexes of its partitions included.
const DEFINITIONS: &str = "SELECT 'constraint ' || conname, pg_get_constraintdef(oid) \
     FROM pg_constraint WHERE conrelid = to_regclass($1) AND conparentid = 0 \
     UNION ALL \
     SELECT 'index ' || c.relname, pg_get_indexdef(i.indexrelid) \
     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass($1) \
     UNION ALL \
     SELECT 'partition index ' || c.relname, pg_get_indexdef(c.oid) \
     FROM (WITH RECURSIVE p(oid) AS ( \
             SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass($1) \
             UNION ALL SELECT h.inhrelid FROM pg_inherits h JOIN p ON h.inhparent = p.oid) \
           SELECT oid FROM p) p \
     JOIN pg_index i ON i.indrelid = p.oid JOIN pg_class c ON c.oid = i.indexrelid";

const INDEX: &str = "index";
/// The index of one partition, recreated with its parent's ([`INDEX`]) and renamed back.
const PARTITION_INDEX: &str = "partition index";
const FOREIGN_KEY: &str = "foreign key";

/// The indexes that descend from index `$1` (an oid), at any depth of partitioning: schema,
/// table, name, definition, comment, and whether it is in a tablespace of its own.
const DESCENDANTS: &str = "WITH RECURSIVE d(oid) AS ( \
       SELECT inhrelid FROM pg_inherits WHERE inhparent = $1 \
       UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN d ON i.inhparent = d.oid) \
     SELECT n.nspname::text, t.relname::text, c.relname::text, pg_get_indexdef(c.oid), \
            obj_description(c.oid, 'pg_class'), c.reltablespace <> 0 \
     FROM d JOIN pg_class c ON c.oid = d.oid JOIN pg_index x ON x.indexrelid = c.oid \
     JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
     ORDER BY 1, 2";

/// What was set aside for one table.
#[derive(Debug, Default)]
pub struct Deferred {
    pub indexes: usize,
    pub foreign_keys: usize,
}

/// What [`restore`] put back.
#[derive(Debug, Default)]
pub struct Restored {
    pub indexes: usize,
    pub foreign_keys: usize,
    /// Foreign keys whose rows violate them, re-added `NOT VALID`: `(table, constraint)`.
    pub not_valid: Vec<(QualifiedName, String)>,
    /// A definition that came back different from the recorded one (should never happen).
    pub mismatches: Vec<String>,
    pub seconds: f64,
}

/// Records and drops `table`'s foreign keys (when `foreign_keys`) and its secondary indexes,
/// in one transaction. `Ok(None)` when the target refuses (fmig does not own the table): it
/// then loads with everything in place, and the caller says why that is slower.
pub async fn defer(
    client: &mut Client,
    table: &QualifiedName,
    foreign_keys: bool,
) -> Result<Option<Deferred>> {
    ensure_table(client).await?;
    let name = table.quoted();
    let tx = client.transaction().await?;
    let fks = if foreign_keys {
        tx.query(
            "SELECT c.conname::text, pg_get_constraintdef(c.oid), obj_description(c.oid, 'pg_constraint') \
             FROM pg_constraint c \
             WHERE c.conrelid = to_regclass($1) AND c.contype = 'f' AND c.conparentid = 0 \
             ORDER BY c.conname",
            &[&name],
        )
        .await?
    } else {
        Vec::new()
    };
    let indexes = tx
        .query(
            "SELECT ci.relname::text, pg_get_indexdef(i.indexrelid), obj_description(i.indexrelid, 'pg_class'), \
                    i.indexrelid \
             FROM pg_index i \
             JOIN pg_class ci ON ci.oid = i.indexrelid \
             JOIN pg_class t ON t.oid = i.indrelid \
             WHERE i.indrelid = to_regclass($1) AND t.relkind IN ('r', 'p') \
               AND NOT i.indisunique AND NOT i.indisprimary AND NOT i.indisexclusion \
               AND i.indisvalid AND NOT i.indisclustered AND NOT i.indisreplident \
               AND ci.reltablespace = 0 \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                               WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid \
                                 AND d.deptype IN ('e', 'x')) \
             ORDER BY ci.relname",
            &[&name],
        )
        .await?;
    // A partitioned index's partitions' indexes, which its drop takes along; one in a
    // tablespace of its own keeps the whole index in place.
    let mut set_aside: Vec<(tokio_postgres::Row, Vec<tokio_postgres::Row>)> = Vec::new();
    for row in indexes {
        let oid: u32 = row.get(3);
        let below = tx.query(DESCENDANTS, &[&oid]).await?;
        if !below.iter().any(|r| r.get::<_, bool>(5)) {
            set_aside.push((row, below));
        }
    }
    let indexes = set_aside;
    if fks.is_empty() && indexes.is_empty() {
        return Ok(Some(Deferred::default()));
    }
    // The first import of the table records how it found it, for verify.
    tx.execute(
        &format!(
            "INSERT INTO {FINGERPRINT} (table_schema, table_name, object, definition) \
             SELECT $2::text, $3::text, d.object, d.definition FROM ({DEFINITIONS}) d(object, definition) \
             WHERE NOT EXISTS (SELECT 1 FROM {FINGERPRINT} WHERE table_schema = $2::text AND table_name = $3::text)"
        ),
        &[&name, &table.schema, &table.name],
    )
    .await?;
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {TABLE} (table_schema, table_name, kind, name, definition, comment, parent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .await?;
    // (schema, table, kind, name, definition, comment, parent index) per record.
    type Record = (
        String,
        String,
        &'static str,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let of_table = |kind, row: &tokio_postgres::Row| -> Record {
        let name: String = row.get(0);
        (
            table.schema.clone(),
            table.name.clone(),
            kind,
            name,
            row.get(1),
            row.get(2),
            None,
        )
    };
    let mut records: Vec<Record> = Vec::new();
    let mut drops = Vec::new();
    for row in &fks {
        let record = of_table(FOREIGN_KEY, row);
        drops.push(format!(
            "ALTER TABLE {name} DROP CONSTRAINT {}",
            quote_ident(&record.3)
        ));
        records.push(record);
    }
    for (row, below) in &indexes {
        let record = of_table(INDEX, row);
        drops.push(format!(
            "DROP INDEX {}.{}",
            quote_ident(&table.schema),
            quote_ident(&record.3)
        ));
        for child in below {
            records.push((
                child.get(0),
                child.get(1),
                PARTITION_INDEX,
                child.get(2),
                child.get(3),
                child.get(4),
                Some(record.3.clone()),
            ));
        }
        records.push(record);
    }
    for (schema, table_name, kind, object, definition, comment, parent) in &records {
        tx.execute(
            &insert,
            &[
                schema, table_name, kind, object, definition, comment, parent,
            ],
        )
        .await?;
    }
    match tx.batch_execute(&drops.join("; ")).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            // Said once in full; the other tables of the run only in the log.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if SAID.swap(true, std::sync::atomic::Ordering::SeqCst) {
                info!(table = %table, "loads with its foreign keys and indexes in place (not the owner)");
                return Ok(None);
            }
            warn!(
                table = %table,
                "its foreign keys and indexes stay in place while it loads (slower: every row \
                 fires the foreign-key triggers and updates every index): the target refused to \
                 drop them ({}); the same goes for every other table it does not own (listed in the log); import as the tables' owner to load them faster",
                server_message(&e)
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("{table}: could not set its foreign keys and indexes aside")
            });
        }
    }
    tx.commit().await?;
    let deferred = Deferred {
        indexes: indexes.len(),
        foreign_keys: fks.len(),
    };
    info!(table = %table, indexes = deferred.indexes, foreign_keys = deferred.foreign_keys, "set aside until the data is in");
    Ok(Some(deferred))
}

/// How many definitions are set aside in the target (0 when fmig never deferred any).
pub async fn pending(client: &Client) -> Result<i64> {
    let exists = table_exists(client, TABLE).await?;
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
        .await?
        .get(0))
}

/// Recreates every recorded index, then re-adds every recorded foreign key (validated in one
/// pass; `NOT VALID` when rows violate it, listed in [`Restored::not_valid`]), each in the
/// transaction that deletes its record.
pub async fn restore(client: &mut Client) -> Result<Restored> {
    let started = Instant::now();
    let mut restored = Restored::default();
    if pending(client).await? == 0 {
        return Ok(restored);
    }
    let rows = client
        .query(
            &format!(
                "SELECT id, table_schema, table_name, kind, name, definition, comment FROM {TABLE} \
                 WHERE kind <> '{PARTITION_INDEX}' ORDER BY kind = '{FOREIGN_KEY}', id"
            ),
            &[],
        )
        .await?;
    for row in rows {
        let id: i64 = row.get(0);
        let table = QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2));
        let kind: String = row.get(3);
        let object: String = row.get(4);
        let definition: String = row.get(5);
        let comment: Option<String> = row.get(6);
        let quoted = table.quoted();
        let tx = client.transaction().await?;
        if kind == INDEX {
            let index = format!("{}.{}", quote_ident(&table.schema), quote_ident(&object));
            let exists: bool = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&index])
                .await?
                .get(0);
            if !exists {
                // A partitioned table's index: built on every partition again.
                let create = definition.replacen(" ON ONLY ", " ON ", 1);
                tx.batch_execute(&create)
                    .await
                    .with_context(|| format!("{table}: could not recreate index {object}"))?;
                restored.indexes += 1;
            }
            rename_partition_indexes(&tx, &table, &object, &index, &mut restored).await?;
            let what = format!("{table}: index {object}");
            finish_index(
                &tx,
                &index,
                &what,
                comment.as_deref(),
                &definition,
                &mut restored,
            )
            .await?;
        } else {
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_constraint \
                     WHERE conrelid = to_regclass($1) AND conname = $2)",
                    &[&quoted, &object],
                )
                .await?
                .get(0);
            if !exists {
                let add = format!(
                    "ALTER TABLE {quoted} ADD CONSTRAINT {} {definition}",
                    quote_ident(&object)
                );
                tx.batch_execute("SAVEPOINT validate").await?;
                match tx.batch_execute(&add).await {
                    Ok(()) => restored.foreign_keys += 1,
                    Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                        // Never missing: present, unvalidated, and reported.
                        tx.batch_execute("ROLLBACK TO SAVEPOINT validate").await?;
                        tx.batch_execute(&format!("{add} NOT VALID"))
                            .await
                            .with_context(|| {
                                format!("{table}: could not re-add {object} even NOT VALID")
                            })?;
                        restored.foreign_keys += 1;
                        restored.not_valid.push((table.clone(), object.clone()));
                    }
                    Err(e) => {
                        return Err(anyhow::anyhow!(
                            "{table}: could not re-add foreign key {object}: {}",
                            server_message(&e)
                        ));
                    }
                }
            }
            if let Some(text) = &comment {
                tx.execute(
                    &format!(
                        "COMMENT ON CONSTRAINT {} ON {quoted} IS {}",
                        quote_ident(&object),
                        crate::ident::quote_literal(text)
                    ),
                    &[],
                )
                .await?;
            }
        }
        tx.execute(&format!("DELETE FROM {TABLE} WHERE id = $1"), &[&id])
            .await?;
        tx.commit().await?;
    }
    restored.seconds = started.elapsed().as_secs_f64();
    info!(
        indexes = restored.indexes,
        foreign_keys = restored.foreign_keys,
        not_valid = restored.not_valid.len(),
        seconds = restored.seconds,
        "foreign keys and indexes rebuilt"
    );
    Ok(restored)
}

/// The recreated index `index` (quoted) gets its comment back and is checked against its
/// recorded definition; `what` names it in a mismatch.
async fn finish_index(
    tx: &tokio_postgres::Transaction<'_>,
    index: &str,
    what: &str,
    comment: Option<&str>,
    definition: &str,
    restored: &mut Restored,
) -> Result<()> {
    if let Some(text) = comment {
        tx.execute(
            &format!(
                "COMMENT ON INDEX {index} IS {}",
                crate::ident::quote_literal(text)
            ),
            &[],
        )
        .await?;
    }
    let now: String = tx
        .query_one("SELECT pg_get_indexdef(to_regclass($1))", &[&index])
        .await?
        .get(0);
    if now != definition {
        restored
            .mismatches
            .push(format!("{what} is now {now:?}, was {definition:?}"));
    }
    Ok(())
}

/// Gives each partition's index of the recreated `parent` the name (and comment) it had, then
/// forgets their records.
async fn rename_partition_indexes(
    tx: &tokio_postgres::Transaction<'_>,
    table: &QualifiedName,
    parent: &str,
    parent_quoted: &str,
    restored: &mut Restored,
) -> Result<()> {
    let recorded = tx
        .query(
            &format!(
                "SELECT id, table_schema, table_name, name, definition, comment FROM {TABLE} \
                 WHERE kind = '{PARTITION_INDEX}' AND parent = $1 AND table_schema = $2"
            ),
            &[&parent, &table.schema],
        )
        .await?;
    if recorded.is_empty() {
        return Ok(());
    }
    let oid: u32 = tx
        .query_one("SELECT to_regclass($1)::oid", &[&parent_quoted])
        .await?
        .get(0);
    let now = tx.query(DESCENDANTS, &[&oid]).await?;
    for row in recorded {
        let id: i64 = row.get(0);
        let (schema, partition, name): (String, String, String) =
            (row.get(1), row.get(2), row.get(3));
        let definition: String = row.get(4);
        let comment: Option<String> = row.get(5);
        let current = now
            .iter()
            .find(|r| r.get::<_, String>(0) == schema && r.get::<_, String>(1) == partition);
        match current {
            Some(r) => {
                let current_name: String = r.get(2);
                let index = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
                if current_name != name {
                    tx.batch_execute(&format!(
                        "ALTER INDEX {}.{} RENAME TO {}",
                        quote_ident(&schema),
                        quote_ident(&current_name),
                        quote_ident(&name)
                    ))
                    .await
                    .with_context(|| {
                        format!("{schema}.{partition}: could not rename index {current_name} back to {name}")
                    })?;
                }
                let what = format!("{schema}.{partition}: index {name}");
                finish_index(tx, &index, &what, comment.as_deref(), &definition, restored).await?;
            }
            None => restored.mismatches.push(format!(
                "{schema}.{partition}: index {name} of {parent} did not come back (the partition \
                 is gone?)"
            )),
        }
        tx.execute(&format!("DELETE FROM {TABLE} WHERE id = $1"), &[&id])
            .await?;
    }
    Ok(())
}

/// Whether fmig's table `name` exists in the target (it does once an import set anything aside).
async fn table_exists(client: &Client, name: &str) -> Result<bool> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0))
}

async fn ensure_table(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS fmig; \
             CREATE TABLE IF NOT EXISTS {TABLE} ( \
                 id bigserial PRIMARY KEY, table_schema text NOT NULL, table_name text NOT NULL, \
                 kind text NOT NULL CHECK (kind IN ('{INDEX}', '{PARTITION_INDEX}', '{FOREIGN_KEY}')), \
                 name text NOT NULL, definition text NOT NULL, comment text, parent text, \
                 recorded_at timestamptz NOT NULL DEFAULT now()); \
             CREATE TABLE IF NOT EXISTS {FINGERPRINT} ( \
                 table_schema text NOT NULL, table_name text NOT NULL, object text NOT NULL, \
                 definition text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (table_schema, table_name, object))"
        ))
        .await
        .context("could not create fmig's table of deferred definitions in the target")
}

/// Forgets how `table` was found (`--truncate-first`: the next import records it again).
pub async fn forget_fingerprint(client: &Client, table: &QualifiedName) -> Result<()> {
    let exists = table_exists(client, FINGERPRINT).await?;
    if exists {
        client
            .execute(
                &format!("DELETE FROM {FINGERPRINT} WHERE table_schema = $1 AND table_name = $2"),
                &[&table.schema, &table.name],
            )
            .await?;
    }
    Ok(())
}

/// Each constraint or index of `table` that the first import recorded and that is now missing
/// or defined otherwise, in words (empty when nothing was recorded).
pub async fn schema_changes(client: &Client, table: &QualifiedName) -> Result<Vec<String>> {
    let exists = table_exists(client, FINGERPRINT).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let recorded = client
        .query(
            &format!(
                "SELECT object, definition FROM {FINGERPRINT} \
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY object"
            ),
            &[&table.schema, &table.name],
        )
        .await?;
    if recorded.is_empty() {
        return Ok(Vec::new());
    }
    let now: std::collections::HashMap<String, String> = client
        .query(DEFINITIONS, &[&table.quoted()])
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut changes = Vec::new();
    for row in recorded {
        let (object, was): (String, String) = (row.get(0), row.get(1));
        match now.get(&object) {
            None => changes.push(format!(
                "{table}: {object} is missing (before the import: {was}); fmig import \
                 --restore-schema puts back what an import set aside"
            )),
            Some(def) if *def != was => changes.push(format!(
                "{table}: {object} is now {def}, before the import it was {was}"
            )),
            Some(_) => {}
        }
    }
    Ok(changes)
}
