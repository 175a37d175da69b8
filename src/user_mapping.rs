//! `user-mapping.json`: which Stack Auth user each Supabase user became, and the journal it is
//! rebuilt from.
//!
//! The mapping is what `fmig import` rewrites user ids with, and what customer support looks
//! people up in for 90 days (then `fmig mapping prune` deletes it: it holds e-mail addresses).
//! Its format is the one operators know:
//!
//! ```json
//! {"generatedAt": "2026-04-20T01:02:03.456Z", "retainUntil": "2026-07-19T01:02:03.456Z",
//!  "mappings": [{"supabaseUserId": "...", "stackAuthUserId": "...", "email": "...",
//!                "migratedAt": "2026-04-20T01:00:00.000Z"}]}
//! ```
//!
//! For `import`: `UserMapping::load(path)?.id_map()` is the Supabase id -> Stack Auth id table;
//! [`UserMapping::stack_auth_id`] looks up one id (case-insensitively, as UUIDs compare).
//!
//! The mapping is never the only record. `migrate-users` appends one line per user to the
//! [`Journal`] (`user-migration.journal.jsonl`, next to the mapping) and fsyncs it as soon as
//! Stack Auth has answered; the mapping file is rewritten atomically from the journal. A kill
//! at any moment leaves at worst a torn last journal line, which [`Journal::open`] drops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::files;

/// Default name of the mapping file, in the export directory.
pub const FILE_NAME: &str = "user-mapping.json";
/// The journal's name, next to the mapping file.
pub const JOURNAL_FILE_NAME: &str = "user-migration.journal.jsonl";
/// The list of users to contact, next to the mapping file.
pub const RESET_CSV_FILE_NAME: &str = "password-reset-needed.csv";
pub const ATTENTION_CSV_FILE_NAME: &str = "users-needing-attention.csv";
/// What migrate-users decided with (its flags, the users file), for `verify --only users`.
pub const CHOICES_FILE_NAME: &str = "user-migration.choices.json";
/// How long the mapping is kept for customer support.
pub const RETENTION_DAYS: i64 = 90;

/// The journal of the mapping at `mapping_path` (same directory).
pub fn journal_path(mapping_path: &Path) -> PathBuf {
    sibling(mapping_path, JOURNAL_FILE_NAME)
}

/// The password-reset list of the mapping at `mapping_path` (same directory).
pub fn reset_csv_path(mapping_path: &Path) -> PathBuf {
    sibling(mapping_path, RESET_CSV_FILE_NAME)
}

/// The choices of the migrate-users run that wrote the mapping at `mapping_path`.
pub fn choices_path(mapping_path: &Path) -> PathBuf {
    sibling(mapping_path, CHOICES_FILE_NAME)
}

/// Every user migrate-users could not carry over as-is, next to the mapping.
pub fn attention_csv_path(mapping_path: &Path) -> PathBuf {
    sibling(mapping_path, ATTENTION_CSV_FILE_NAME)
}

fn sibling(path: &Path, name: &str) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// ISO 8601 in UTC with milliseconds and `Z`, as in the previous scripts' files.
pub fn iso(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) mod iso_time {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&iso(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not an ISO 8601 time: {e}")))
    }
}

/// One migrated user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingEntry {
    pub supabase_user_id: String,
    pub stack_auth_user_id: String,
    /// The user's e-mail as Stack Auth holds it (lower-cased), `null` for users without one.
    pub email: Option<String>,
    #[serde(with = "iso_time")]
    pub migrated_at: DateTime<Utc>,
}

/// The contents of `user-mapping.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserMapping {
    #[serde(with = "iso_time")]
    pub generated_at: DateTime<Utc>,
    /// `generatedAt` + 90 days: after it, `fmig mapping prune` deletes the file.
    #[serde(with = "iso_time")]
    pub retain_until: DateTime<Utc>,
    /// Sorted by `supabaseUserId`, one entry per Supabase user.
    pub mappings: Vec<MappingEntry>,
}

impl UserMapping {
    /// A mapping generated at `generated_at` (kept [`RETENTION_DAYS`] from then).
    pub fn new(mut mappings: Vec<MappingEntry>, generated_at: DateTime<Utc>) -> UserMapping {
        mappings.sort_by(|a, b| a.supabase_user_id.cmp(&b.supabase_user_id));
        UserMapping {
            generated_at,
            retain_until: generated_at + chrono::Duration::days(RETENTION_DAYS),
            mappings,
        }
    }

