//! `metadata.json`: the table of contents of an export directory, and the contract between
//! `export`, `import` and `verify`.
//!
//! It is written last, after every data file is in place, so its presence means the export
//! finished. For each file it records the row count, size, SHA-256 and content checksum, and the
//! columns with their PostgreSQL types, so the files are self-describing.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::checksum::RecordedChecksum;
use crate::codec::ColumnKind;

pub const FILE_NAME: &str = "metadata.json";
pub const AUTH_USERS_FILE: &str = "auth_users.json";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub format_version: u32,
    pub fmig_version: String,
    /// When the snapshot was taken (ISO 8601, UTC).
    pub exported_at: String,
    /// The source URL with the password masked.
    pub source: String,
    pub server_version: String,
    /// `pg_export_snapshot()` of the transaction every file was read in.
    pub snapshot_id: String,
    pub gzip: bool,
    /// In import order.
    pub tables: Vec<FileEntry>,
    /// `None` with `--skip-auth`.
    pub auth_users: Option<FileEntry>,
    pub total_rows: u64,
    pub total_bytes: u64,
    pub seconds: f64,
}

/// One exported file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Table name (`auth_users` for the users file).
    pub name: String,
    pub schema: String,
    /// File name relative to the export directory.
    pub file: String,
    /// Level computed from the source's foreign keys.
    pub level: usize,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    pub checksum: RecordedChecksum,
    pub columns: Vec<ColumnEntry>,
    /// User-id columns (listed and discovered by foreign key).
    pub user_id_columns: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnEntry {
    pub name: String,
    /// `format_type()`: `numeric(6,2)`, `text[]`, `public.alert_severity`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub type_oid: u32,
    /// How the value is written in JSON (see `codec::ColumnKind::name`), `text` for anything
    /// exported in its PostgreSQL text form; arrays as `array:<element>`.
    pub json: String,
    pub not_null: bool,
    pub generated: bool,
}

impl Metadata {
    /// Reads and checks `metadata.json` of an export directory.
    pub fn load(dir: &Path) -> Result<Metadata> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "could not read {}: the export in {} is missing or did not finish; run fmig export again",
                path.display(),
                dir.display()
            )
        })?;
        let metadata: Metadata = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid fmig metadata", path.display()))?;
        if metadata.format_version != FORMAT_VERSION {
            bail!(
                "{} has format version {}, this fmig reads version {FORMAT_VERSION}",
                path.display(),
                metadata.format_version
            );
        }
        // Files are read as dir/<file>: a path there could make fmig read any file.
        for entry in metadata.tables.iter().chain(&metadata.auth_users) {
            // Types of built-in columns are written into the staging tables' DDL.
            if let Some(column) = entry.columns.iter().find(|c| !is_type_name(&c.type_name)) {
                bail!(
                    "{}: {}.{} has the type {:?}, which is not a PostgreSQL type name; \
                     metadata.json was changed after the export.\n  next step: run fmig export again",
                    path.display(),
                    entry.name,
                    column.name,
                    column.type_name
                );
            }
            let plain = Path::new(&entry.file)
                .file_name()
                .is_some_and(|name| *name == *entry.file);
            if !plain || entry.file == ".." {
                bail!(
                    "{}: the entry for {} names the file {:?}, which is not a file name inside \
                     the export directory; metadata.json was changed after the export.\n  \
                     next step: run fmig export again",
                    path.display(),
                    entry.name,
                    entry.file
                );
            }
        }
        Ok(metadata)
    }

    pub fn table(&self, name: &str) -> Option<&FileEntry> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// Whether `text` has the shape of what `format_type()` prints (`numeric(6,2)`, `character
