//! Shared integration-test support: throwaway PostgreSQL clusters and a seeded FreshTrack
//! source. Use it from a test file with `mod support;`.
// Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod cluster;
pub mod seed;

pub use cluster::{Cluster, ClusterOptions};
pub use seed::{
    KNOWN_BCRYPT, ORPHAN_ACTOR_ID, SPEC_LEVELS, SPEC_USER_ID_COLUMNS, SeedConfig, SeedSummary,
    SeededUser, UserCounts, fk_levels, load_source_schema, load_target_schema, seed_source,
    sql_literal,
};