    /// Reads and checks a mapping file: one entry per Supabase user, no empty ids.
    pub fn load(path: &Path) -> Result<UserMapping> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "could not read the user mapping {} (written by fmig migrate-users)",
                path.display()
            )
        })?;
        let mapping: UserMapping = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a user mapping ({{\"generatedAt\", \"retainUntil\", \"mappings\": [...]}})",
                path.display()
            )
        })?;
        let mut seen = HashMap::new();
        let mut targets: HashMap<String, usize> = HashMap::new();
        for (i, entry) in mapping.mappings.iter().enumerate() {
            for (field, id) in [
                ("supabaseUserId", &entry.supabase_user_id),
                ("stackAuthUserId", &entry.stack_auth_user_id),
            ] {
                if !is_uuid(id) {
                    bail!(
                        "{}: mapping {} has {field} {id:?}, which is not a UUID",
                        path.display(),
                        i + 1
                    );
                }
            }
            if let Some(other) = seen.insert(entry.supabase_user_id.to_lowercase(), i) {
                bail!(
                    "{}: Supabase user {} is mapped twice (entries {} and {})",
                    path.display(),
                    entry.supabase_user_id,
                    other + 1,
                    i + 1
                );
            }
            // Two old users rewritten to one new id would merge their data for good.
            if let Some(other) = targets.insert(entry.stack_auth_user_id.to_lowercase(), i) {
                bail!(
                    "{}: Supabase users {} and {} are mapped to the same Stack Auth user {} \
                     (entries {} and {}); importing would merge their data.\n  next step: \
                     correct the file, or run fmig migrate-users again to rebuild it",
                    path.display(),
                    mapping.mappings[other].supabase_user_id,
                    entry.supabase_user_id,
                    entry.stack_auth_user_id,
                    other + 1,
                    i + 1
                );
            }
        }
        Ok(mapping)
    }

    /// Writes the file atomically with mode 0600 (it holds e-mail addresses).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        files::write_atomically(path, &json)?;
        Ok(())
    }

    /// Supabase user id (lower-cased) -> Stack Auth user id. This is
    /// the table `import` rewrites user-id columns with.
    pub fn id_map(&self) -> HashMap<String, String> {
        self.mappings
            .iter()
            .map(|m| {
                (
                    m.supabase_user_id.to_ascii_lowercase(),
                    m.stack_auth_user_id.clone(),
                )
            })
            .collect()
    }

    /// The Stack Auth id of a Supabase user (UUIDs compared case-insensitively).
    pub fn stack_auth_id(&self, supabase_user_id: &str) -> Option<&str> {
        self.by_supabase_id(supabase_user_id)
            .map(|m| m.stack_auth_user_id.as_str())
    }

    pub fn by_supabase_id(&self, id: &str) -> Option<&MappingEntry> {
        self.mappings
            .iter()
            .find(|m| m.supabase_user_id.eq_ignore_ascii_case(id.trim()))
    }

    pub fn by_stack_auth_id(&self, id: &str) -> Option<&MappingEntry> {
        self.mappings
            .iter()
            .find(|m| m.stack_auth_user_id.eq_ignore_ascii_case(id.trim()))
    }

    /// Entries with this e-mail (case-insensitive).
    pub fn by_email(&self, email: &str) -> Vec<&MappingEntry> {
        let email = email.trim().to_lowercase();
        self.mappings
            .iter()
            .filter(|m| m.email.as_deref().map(str::to_lowercase) == Some(email.clone()))
            .collect()
    }

    /// What customer support types in: an old id, a new id or an e-mail.
    pub fn lookup(&self, key: &str) -> Vec<&MappingEntry> {
        if key.contains('@') {
            return self.by_email(key);
        }
        self.by_supabase_id(key)
            .into_iter()
            .chain(self.by_stack_auth_id(key))
            .collect()
    }

    /// Whether `retainUntil` has passed.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.retain_until
    }
}

