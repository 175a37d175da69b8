//! What a live database says about its tables: which exist, their columns, foreign keys, the
//! dependency levels those keys imply, and which columns reference `auth.users(id)`.
//!
//! Everything here reads `pg_catalog` only, so it runs inside whatever transaction (and
//! snapshot) the caller holds.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::ident::{QualifiedName, quote_ident};
use crate::manifest::APP_SCHEMA;

/// A table of the application schema.
#[derive(Clone, Debug, Serialize)]
pub struct TableInfo {
    pub name: String,
    /// Declared `PARTITION BY`; its rows live in partitions that are not listed separately.
    pub partitioned: bool,
    pub has_primary_key: bool,
    /// Columns in attribute order.
    pub columns: Vec<Column>,
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A column and its type, as `pg_attribute`/`pg_type` describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// `format_type()`: `numeric(6,2)`, `character varying(255)`, `text[]`, `alert_severity`.
    pub type_name: String,
    /// `pg_type.typtype`: b(ase), c(omposite), d(omain), e(num), p(seudo), r(ange), m(ultirange).
    pub type_kind: char,
    /// `pg_type.typcategory`; `A` for arrays.
    pub type_category: char,
    /// For a domain, the innermost base type.
    pub base_oid: Option<u32>,
    pub not_null: bool,
    /// The default expression (`pg_get_expr`), if any.
    pub default: Option<String>,
    /// `GENERATED ALWAYS AS (...) STORED`: computed by the server, never written.
    pub generated: bool,
    /// `GENERATED ... AS IDENTITY`.
    pub identity: bool,
}

impl Column {
    /// The type facts the codec chooses a decoder (and a cast) by.
    pub fn pg_type(&self) -> crate::codec::PgType {
        crate::codec::PgType {
            oid: self.type_oid,
            name: self.type_name.clone(),
            typtype: self.type_kind,
            category: self.type_category,
            base_oid: self.base_oid,
        }
    }
}

/// A foreign key between two tables of the application schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignKey {
    pub constraint: String,
    pub table: String,
    pub columns: Vec<String>,
    pub references: String,
    pub referenced_columns: Vec<String>,
}

/// The catalog facts of one schema, with the derived dependency levels.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Discovered {
    pub schema: String,
    pub tables: BTreeMap<String, TableInfo>,
    /// Foreign keys whose both ends are tables of the schema (self-references included).
    pub foreign_keys: Vec<ForeignKey>,
    /// Level 0: references no other table; level n: references only tables of lower levels.
    /// Members of a cycle share one level.
    pub levels: BTreeMap<String, usize>,
    /// Groups of tables whose foreign keys reference each other in a cycle.
    pub cycles: Vec<Vec<String>>,
    /// (table, constraint) for foreign keys that reference their own table.
    pub self_references: Vec<(String, String)>,
    /// Columns with a single-column foreign key to `auth.users(id)`, per table.
    pub user_id_columns: BTreeMap<String, Vec<String>>,
    /// Whether `auth.users` exists (a Supabase source; false on the self-hosted target).
    pub auth_users_present: bool,
}

