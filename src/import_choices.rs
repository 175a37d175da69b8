//! The choices an import ran with, recorded in the target next to its checkpoints
//! (`fmig.import_choices`, one row): which export, which column mapping (by SHA-256), and the
//! `--unmapped` policy. A resumed import refuses other choices (it would mix two imports in one
//! table), and `verify` takes them as its defaults, so that forgetting `--unmapped keep` on
//! verify cannot make a correct import look wrong, nor a different mapping file make a wrong
//! one look right.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::cli::Unmapped;
use crate::column_map::ColumnMap;
use crate::files;

/// Where the choices live in the target.
pub const TABLE: &str = "fmig.import_choices";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportChoices {
    /// The export: its snapshot time and id.
    pub export: String,
    /// The column mapping file as given (None: no mapping) and its SHA-256.
    pub mapping_config: Option<String>,
    pub mapping_sha256: Option<String>,
    pub unmapped: Unmapped,
    /// When they were recorded (read back only).
    pub recorded_at: Option<String>,
}

impl ImportChoices {
    /// The choices of this run.
    pub fn current(export: String, column_map: &ColumnMap, unmapped: Unmapped) -> Result<Self> {
        let (mapping_config, mapping_sha256) = mapping_identity(column_map)?;
        Ok(ImportChoices {
            export,
            mapping_config,
            mapping_sha256,
            unmapped,
            recorded_at: None,
        })
    }

    /// The choices recorded in the target, if an import recorded any.
    pub async fn read(client: &Client) -> Result<Option<Self>> {
        let exists: bool = client
            .query_one(&format!("SELECT to_regclass('{TABLE}') IS NOT NULL"), &[])
            .await?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let row = client
            .query_opt(
                &format!(
                    "SELECT export, mapping_config, mapping_sha256, unmapped, \
                     to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                     FROM {TABLE}"
                ),
                &[],
            )
            .await
            .with_context(|| format!("could not read {TABLE} in the target"))?;
        Ok(row.map(|row| ImportChoices {
            export: row.get(0),
            mapping_config: row.get(1),
            mapping_sha256: row.get(2),
            unmapped: Unmapped::parse_mapping(row.get::<_, &str>(3)).unwrap_or(Unmapped::Fail),
            recorded_at: row.get(4),
        }))
    }

    /// Records these choices (replacing earlier ones).
    pub async fn record(&self, client: &Client) -> Result<()> {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS fmig; \
                 CREATE TABLE IF NOT EXISTS {TABLE} ( \
                     id int PRIMARY KEY DEFAULT 1 CHECK (id = 1), export text NOT NULL, \
                     mapping_config text, mapping_sha256 text, unmapped text NOT NULL, \
                     recorded_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .with_context(|| format!("could not create {TABLE} in the target"))?;
        client
            .execute(
                &format!(
                    "INSERT INTO {TABLE} (id, export, mapping_config, mapping_sha256, unmapped) \
                     VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET \
                     export = EXCLUDED.export, mapping_config = EXCLUDED.mapping_config, \
                     mapping_sha256 = EXCLUDED.mapping_sha256, unmapped = EXCLUDED.unmapped, \
                     recorded_at = now()"
                ),
                &[
                    &self.export,
                    &self.mapping_config,
                    &self.mapping_sha256,
                    &self.unmapped.mapping_name(),
                ],
            )
            .await
            .with_context(|| format!("could not record the import's choices in {TABLE}"))?;
        Ok(())
    }

    /// How `other` differs from these choices in what changes the result (the column mapping,
    /// the unmapped policy), one line each.
    pub fn differences(&self, other: &ImportChoices) -> Vec<String> {
        let mut out = Vec::new();
        if self.mapping_sha256 != other.mapping_sha256 {
            out.push(format!(
                "column mapping: {} then, {} now",
                describe_mapping(self),
                describe_mapping(other)
            ));
        }
        if self.unmapped != other.unmapped {
            out.push(format!(
                "--unmapped: {} then, {} now",
                self.unmapped.mapping_name(),
                other.unmapped.mapping_name()
            ));
        }
        out
    }
}

fn describe_mapping(c: &ImportChoices) -> String {
    match (&c.mapping_config, &c.mapping_sha256) {
        (Some(path), Some(sha)) => format!("{path} (SHA-256 {}…)", &sha[..12.min(sha.len())]),
        _ => "none".into(),
    }
}

/// The mapping file's path and SHA-256 (None, None without a mapping).
fn mapping_identity(column_map: &ColumnMap) -> Result<(Option<String>, Option<String>)> {
    match column_map.path() {
        Some(path) => {
            let (_, sha) = files::sha256_file(path)?;
            Ok((Some(path.display().to_string()), Some(sha)))
        }
        None => Ok((None, None)),
    }
}