/// How a journal line came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalEvent {
    /// fmig created the user and Stack Auth answered.
    Created,
    /// Found in Stack Auth with our `supabase_user_id` but not in the journal: a run was killed
    /// between the server's answer and the journal write.
    Reconciled,
    /// A pre-existing Stack Auth user with the same e-mail, mapped on purpose
    /// (`--adopt-existing`).
    Adopted,
    /// The Stack Auth user of an earlier line no longer exists (deleted by someone): forget it.
    Missing,
}

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    pub event: JournalEvent,
    /// The Stack Auth project: a journal reused against another project is not mixed in.
    pub project_id: String,
    pub supabase_user_id: String,
    pub stack_auth_user_id: String,
    pub email: Option<String>,
    #[serde(with = "iso_time")]
    pub migrated_at: DateTime<Utc>,
}

/// What [`Journal::open`] found.
#[derive(Debug, Default)]
pub struct JournalContents {
    /// Every complete line, in order.
    pub entries: Vec<JournalEntry>,
    /// Bytes of an incomplete last line that were cut off (a kill during a write).
    pub torn_bytes: usize,
}

impl JournalContents {
    /// The current mapping of `project_id`: later lines win, `Missing` lines remove.
    pub fn mappings(&self, project_id: &str) -> BTreeMap<String, MappingEntry> {
        let mut map = BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.project_id == project_id) {
            match e.event {
                JournalEvent::Missing => {
                    if map
                        .get(&e.supabase_user_id)
                        .is_some_and(|m: &MappingEntry| {
                            m.stack_auth_user_id == e.stack_auth_user_id
                        })
                    {
                        map.remove(&e.supabase_user_id);
                    }
                }
                _ => {
                    map.insert(
                        e.supabase_user_id.clone(),
                        MappingEntry {
                            supabase_user_id: e.supabase_user_id.clone(),
                            stack_auth_user_id: e.stack_auth_user_id.clone(),
                            email: e.email.clone(),
                            migrated_at: e.migrated_at,
                        },
                    );
                }
            }
        }
        map
    }

    /// Supabase users whose current mapping is an adopted account (`--adopt-existing`): an
    /// account fmig did not create, so it carries no `supabase_user_id` of fmig's.
    pub fn adopted(&self, project_id: &str) -> HashSet<String> {
        let mut adopted = HashSet::new();
        for e in self.entries.iter().filter(|e| e.project_id == project_id) {
            if e.event == JournalEvent::Adopted {
                adopted.insert(e.supabase_user_id.clone());
            } else {
                adopted.remove(&e.supabase_user_id);
            }
        }
        adopted
    }

    /// Lines that belong to other projects.
    pub fn other_projects(&self, project_id: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.project_id != project_id)
            .count()
    }
}