/// Reads the catalog of `schema`.
pub async fn discover(client: &impl GenericClient, schema: &str) -> Result<Discovered> {
    let mut tables = BTreeMap::new();
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind = 'p', \
                    EXISTS (SELECT 1 FROM pg_constraint k \
                            WHERE k.conrelid = c.oid AND k.contype = 'p') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            &[&schema],
        )
        .await
        .with_context(|| format!("could not list the tables of schema {schema}"))?;
    for row in rows {
        let name: String = row.get(0);
        tables.insert(
            name.clone(),
            TableInfo {
                name,
                partitioned: row.get(1),
                has_primary_key: row.get(2),
                columns: Vec::new(),
            },
        );
    }
    // Domains over domains are resolved to the innermost base type by the recursive part.
    let rows = client
        .query(
            "WITH RECURSIVE base(oid, base) AS ( \
                 SELECT t.oid, t.typbasetype FROM pg_type t WHERE t.typtype = 'd' \
                 UNION ALL \
                 SELECT b.oid, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.base \
                 WHERE t.typtype = 'd') \
             SELECT c.relname::text, a.attname::text, a.atttypid, \
                    format_type(a.atttypid, a.atttypmod), t.typtype::text, t.typcategory::text, \
                    (SELECT b.base FROM base b JOIN pg_type bt ON bt.oid = b.base \
                     WHERE b.oid = t.oid AND bt.typtype <> 'd'), \
                    a.attnotnull, pg_get_expr(d.adbin, d.adrelid), \
                    a.attgenerated <> '', a.attidentity <> '' \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY c.relname, a.attnum",
            &[&schema],
        )
        .await
        .with_context(|| format!("could not list the columns of schema {schema}"))?;
    for row in rows {
        let table: String = row.get(0);
        let char_of = |i: usize| row.get::<_, String>(i).chars().next().unwrap_or(' ');
        let generated: bool = row.get(9);
        let column = Column {
            name: row.get(1),
            type_oid: row.get(2),
            type_name: row.get(3),
            type_kind: char_of(4),
            type_category: char_of(5),
            base_oid: row.get(6),
            not_null: row.get(7),
            // A generated column's expression sits in pg_attrdef too; it is not a default.
            default: if generated { None } else { row.get(8) },
            generated,
            identity: row.get(10),
        };
        if let Some(info) = tables.get_mut(&table) {
            info.columns.push(column);
        }
    }

    // conparentid = 0 keeps the constraint declared on a partitioned table and drops the
    // copies PostgreSQL clones onto (and towards) each partition.
    let rows = client
        .query(
            "SELECT k.conname::text, c.relname::text, rn.nspname::text, rc.relname::text, \
                    ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(num, i) \
                          JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num \
                          ORDER BY u.i), \
                    ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(num, i) \
                          JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num \
                          ORDER BY u.i) \
             FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_class rc ON rc.oid = k.confrelid \
             JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
             WHERE k.contype = 'f' AND k.conparentid = 0 AND n.nspname = $1 \
             ORDER BY c.relname, k.conname",
            &[&schema],
        )
        .await
        .with_context(|| format!("could not list the foreign keys of schema {schema}"))?;
    let mut foreign_keys = Vec::new();
    let mut user_id_columns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        let constraint: String = row.get(0);
        let table: String = row.get(1);
        let ref_schema: String = row.get(2);
        let ref_table: String = row.get(3);
        let columns: Vec<String> = row.get(4);
        let referenced_columns: Vec<String> = row.get(5);
        if ref_schema == "auth" && ref_table == "users" && referenced_columns == ["id"] {
            if let [column] = columns.as_slice() {
                let list = user_id_columns.entry(table.clone()).or_default();
                if !list.contains(column) {
                    list.push(column.clone());
                }
            }
        } else if ref_schema == schema && tables.contains_key(&table) {
            foreign_keys.push(ForeignKey {
                constraint,
                table,
                columns,
                references: ref_table,
                referenced_columns,
            });
        }
    }

    let auth_users_present: bool = client
        .query_one("SELECT to_regclass('auth.users') IS NOT NULL", &[])
        .await
        .context("could not check for auth.users")?
        .get(0);

    let graph = dependency_levels(tables.keys().map(String::as_str), &foreign_keys);
    Ok(Discovered {
        schema: schema.to_string(),
        tables,
        foreign_keys,
        levels: graph.levels,
        cycles: graph.cycles,
        self_references: graph.self_references,
        user_id_columns,
        auth_users_present,
    })
}

/// Levels, cycles and self-references of a foreign-key graph.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Levels {
    pub levels: BTreeMap<String, usize>,
    pub cycles: Vec<Vec<String>>,
    pub self_references: Vec<(String, String)>,
}

/// Computes each table's level from the foreign keys between `tables`.
///
/// Tables that reference each other in a cycle are collapsed into one node (strongly connected
/// components), so the computation always terminates and every table gets a level; the cycles are
/// returned for reporting. Self-references do not raise a table's level.
pub fn dependency_levels<'a>(
    tables: impl IntoIterator<Item = &'a str>,
    foreign_keys: &[ForeignKey],
) -> Levels {
    let names: Vec<&str> = tables
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); names.len()];
    let mut self_references = Vec::new();
    for fk in foreign_keys {
        let (Some(&from), Some(&to)) = (
            index.get(fk.table.as_str()),
            index.get(fk.references.as_str()),
        ) else {
            continue;
        };
        if from == to {
            self_references.push((fk.table.clone(), fk.constraint.clone()));
        } else {
            edges[from].insert(to);
        }
    }

    let components = strongly_connected_components(&edges);
    let mut component_of = vec![0; names.len()];
    for (c, members) in components.iter().enumerate() {
        for &m in members {
            component_of[m] = c;
        }
    }
    // Tarjan's algorithm emits a component only after every component it references, so one
    // pass in emission order sees each dependency's level before it is needed.
    let mut component_level = vec![0usize; components.len()];
    for (c, members) in components.iter().enumerate() {
        let mut level = 0;
        for &m in members {
            for &to in &edges[m] {
                let dep = component_of[to];
                if dep != c {
                    level = level.max(component_level[dep] + 1);
                }
            }
        }
        component_level[c] = level;
    }

    let mut levels = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        levels.insert(name.to_string(), component_level[component_of[i]]);
    }
    let mut cycles: Vec<Vec<String>> = components
        .iter()
        .filter(|members| members.len() > 1)
        .map(|members| {
            let mut tables: Vec<String> = members.iter().map(|&m| names[m].to_string()).collect();
            tables.sort();
            tables
        })
        .collect();
    cycles.sort();
    Levels {
        levels,
        cycles,
        self_references,
    }
}

