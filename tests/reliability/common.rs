//! What the scenarios share: a seeded source and an empty drifted target (databases of one
//! throwaway cluster, or two clusters when a scenario restarts or stops one side), an export,
//! a user mapping, and an order-independent fingerprint of the imported tables.
// Not every scenario module uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::support::cli::{Run, Workdir};
use crate::support::cluster::Cluster;
use crate::support::seed::{self, SeedConfig};

pub const SOURCE_DB: &str = "postgres";
pub const TARGET_DB: &str = "target";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A seeded source and an empty target with the fixture schemas, in one cluster, and a work
/// directory holding `fmig.toml` (the fixture's column mapping).
pub struct Setup {
    pub cluster: Cluster,
    pub work: Workdir,
    /// The rewrite fixture (`tests/fixtures/rewrite`) is laid over the pair.
    pub rewrite: bool,
}

impl Setup {
    pub fn new(config: &SeedConfig) -> Setup {
        Setup::with(config, false)
    }

    /// [`Setup::new`] with the real rewrite's drift and its mapping (row filters, lookups,
    /// per-column unmapped policies, a generated secret).
    pub fn rewrite(config: &SeedConfig) -> Setup {
        Setup::with(config, true)
    }

    fn with(config: &SeedConfig, rewrite: bool) -> Setup {
        let cluster = Cluster::start();
        seed::load_source_schema(&cluster, SOURCE_DB);
        seed::seed_source(&cluster, SOURCE_DB, config);
        if rewrite {
            cluster.psql_file(SOURCE_DB, &fixture("rewrite/source.sql"));
        }
        let work = Workdir::new();
        let mapping = if rewrite {
            "rewrite/fmig.toml"
        } else {
            "fmig.toml"
        };
        std::fs::copy(fixture(mapping), work.path().join("fmig.toml")).unwrap();
        let setup = Setup {
            cluster,
            work,
            rewrite,
        };
        setup.cluster.create_database(TARGET_DB);
        setup.load_target_schema(TARGET_DB);
        setup
    }

    /// The target schema (with the rewrite's drift when the setup has it) into `db`.
    pub fn load_target_schema(&self, db: &str) {
        seed::load_target_schema(&self.cluster, db);
        if self.rewrite {
            self.cluster.psql_file(db, &fixture("rewrite/target.sql"));
        }
    }

    pub fn source_url(&self) -> String {
        self.cluster.url(SOURCE_DB)
    }

    pub fn target_url(&self) -> String {
        self.cluster.url(TARGET_DB)
    }

    /// `fmig export --output-dir <dir>` (relative to the work directory).
    pub fn export(&self, dir: &str) -> Run {
        self.work.run(
            &["export", "--output-dir", dir],
            &[("SUPABASE_DB_URL", &self.source_url())],
        )
    }

    /// Writes `<dir>/user-mapping.json`: see [`write_user_mapping`].
    pub fn write_user_mapping(&self, dir: &str) {
        write_user_mapping(&self.cluster, &self.work, dir);
    }

    /// `fmig import --input-dir <dir> --unmapped null <extra>` into `db`.
    pub fn import_into(&self, db: &str, dir: &str, extra: &[&str]) -> Run {
        let mut args = vec!["import", "--input-dir", dir, "--unmapped", "null"];
        args.extend_from_slice(extra);
        self.work
            .run(&args, &[("DATABASE_URL", &self.cluster.url(db))])
    }

    /// `fmig verify --export-dir <dir> --unmapped null` of `db` against the source.
    pub fn verify(&self, db: &str, dir: &str) -> Run {
        self.work.run(
            &["verify", "--export-dir", dir, "--unmapped", "null"],
            &[
                ("SUPABASE_DB_URL", &self.source_url()),
                ("DATABASE_URL", &self.cluster.url(db)),
            ],
        )
    }
}

/// Writes `<dir>/user-mapping.json` in `work`, giving every auth user of `source` the new id
/// `md5('stack' || id)::uuid`, so a test can predict it.
pub fn write_user_mapping(source: &Cluster, work: &Workdir, dir: &str) {
    let mapping = source.psql(
        SOURCE_DB,
        "SELECT json_build_object('generatedAt', '2026-11-22T00:00:00Z', 'retainUntil', '2027-02-20T00:00:00Z', \
           'mappings', json_agg(json_build_object('supabaseUserId', id, \
             'stackAuthUserId', md5('stack' || id)::uuid, 'email', email, 'migratedAt', '2026-11-22T00:00:00Z'))) \
         FROM auth.users",
    );
    std::fs::write(
        work.path().join(dir).join("user-mapping.json"),
        mapping.trim(),
    )
    .unwrap();
}

/// Per imported table: row count and an order-independent hash of its rows.
pub fn fingerprint(cluster: &Cluster, db: &str) -> Vec<(String, u64, String)> {
    fingerprint_without(cluster, db, &[])
}

/// [`fingerprint`] leaving out `generated` columns (a random secret the mapping generates, which
/// differs between any two imports; verify lists it as not compared).
pub fn fingerprint_without(
    cluster: &Cluster,
    db: &str,
    generated: &[&str],
) -> Vec<(String, u64, String)> {
    let row = generated.iter().fold("to_jsonb(x)".to_string(), |acc, c| {
        format!("({acc} - '{c}')")
    });
    fmig::manifest::builtin()
        .iter()
        .map(|t| {
            let line = cluster.psql(
                db,
                &format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg({row}::text, '|' ORDER BY {row}::text)), '') \
                     FROM public.{} x",
                    t.name
                ),
            );
            let (count, hash) = line.trim().split_once(':').unwrap();
            (t.name.to_string(), count.parse().unwrap(), hash.to_string())
        })
        .collect()
}

/// Rows lost or duplicated in `got` against `reference`: the row-count difference per table,
/// or, where counts agree but contents differ, one (a changed row is a lost row).
pub fn rows_lost(reference: &[(String, u64, String)], got: &[(String, u64, String)]) -> u64 {
    reference
        .iter()
        .zip(got)
        .map(|((_, rc, rh), (_, gc, gh))| {
            if rc != gc {
                rc.abs_diff(*gc)
            } else if rh != gh {
                1
            } else {
                0
            }
        })
        .sum()
}

/// Every user table of `db` with at least one row, "" when all are empty: what a run that
/// must not write can be checked against.
pub fn nonempty_tables(cluster: &Cluster, db: &str) -> String {
    let counts: Vec<String> = fmig::manifest::builtin()
        .iter()
        .map(|t| {
            format!(
                "SELECT '{0}' AS t FROM public.{0} HAVING count(*) > 0",
                t.name
            )
        })
        .collect();
    let mut names = cluster
        .psql(db, &counts.join(" UNION ALL "))
        .trim()
        .to_string();
    if cluster
        .psql(db, "SELECT to_regnamespace('fmig') IS NOT NULL")
        .trim()
        == "t"
    {
        names.push_str(" fmig schema");
    }
    names.trim().to_string()
}