/// The append-only, fsynced record of every user migrate-users mapped.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating, mode 0600) the journal at `path` and reads it. An incomplete last line
    /// is cut off the file, so the next append starts on a fresh line; a bad line anywhere
    /// else is an error (the file was edited or the disk is failing: a human should look).
    pub fn open(path: &Path) -> Result<(Journal, JournalContents)> {
        let existed = path.exists();
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .with_context(|| format!("could not open the journal {}", path.display()))?;
        if !existed {
            files::sync_dir(
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("could not read the journal {}", path.display()))?;
        let contents = parse(&bytes, path)?;
        if contents.torn_bytes > 0 {
            let keep = (bytes.len() - contents.torn_bytes) as u64;
            file.set_len(keep)
                .and_then(|_| file.sync_all())
                .with_context(|| {
                    format!("could not cut the torn last line of {}", path.display())
                })?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
            },
            contents,
        ))
    }

    /// Reads the journal at `path` without changing it (`None` when there is none); an
    /// incomplete last line is left out, as [`Journal::open`] would cut it.
    pub fn read(path: &Path) -> Result<Option<JournalContents>> {
        match std::fs::read(path) {
            Ok(bytes) => parse(&bytes, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("could not read the journal {}", path.display()))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entries` and makes them durable (one fsync for the batch) before returning.
    pub fn append(&mut self, entries: &[JournalEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(entries.len() * 200);
        for entry in entries {
            serde_json::to_writer(&mut buf, entry)?;
            buf.push(b'\n');
        }
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("could not write the journal {}", self.path.display()))
    }
}

fn parse(bytes: &[u8], path: &Path) -> Result<JournalContents> {
    let mut contents = JournalContents::default();
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let (line, next, complete) = match bytes[start..].iter().position(|b| *b == b'\n') {
            Some(n) => (&bytes[start..start + n], start + n + 1, true),
            None => (&bytes[start..], bytes.len(), false),
        };
        if !complete {
            // Written without its newline: the kill came mid-write. Whatever it holds, the
            // next run's reconciliation finds that user in Stack Auth.
            contents.torn_bytes = line.len();
            break;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            let entry: JournalEntry = serde_json::from_slice(line).with_context(|| {
                format!(
                    "{} line {line_no} is not a journal entry; the journal is damaged - move it aside \
                     and re-run (migrate-users reconciles with Stack Auth and rebuilds it)",
                    path.display()
                )
            })?;
            contents.entries.push(entry);
        }
        start = next;
    }
    Ok(contents)
}

/// `8-4-4-4-12` hexadecimal, either case.
pub fn is_uuid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn entry(event: JournalEvent, project: &str, sup: &str, stack: &str) -> JournalEntry {
        JournalEntry {
            event,
            project_id: project.into(),
            supabase_user_id: sup.into(),
            stack_auth_user_id: stack.into(),
            email: Some(format!("{sup}@x.example")),
            migrated_at: t("2026-04-20T01:00:00Z"),
        }
    }

    #[test]
    fn the_file_format_is_exactly_the_specs() {
        let m = UserMapping::new(
            vec![MappingEntry {
                supabase_user_id: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
                stack_auth_user_id: "5f1c2d3e-0000-4000-8000-000000000001".into(),
                email: Some("chef@freshtrack.example".into()),
                migrated_at: t("2026-04-20T01:02:03.456789Z"),
            }],
            t("2026-04-20T02:00:00Z"),
        );
        let json: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "generatedAt": "2026-04-20T02:00:00.000Z",
                "retainUntil": "2026-07-19T02:00:00.000Z",
                "mappings": [{
                    "supabaseUserId": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                    "stackAuthUserId": "5f1c2d3e-0000-4000-8000-000000000001",
                    "email": "chef@freshtrack.example",
                    "migratedAt": "2026-04-20T01:02:03.456Z"
                }]
            })
        );
    }

    #[test]
    fn malformed_ids_are_refused_with_the_entry_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(
            &path,
            r#"{"generatedAt":"2026-04-20T00:00:00.000Z","retainUntil":"2026-07-19T00:00:00.000Z","mappings":[
              {"supabaseUserId":"aaaaaaaa-0000-4000-8000-000000000001","stackAuthUserId":"not-a-uuid","email":null,"migratedAt":"2026-04-20T00:00:00.000Z"}]}"#,
        )
        .unwrap();
        let err = format!("{:#}", UserMapping::load(&path).unwrap_err());
        assert!(
            err.contains("mapping 1 has stackAuthUserId \"not-a-uuid\", which is not a UUID"),
            "{err}"
        );
    }

    #[test]
    fn two_users_mapped_to_one_stack_auth_user_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(
            &path,
            r#"{"generatedAt":"2026-04-20T00:00:00.000Z","retainUntil":"2026-07-19T00:00:00.000Z","mappings":[
              {"supabaseUserId":"aaaaaaaa-0000-4000-8000-000000000001","stackAuthUserId":"bbbbbbbb-0000-4000-8000-000000000001","email":null,"migratedAt":"2026-04-20T00:00:00.000Z"},
              {"supabaseUserId":"aaaaaaaa-0000-4000-8000-000000000002","stackAuthUserId":"BBBBBBBB-0000-4000-8000-000000000001","email":null,"migratedAt":"2026-04-20T00:00:00.000Z"}]}"#,
        )
        .unwrap();
        let err = format!("{:#}", UserMapping::load(&path).unwrap_err());
        assert!(
            err.contains("aaaaaaaa-0000-4000-8000-000000000001 and aaaaaaaa-0000-4000-8000-000000000002 are mapped to the same Stack Auth user"),
            "{err}"
        );
        assert!(err.contains("(entries 1 and 2)"), "{err}");
    }

    #[test]
    fn written_mappings_load_back_privately_and_answer_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let m = UserMapping::new(
            vec![
                MappingEntry {
                    supabase_user_id: "bbbbbbbb-0000-4000-8000-000000000002".into(),
                    stack_auth_user_id: "22222222-0000-4000-8000-000000000002".into(),
                    email: None,
                    migrated_at: t("2026-04-20T01:00:00Z"),
                },
                MappingEntry {
                    supabase_user_id: "aaaaaaaa-0000-4000-8000-000000000001".into(),
                    stack_auth_user_id: "11111111-0000-4000-8000-000000000001".into(),
                    email: Some("chef@freshtrack.example".into()),
                    migrated_at: t("2026-04-20T01:00:00Z"),
                },
            ],
            t("2026-04-20T02:00:00Z"),
        );
        m.write(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = UserMapping::load(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            back.mappings[0].supabase_user_id, "aaaaaaaa-0000-4000-8000-000000000001",
            "sorted"
        );
        assert_eq!(
            back.stack_auth_id("AAAAAAAA-0000-4000-8000-000000000001"),
            Some("11111111-0000-4000-8000-000000000001")
        );
        assert_eq!(
            back.id_map()["bbbbbbbb-0000-4000-8000-000000000002"],
            "22222222-0000-4000-8000-000000000002"
        );
        assert_eq!(
            back.lookup("22222222-0000-4000-8000-000000000002")[0].supabase_user_id,
            "bbbbbbbb-0000-4000-8000-000000000002"
        );
        assert_eq!(
            back.lookup("Chef@FreshTrack.example")[0].stack_auth_user_id,
            "11111111-0000-4000-8000-000000000001"
        );
        assert!(back.lookup("nobody@x.example").is_empty());
        assert!(!back.is_expired(t("2026-07-19T01:59:59Z")));
        assert!(back.is_expired(t("2026-07-19T02:00:00Z")));

        std::fs::write(
            &path,
            r#"{"generatedAt":"2026-04-20T02:00:00Z","retainUntil":"2026-07-19T02:00:00Z","mappings":[
            {"supabaseUserId":"aaaaaaaa-0000-4000-8000-000000000001","stackAuthUserId":"11111111-0000-4000-8000-000000000001","email":null,"migratedAt":"2026-04-20T02:00:00Z"},
            {"supabaseUserId":"AAAAAAAA-0000-4000-8000-000000000001","stackAuthUserId":"22222222-0000-4000-8000-000000000002","email":null,"migratedAt":"2026-04-20T02:00:00Z"}]}"#,
        )
        .unwrap();
        let err = UserMapping::load(&path).unwrap_err().to_string();
        assert!(err.contains("mapped twice"), "{err}");
    }

    #[test]
    fn the_journal_survives_a_torn_last_line_and_later_lines_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE_NAME);
        {
            let (mut j, c) = Journal::open(&path).unwrap();
            assert!(c.entries.is_empty());
            j.append(&[
                entry(JournalEvent::Created, "p", "s1", "n1"),
                entry(JournalEvent::Created, "p", "s2", "n2"),
                entry(JournalEvent::Created, "other", "s3", "n3"),
            ])
            .unwrap();
        }
        // A kill in the middle of the next write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":"created","projectId":"p","supa"#)
            .unwrap();
        drop(f);
        let (mut j, c) = Journal::open(&path).unwrap();
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.torn_bytes, 40);
        assert_eq!(c.other_projects("p"), 1);
        j.append(&[
            entry(JournalEvent::Missing, "p", "s2", "n2"),
            entry(JournalEvent::Reconciled, "p", "s4", "n4"),
            entry(JournalEvent::Adopted, "p", "s1", "n1b"),
        ])
        .unwrap();
        drop(j);
        let (_, c) = Journal::open(&path).unwrap();
        assert_eq!(c.torn_bytes, 0);
        let map = c.mappings("p");
        let pairs: Vec<(&str, &str)> = map
            .values()
            .map(|m| (m.supabase_user_id.as_str(), m.stack_auth_user_id.as_str()))
            .collect();
        assert_eq!(pairs, [("s1", "n1b"), ("s4", "n4")]);

        std::fs::write(&path, "{\"not\":\"an entry\"}\n{}\n").unwrap();
        let err = format!("{:#}", Journal::open(&path).unwrap_err());
        assert!(err.contains("line 1"), "{err}");
    }
}