/// Tarjan's strongly connected components, iterative so a deep chain cannot overflow the stack.
/// Components come out in reverse topological order (referenced tables first).
fn strongly_connected_components(edges: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    const UNVISITED: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![UNVISITED; n];
    let mut lowlink = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next_index = 0;
    let mut components = Vec::new();
    let adjacency: Vec<Vec<usize>> = edges.iter().map(|e| e.iter().copied().collect()).collect();

    for root in 0..n {
        if index[root] != UNVISITED {
            continue;
        }
        // (node, position in its adjacency list)
        let mut work = vec![(root, 0usize)];
        index[root] = next_index;
        lowlink[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (node, ref mut pos)) = work.last_mut() {
            if let Some(&next) = adjacency[node].get(*pos) {
                *pos += 1;
                if index[next] == UNVISITED {
                    index[next] = next_index;
                    lowlink[next] = next_index;
                    next_index += 1;
                    stack.push(next);
                    on_stack[next] = true;
                    work.push((next, 0));
                } else if on_stack[next] {
                    lowlink[node] = lowlink[node].min(index[next]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                lowlink[parent] = lowlink[parent].min(lowlink[node]);
            }
            if lowlink[node] == index[node] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

/// Exact row count of a table (all partitions included), in the caller's snapshot.
/// `N orphan row(s), e.g. ...` for a foreign key of the application schema that some rows
/// violate, `None` when none do (import's `--disable-fk` and `NOT VALID` reports, verify).
pub async fn orphans(client: &impl GenericClient, fk: &ForeignKey) -> Result<Option<String>> {
    let child = QualifiedName::new(APP_SCHEMA, &fk.table).quoted();
    let parent = QualifiedName::new(APP_SCHEMA, &fk.references).quoted();
    let not_null: Vec<String> = fk
        .columns
        .iter()
        .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
        .collect();
    let join: Vec<String> = fk
        .columns
        .iter()
        .zip(&fk.referenced_columns)
        .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
        .collect();
    let keys: Vec<String> = fk
        .columns
        .iter()
        .map(|c| format!("c.{}::text", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT count(*), (array_agg(concat_ws(',', {})))[1:5] FROM {child} c \
         WHERE {} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
        keys.join(", "),
        not_null.join(" AND "),
        join.join(" AND ")
    );
    let row = client.query_one(sql.as_str(), &[]).await?;
    let count: i64 = row.get(0);
    if count == 0 {
        return Ok(None);
    }
    let samples: Vec<String> = row.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
    Ok(Some(format!(
        "{count} orphan row(s), e.g. {}",
        samples.join("; ")
    )))
}

pub async fn row_count(client: &impl GenericClient, table: &QualifiedName) -> Result<i64> {
    let sql = format!("SELECT count(*) FROM {}", table.quoted());
    let row = client
        .query_one(sql.as_str(), &[])
        .await
        .with_context(|| format!("could not count the rows of {table}"))?;
    Ok(row.get(0))
}

/// On-disk size of a table with its indexes and TOAST, summed over partitions.
pub async fn total_size(client: &impl GenericClient, table: &QualifiedName) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT (pg_total_relation_size(r) + COALESCE( \
                 (SELECT sum(pg_total_relation_size(t.relid)) \
                  FROM pg_partition_tree(r) t WHERE t.relid <> r), 0))::int8 \
             FROM (SELECT $1::text::regclass AS r) x",
            &[&table.quoted()],
        )
        .await
        .with_context(|| format!("could not read the size of {table}"))?;
    Ok(row.get(0))
}

/// A type as `pg_type` describes it, with what comparing two databases' columns needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TypeInfo {
    pub oid: u32,
    /// `format_type(oid, NULL)`: `numeric`, `character varying`, `text[]`, `app_role`.
    pub name: String,
    /// `pg_type.typtype`: b(ase), c(omposite), d(omain), e(num), p(seudo), r(ange), m(ultirange).
    pub kind: char,
    /// `pg_type.typcategory`; `A` for arrays.
    pub category: char,
    /// For an array type, its element type.
    pub element: Option<u32>,
    /// For a domain, the type it is declared over (possibly another domain) and its modifier.
    pub base: Option<u32>,
    pub base_typmod: i32,
    /// For an enum, its labels in declared order.
    pub enum_labels: Vec<String>,
    /// For a domain: `NOT NULL`, and its CHECK constraints as `pg_get_constraintdef` prints
    /// them, sorted, so two databases' domains compare as text.
    pub domain_not_null: bool,
    pub domain_checks: Vec<String>,
}

/// The types `oids` and every type they are built on (array elements, domain bases), by oid.
pub async fn types(client: &impl GenericClient, oids: &[u32]) -> Result<BTreeMap<u32, TypeInfo>> {
    // typelem is followed for arrays only: fixed-length types such as `name` or `point` have a
    // typelem too, but are not containers of it.
    let rows = client
        .query(
            "WITH RECURSIVE closure(oid) AS ( \
                 SELECT unnest($1::oid[]) \
                 UNION \
                 SELECT v.x FROM closure c JOIN pg_type t ON t.oid = c.oid, \
                      LATERAL (VALUES (CASE WHEN t.typcategory = 'A' THEN t.typelem END), \
                                      (NULLIF(t.typbasetype, 0))) AS v(x) \
                 WHERE v.x IS NOT NULL AND v.x <> 0) \
             SELECT t.oid, format_type(t.oid, NULL), t.typtype::text, t.typcategory::text, \
                    CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem END, \
                    NULLIF(t.typbasetype, 0), t.typtypmod, \
                    ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid \
                          ORDER BY e.enumsortorder), \
                    t.typnotnull, \
                    ARRAY(SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k \
                          WHERE k.contypid = t.oid AND k.contype = 'c' ORDER BY 1) \
             FROM pg_type t JOIN closure c ON c.oid = t.oid",
            &[&oids],
        )
        .await
        .context("could not read the column types")?;
    let mut types = BTreeMap::new();
    for row in rows {
        let char_of = |i: usize| row.get::<_, String>(i).chars().next().unwrap_or(' ');
        let info = TypeInfo {
            oid: row.get(0),
            name: row.get(1),
            kind: char_of(2),
            category: char_of(3),
            element: row.get(4),
            base: row.get(5),
            base_typmod: row.get(6),
            enum_labels: row.get(7),
            domain_not_null: row.get(8),
            domain_checks: row.get(9),
        };
        types.insert(info.oid, info);
    }
    Ok(types)
}

/// `atttypmod` of every column of the schema's tables, by (table, column): the length of
/// `varchar(n)`, the precision and scale of `numeric(p,s)`, the precision of `timestamp(p)`;
/// -1 for none. For an array column it is the element's modifier.
pub async fn column_typmods(
    client: &impl GenericClient,
    schema: &str,
) -> Result<BTreeMap<(String, String), i32>> {
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text, a.atttypmod \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema],
        )
        .await
        .with_context(|| format!("could not read the column modifiers of schema {schema}"))?;
    Ok(rows
        .into_iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect())
}

/// How a partitioned table is split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    /// `pg_get_partkeydef`: `RANGE (recorded_at)`.
    pub key: String,
    /// Direct partitions.
    pub partitions: i64,
    /// Whether a DEFAULT partition catches rows that fit no other partition.
    pub has_default: bool,
}