/// varying(64)[]`, `timestamp(3) with time zone`, `"char"`, `public."Odd Name"`): names, dots,
/// spaces and `[]`, parentheses holding only numbers, and quoted identifiers. Nothing else can
/// appear, so such a text cannot end the column definition it is written into.
pub fn is_type_name(text: &str) -> bool {
    let mut chars = text.chars().peekable();
    let mut in_parens = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if !in_parens => loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => return false,
                }
            },
            '(' if !in_parens => in_parens = true,
            ')' if in_parens => in_parens = false,
            '0'..='9' | ',' | ' ' => {}
            _ if in_parens => return false,
            'a'..='z' | 'A'..='Z' | '_' | '.' | '[' | ']' => {}
            _ => return false,
        }
    }
    !in_parens && !text.trim().is_empty()
}

impl FileEntry {
    /// Checks a file read whole against what the export recorded for it: SHA-256, size and
    /// row count. A difference means the file was changed or replaced after the export.
    pub fn check_read(&self, path: &Path, read: &crate::json_rows::FileRead) -> Result<()> {
        if read.sha256 != self.sha256 || read.bytes != self.bytes {
            bail!(
                "{} does not match metadata.json (SHA-256 {} vs {}, {} vs {} bytes): the file was \
                 changed after the export.\n  next step: run fmig export again",
                path.display(),
                read.sha256,
                self.sha256,
                read.bytes,
                self.bytes
            );
        }
        if read.rows != self.rows {
            bail!(
                "{} has {} rows but metadata.json says {}: the file or metadata.json was changed \
                 after the export.\n  next step: run fmig export again",
                path.display(),
                read.rows,
                self.rows
            );
        }
        Ok(())
    }
}

impl ColumnEntry {
    /// The JSON kind recorded in `json`, or `None` for a label this fmig does not know.
    pub fn kind(&self) -> Option<ColumnKind> {
        kind_from_label(&self.json)
    }
}

/// `int4`, `text`, `array:numeric`: how a column's JSON kind is written in `metadata.json`.
pub fn kind_label(kind: &ColumnKind) -> String {
    match kind {
        ColumnKind::Array(element) => format!("array:{}", element.name()),
        k => k.name().to_string(),
    }
}

/// The inverse of [`kind_label`].
pub fn kind_from_label(label: &str) -> Option<ColumnKind> {
    if let Some(element) = label.strip_prefix("array:") {
        return match kind_from_label(element)? {
            ColumnKind::Array(_) => None,
            k => Some(ColumnKind::Array(Box::new(k))),
        };
    }
    use ColumnKind::*;
    [
        Bool,
        Int2,
        Int4,
        Int8,
        Float4,
        Float8,
        Numeric,
        Text,
        Uuid,
        Date,
        Time,
        Timestamp,
        Timestamptz,
        Json,
        Jsonb,
        Bytea,
    ]
    .into_iter()
    .find(|k| k.name() == label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_format_type_shapes() {
        for fine in [
            "uuid",
            "numeric(6,2)",
            "character varying(64)[]",
            "timestamp(3) with time zone",
            "\"char\"",
            "public.\"Odd; ) Name\"\"\"",
            "int4[][]",
            "interval second(0)",
        ] {
            assert!(is_type_name(fine), "{fine}");
        }
        for bad in [
            "text); DROP TABLE public.organizations; --",
            "text) --",
            "numeric(6,2",
            "numeric(a)",
            "text default 'x'",
            "\"open",
            "",
            "text/* */",
        ] {
            assert!(!is_type_name(bad), "{bad}");
        }
    }

    #[test]
    fn kind_labels_round_trip() {
        for kind in [
            ColumnKind::Numeric,
            ColumnKind::Timestamptz,
            ColumnKind::Array(Box::new(ColumnKind::Text)),
            ColumnKind::Array(Box::new(ColumnKind::Jsonb)),
        ] {
            assert_eq!(kind_from_label(&kind_label(&kind)), Some(kind));
        }
        assert_eq!(kind_from_label("array:array:int4"), None);
        assert_eq!(kind_from_label("money"), None);
    }
}