/// The partitioned tables of a schema, by name.
pub async fn partitions(
    client: &impl GenericClient,
    schema: &str,
) -> Result<BTreeMap<String, PartitionInfo>> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_get_partkeydef(c.oid), \
                    (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid), \
                    EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid \
                            WHERE i.inhparent = c.oid \
                              AND pg_get_expr(p.relpartbound, p.oid) = 'DEFAULT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'p' AND NOT c.relispartition",
            &[&schema],
        )
        .await
        .with_context(|| format!("could not read the partitioned tables of schema {schema}"))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.get(0),
                PartitionInfo {
                    key: row.get(1),
                    partitions: row.get(2),
                    has_default: row.get(3),
                },
            )
        })
        .collect())
}

/// A uuid column without a foreign key, measured against `auth.users`: how many of its
/// non-NULL values are ids of users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserIdsByValue {
    pub table: String,
    pub column: String,
    pub non_null: i64,
    /// Non-NULL values that are an `auth.users.id`.
    pub matching: i64,
}

/// Finds user-id columns by their values: every scalar uuid column of `tables` that is neither
/// covered by a foreign key (a column referencing `units(id)` holds unit ids, one referencing
/// `auth.users(id)` is already known) nor the table's single-column primary key, with the share
/// of its values that are `auth.users` ids. One scan per table that has such columns, in the
/// caller's snapshot. Empty when the database has no `auth.users`.
pub async fn user_ids_by_value(
    client: &impl GenericClient,
    schema: &str,
    tables: &[&str],
) -> Result<Vec<UserIdsByValue>> {
    let present: bool = client
        .query_one("SELECT to_regclass('auth.users') IS NOT NULL", &[])
        .await
        .context("could not check for auth.users")?
        .get(0);
    if !present {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relkind IN ('r', 'p') \
               AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.atttypid = 'uuid'::regtype \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid \
                               AND k.contype = 'f' AND a.attnum = ANY (k.conkey)) \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid \
                               AND k.contype = 'p' AND k.conkey = ARRAY[a.attnum]) \
             ORDER BY c.relname, a.attnum",
            &[&schema, &tables],
        )
        .await
        .with_context(|| format!("could not list the uuid columns of schema {schema}"))?;
    let mut candidates: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        candidates.entry(row.get(0)).or_default().push(row.get(1));
    }
    let mut found = Vec::new();
    for (table, columns) in candidates {
        let name = QualifiedName::new(schema, table.as_str());
        let aggregates: Vec<String> = columns
            .iter()
            .map(|c| {
                let c = crate::ident::quote_ident(c);
                format!(
                    "count(t.{c}), count(*) FILTER (WHERE EXISTS \
                     (SELECT 1 FROM auth.users u WHERE u.id = t.{c}))"
                )
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} AS t",
            aggregates.join(", "),
            name.quoted()
        );
        let row = client.query_one(sql.as_str(), &[]).await.with_context(|| {
            format!("could not compare the uuid columns of {name} with auth.users")
        })?;
        for (i, column) in columns.into_iter().enumerate() {
            found.push(UserIdsByValue {
                table: table.clone(),
                column,
                non_null: row.get(2 * i),
                matching: row.get(2 * i + 1),
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(table: &str, references: &str) -> ForeignKey {
        ForeignKey {
            constraint: format!("{table}_{references}_fkey"),
            table: table.into(),
            columns: vec![format!("{references}_id")],
            references: references.into(),
            referenced_columns: vec!["id".into()],
        }
    }

    #[test]
    fn levels_follow_the_longest_reference_chain() {
        let fks = [fk("b", "a"), fk("c", "b"), fk("c", "a"), fk("d", "a")];
        let got = dependency_levels(["a", "b", "c", "d", "e"], &fks);
        let want: BTreeMap<String, usize> = [("a", 0), ("b", 1), ("c", 2), ("d", 1), ("e", 0)]
            .into_iter()
            .map(|(n, l)| (n.to_string(), l))
            .collect();
        assert_eq!(got.levels, want);
        assert!(got.cycles.is_empty());
        assert!(got.self_references.is_empty());
    }

    #[test]
    fn cycles_and_self_references_are_reported_not_looped_on() {
        let fks = [
            fk("b", "a"),
            fk("c", "b"),
            fk("b", "c"),
            fk("d", "c"),
            fk("a", "a"),
        ];
        let got = dependency_levels(["a", "b", "c", "d"], &fks);
        assert_eq!(got.cycles, vec![vec!["b".to_string(), "c".to_string()]]);
        assert_eq!(
            got.self_references,
            vec![("a".to_string(), "a_a_fkey".to_string())]
        );
        assert_eq!(got.levels["a"], 0);
        assert_eq!(got.levels["b"], 1);
        assert_eq!(got.levels["c"], 1);
        assert_eq!(got.levels["d"], 2);
    }

    #[test]
    fn references_outside_the_table_set_are_ignored() {
        let got = dependency_levels(["a"], &[fk("a", "elsewhere")]);
        assert_eq!(got.levels["a"], 0);
    }

    #[test]
    fn a_long_chain_does_not_overflow() {
        let names: Vec<String> = (0..20_000).map(|i| format!("t{i:05}")).collect();
        let fks: Vec<ForeignKey> = names.windows(2).map(|w| fk(&w[1], &w[0])).collect();
        let got = dependency_levels(names.iter().map(String::as_str), &fks);
        assert_eq!(got.levels["t19999"], 19_999);
    }
}
