//! Row → cache keys: rules checked against the database's catalog at start-up, then applied to
//! each decoded change.
//!
//! Keys come from the shared key builder (`walcache_protocol`), parsing PostgreSQL's text
//! output under the session formats the replication connection pins, so they equal the keys
//! the library builds from the same values. Whenever a key cannot be computed (a value that does
//! not parse, a template column missing from a changed relation, an unchanged TOASTed key
//! column), the change becomes a namespace flush: nothing committed goes without its
//! invalidation.

use std::collections::{HashMap, HashSet};

use walcache_cdc::pgoutput::{Column, ColumnValue, OldTuple, Relation, ReplicaIdentity, TupleData};
use walcache_protocol::{ColumnType, KeyPart, KeyTemplate, TagRef};

use crate::config::{ConfigError, Rule};

/// What the catalog says about a table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// The table's oid.
    pub oid: u32,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// Columns in order, with their (domain-resolved) type oid and type name.
    pub columns: Vec<ColumnInfo>,
    /// The columns an UPDATE's or DELETE's old tuple carries.
    pub identity_columns: Vec<String>,
    /// For a partitioned table, each leaf partition (`"schema"."name"`, quoted) and the
    /// columns its old tuples carry: a leaf's own replica identity decides them, whatever the
    /// root's (`ALTER TABLE … REPLICA IDENTITY` does not recurse).
    pub partitions: Vec<(String, Vec<String>)>,
}

/// One column of a [`TableInfo`].
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// The type's oid, domains resolved to their base type.
    pub base_type_oid: u32,
    /// The declared type, for messages.
    pub type_name: String,
    /// `pg_attribute.attgenerated`: empty for an ordinary column, `s` for a stored generated
    /// column, `v` for a virtual one (PostgreSQL 18; never published).
    pub generated: String,
}

impl TableInfo {
    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Read a table's description from the catalog; `None` if it does not exist.
    ///
    /// One statement, so one catalog snapshot: read in several, a table dropped and re-created
    /// (or altered) between them would show the old table's oid with the new one's columns,
    /// or none, and a table that fits its rule would seem not to.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub async fn load(
        client: &tokio_postgres::Client,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableInfo>, tokio_postgres::Error> {
        // One row per relation: the table first, then each leaf partition of its tree. The
        // identity columns are the primary key's (`d`) or the replica identity index's (`i`);
        // `f` and `n` are resolved below from the table's columns.
        let rows = client
            .query(
                "WITH root AS ( \
                   SELECT c.oid, c.relreplident FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')), \
                 rels AS ( \
                   SELECT root.oid AS relid, root.relreplident AS kind, 0 AS leaf FROM root \
                   UNION ALL \
                   SELECT t.relid, c.relreplident, 1 FROM root \
                   CROSS JOIN LATERAL pg_partition_tree(root.oid) t \
                   JOIN pg_class c ON c.oid = t.relid \
                   WHERE t.isleaf AND t.relid <> root.oid) \
                 SELECT r.relid::int8, r.kind::text, r.leaf, \
                   format('%I.%I', n.nspname, c.relname), \
                   ARRAY(SELECT a.attname::text FROM pg_index i \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid \
                                            AND a.attnum = ANY(i.indkey) \
                         WHERE i.indrelid = r.relid \
                           AND CASE WHEN r.kind = 'i' THEN i.indisreplident \
                                    ELSE i.indisprimary END), \
                   ARRAY(SELECT a.attname::text FROM pg_attribute a \
                         WHERE a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped \
                         ORDER BY a.attnum), \
                   ARRAY(SELECT (CASE WHEN t.typtype = 'd' THEN t.typbasetype \
                                      ELSE t.oid END)::int8 \
                         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                         WHERE a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped \
                         ORDER BY a.attnum), \
                   ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                         WHERE a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped \
                         ORDER BY a.attnum), \
                   ARRAY(SELECT a.attgenerated::text FROM pg_attribute a \
                         WHERE a.attrelid = r.relid AND a.attnum > 0 AND NOT a.attisdropped \
                         ORDER BY a.attnum) \
                 FROM rels r JOIN pg_class c ON c.oid = r.relid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 ORDER BY r.leaf, 4",
                &[&schema, &table],
            )
            .await?;
        let Some(root) = rows.first() else {
            return Ok(None);
        };
        let oid = u32::try_from(root.get::<_, i64>(0)).unwrap_or_default();
        let kind_of =
            |row: &tokio_postgres::Row| row.get::<_, String>(1).chars().next().unwrap_or('d');
        let names: Vec<String> = root.get(5);
        let base_types: Vec<i64> = root.get(6);
        let type_names: Vec<String> = root.get(7);
        let generated: Vec<String> = root.get(8);
        let columns = names
            .iter()
            .zip(base_types)
            .zip(type_names)
            .zip(generated)
            .map(|(((name, base), type_name), generated)| ColumnInfo {
                name: name.clone(),
                base_type_oid: u32::try_from(base).unwrap_or_default(),
                type_name,
                generated,
            })
            .collect();
        // What the old tuples of a relation carry: every column under FULL (its columns are
        // the table's: a partition has the same), none under NOTHING, else its index's.
        let identity = |row: &tokio_postgres::Row| -> Vec<String> {
            match kind_of(row) {
                'f' => names.clone(),
                'n' => Vec::new(),
                _ => row.get(4),
            }
        };
        Ok(Some(TableInfo {
            schema: schema.to_owned(),
            name: table.to_owned(),
            oid,
            replica_identity: kind_of(root),
            columns,
            identity_columns: identity(root),
            partitions: rows[1..]
                .iter()
                .map(|leaf| (leaf.get(3), identity(leaf)))
                .collect(),
        }))
    }
}

/// Quote an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A rule checked against its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// `(schema, table)`.
    pub table: (String, String),
    /// The table's oid when the rule was compiled: the stream names relations by oid, and a
    /// rename keeps it.
    pub oid: u32,
    /// The namespace.
    pub namespace: String,
    /// Key templates.
    pub templates: Vec<KeyTemplate>,
    /// The tags every change of the table bumps: each of the rule's tags in its own namespace
    /// and in each of its `tag_namespaces` ([`rule_tags`]).
    pub tags: Vec<TagRef>,
    /// The canonical-key type of every column a template uses.
    pub column_types: HashMap<String, ColumnType>,
}

impl CompiledRule {
    /// A stand-in for `rule` while its table does not fit it (gone, or its replica identity too
    /// narrow: [`compile`] says why): it knows the table by name only (oid 0) and no column, so
    /// it renders no key. The mapper keeps it broken — every change of the table flushes the
    /// namespace — until a catalog check compiles the rule ([`Mapper::replace_rule`]).
    ///
    /// # Panics
    ///
    /// Never for a rule of a parsed [`Config`](crate::config::Config), whose templates were
    /// checked when it was read.
    pub fn uncompiled(rule: &Rule) -> CompiledRule {
        CompiledRule {
            table: rule.qualified_table(),
            oid: 0,
            namespace: rule.namespace.clone(),
            templates: rule
                .keys
                .iter()
                .map(|k| KeyTemplate::parse(k).expect("templates are checked by Config::parse"))
                .collect(),
            tags: rule_tags(rule),
            column_types: HashMap::new(),
        }
    }

    /// Every namespace a change of the table writes to: its own, then those it bumps tags in,
    /// each once.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut out = vec![self.namespace.as_str()];
        for t in &self.tags {
            if let Some(ns) = t.namespace.as_deref() {
                if !out.contains(&ns) {
                    out.push(ns);
                }
            }
        }
        out
    }

    /// Everything a change of the table could have touched, when its rows cannot be named:
    /// the namespace flushed, and the rule's tags bumped in the other namespaces it tags (in
    /// its own, the flush already drops every value, tagged or not).
    pub fn invalidate_all(&self) -> impl Iterator<Item = Invalidation> + '_ {
        std::iter::once(Invalidation::Flush(self.namespace.clone())).chain(
            self.tags
                .iter()
                .filter(|t| t.namespace.as_deref() != Some(self.namespace.as_str()))
                .cloned()
                .map(Invalidation::Tag),
        )
    }
}

/// The tags a change of `rule`'s table bumps: each tag in the rule's namespace, then in each
/// of its `tag_namespaces` (a namespace listed twice, or the rule's own, counts once).
pub fn rule_tags(rule: &Rule) -> Vec<TagRef> {
    let mut namespaces: Vec<&str> = vec![rule.namespace.as_str()];
    for ns in &rule.tag_namespaces {
        if !namespaces.contains(&ns.as_str()) {
            namespaces.push(ns);
        }
    }
    namespaces
        .into_iter()
        .flat_map(|ns| rule.tags.iter().map(move |t| TagRef::new(ns, t.as_str())))
        .collect()
}

/// Check `rule` (the `index`-th) against the table it names.
///
/// # Errors
///
/// A [`ConfigError`] naming the rule's field, e.g. a template column that does not exist, has
/// no canonical key form, or lies outside the replica identity (with the `ALTER TABLE` that
/// fixes it).
pub fn compile(rule: &Rule, index: usize, info: &TableInfo) -> Result<CompiledRule, ConfigError> {
    let table = info.quoted();
    let usable_identity = !info.identity_columns.is_empty();
    if !usable_identity {
        return Err(ConfigError::new(
            format!("rules[{index}].table"),
            format!(
                "{table} has no usable replica identity (no primary key, or REPLICA IDENTITY \
                 NOTHING), so its UPDATEs and DELETEs cannot be published; add a primary key or \
                 run: ALTER TABLE {table} REPLICA IDENTITY FULL;"
            ),
        ));
    }
    let mut templates = Vec::new();
    let mut column_types = HashMap::new();
    for (j, source) in rule.keys.iter().enumerate() {
        let field = format!("rules[{index}].keys[{j}]");
        let template = KeyTemplate::parse(source)
            .map_err(|e| ConfigError::new(&field, format!("{source:?}: {e}")))?;
        for col in template.columns() {
            let Some(info_col) = info.columns.iter().find(|c| c.name == col) else {
                let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
                return Err(ConfigError::new(
                    &field,
                    format!(
                        "column {col:?} does not exist in {table}; its columns are: {}",
                        names.join(", ")
                    ),
                ));
            };
            if info_col.generated == "v" {
                return Err(ConfigError::new(
                    &field,
                    format!(
                        "column {col:?} of {table} is a virtual generated column, which logical \
                         replication never publishes, so walcached never sees its value; key on \
                         the columns it is computed from, or drop it and add it back as \
                         GENERATED ALWAYS AS (...) STORED"
                    ),
                ));
            }
            let ty = ColumnType::from_oid(info_col.base_type_oid).ok_or_else(|| {
                ConfigError::new(
                    &field,
                    format!(
                        "column {col:?} has type {}, which has no canonical key form; key \
                         columns must be integers, text, uuid, bool, bytea, date, timestamps \
                         or numeric",
                        info_col.type_name
                    ),
                )
            })?;
            if !info.identity_columns.iter().any(|c| c == col) {
                return Err(ConfigError::new(
                    &field,
                    format!(
                        "column {col:?} is not part of {table}'s replica identity ({}), so an \
                         UPDATE or DELETE does not carry its old value; run: ALTER TABLE {table} \
                         REPLICA IDENTITY FULL;",
                        info.identity_columns.join(", ")
                    ),
                ));
            }
            for (leaf, identity) in &info.partitions {
                if !identity.iter().any(|c| c == col) {
                    return Err(ConfigError::new(
                        &field,
                        format!(
                            "column {col:?} is not part of the replica identity of {leaf} ({}), \
                             a partition of {table}: its UPDATEs and DELETEs do not carry the \
                             old value (ALTER TABLE … REPLICA IDENTITY on the parent does not \
                             recurse); run: ALTER TABLE {leaf} REPLICA IDENTITY FULL;",
                            if identity.is_empty() {
                                "none".to_owned()
                            } else {
                                identity.join(", ")
                            }
                        ),
                    ));
                }
            }
            column_types.insert(col.to_owned(), ty);
        }
        templates.push(template);
    }
    Ok(CompiledRule {
        table: (info.schema.clone(), info.name.clone()),
        oid: info.oid,
        namespace: rule.namespace.clone(),
        templates,
        tags: rule_tags(rule),
        column_types,
    })
}

/// One invalidation produced by a change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Invalidation {
    /// Drop one key.
    Key {
        /// Namespace.
        namespace: String,
        /// Canonical key.
        key: String,
    },
    /// Drop every entry carrying this tag in the tag's namespace (its version moves).
    Tag(TagRef),
    /// Drop the whole namespace.
    Flush(String),
}

/// A relation as the stream described it, bound to its rule.
#[derive(Debug, Clone)]
struct Bound {
    rule: usize,
    /// Position of each template column in the relation's tuples.
    positions: HashMap<String, usize>,
    /// The template columns the Relation message flags as part of the replica identity key.
    key_columns: HashSet<String>,
    /// The Relation message says `REPLICA IDENTITY FULL`.
    full_identity: bool,
    /// The relation no longer matches its rule: every change flushes the namespace.
    broken: bool,
    /// The stream's latest description of the relation, to bind it again to a recompiled
    /// rule ([`Mapper::replace_rule`]): the positions of later changes are those it gives.
    described: Relation,
}

/// The mapping for the whole stream: rules by table, relations by oid.
#[derive(Debug)]
pub struct Mapper {
    rules: Vec<CompiledRule>,
    by_table: HashMap<(String, String), usize>,
    by_oid: HashMap<u32, usize>,
    relations: HashMap<u32, Bound>,
    /// Rules the catalog no longer fits (found outside the stream): every change flushes.
    broken_rules: HashSet<usize>,
}

/// The old row of a change, as pgoutput sent it.
#[derive(Debug, Clone, Copy)]
pub enum OldRow<'a> {
    /// An INSERT: there is none.
    None,
    /// An UPDATE that sent no old row: its replica identity key did not change.
    Unchanged,
    /// `K`: only the replica identity key columns; the others are null.
    Key(&'a TupleData),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(&'a TupleData),
}

impl<'a> OldRow<'a> {
    /// The old row of an UPDATE (`None` when it sent none) or a DELETE.
    pub fn of(old: Option<&'a OldTuple>) -> Self {
        match old {
            None => OldRow::Unchanged,
            Some(OldTuple::Key(t)) => OldRow::Key(t),
            Some(OldTuple::Full(t)) => OldRow::Full(t),
        }
    }
}

/// What binding a Relation message found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationCheck {
    /// No rule for this table (not ours; its changes are ignored).
    Unmapped,
    /// Matches its rule.
    Ok,
    /// The table changed under its rule (ALTER TABLE): its namespace is flushed on every change
    /// until the daemon is restarted with a fixed rule.
    Mismatch {
        /// The namespace now flushed.
        namespace: String,
        /// What is wrong.
        reason: String,
    },
}

impl Mapper {
    /// Rules compiled at start-up.
    pub fn new(rules: Vec<CompiledRule>) -> Self {
        let by_table = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.table.clone(), i))
            .collect();
        let by_oid = rules.iter().enumerate().map(|(i, r)| (r.oid, i)).collect();
        Mapper {
            rules,
            by_table,
            by_oid,
            relations: HashMap::new(),
            broken_rules: HashSet::new(),
        }
    }

    /// The catalog no longer fits rule `index` in a way the stream does not show (a
    /// partition's replica identity narrowed, the table gone): from now on every change of its
    /// table flushes its namespace, until [`replace_rule`](Self::replace_rule) gives it a rule
    /// compiled against a catalog that fits.
    pub fn break_rule(&mut self, index: usize) {
        self.broken_rules.insert(index);
        for bound in self.relations.values_mut() {
            if bound.rule == index {
                bound.broken = true;
            }
        }
    }

    /// Whether rule `index` is broken ([`break_rule`](Self::break_rule)).
    pub fn is_broken(&self, index: usize) -> bool {
        self.broken_rules.contains(&index)
    }

    /// The broken rules ([`break_rule`](Self::break_rule)), by index.
    pub fn broken_rules(&self) -> Vec<usize> {
        let mut broken: Vec<usize> = self.broken_rules.iter().copied().collect();
        broken.sort_unstable();
        broken
    }

    /// Rule `index` compiled again against today's catalog (its table re-created, its identity
    /// widened): no longer broken, and every relation bound to it bound again from the
    /// stream's latest description of it. Returns what binding again found (a description
    /// older than the catalog may not fit yet: its changes flush until the stream describes
    /// the relation again).
    pub fn replace_rule(&mut self, index: usize, rule: CompiledRule) -> Vec<RelationCheck> {
        if rule.oid != 0 {
            self.by_oid.insert(rule.oid, index);
        }
        self.rules[index] = rule;
        self.broken_rules.remove(&index);
        let described: Vec<Relation> = self
            .relations
            .values()
            .filter(|b| b.rule == index)
            .map(|b| b.described.clone())
            .collect();
        described.iter().map(|rel| self.relation(rel)).collect()
    }

    /// The rules, in configuration order.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// The namespaces served: every namespace a rule writes to (its own, and those it bumps
    /// tags in), each once, in configuration order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.rules
            .iter()
            .flat_map(CompiledRule::namespaces)
            .filter(|ns| seen.insert(*ns))
            .map(str::to_owned)
            .collect()
    }

    /// Bind (or re-bind) a relation described by the stream, re-validating its templates.
    pub fn relation(&mut self, rel: &Relation) -> RelationCheck {
        let schema = if rel.namespace.is_empty() {
            "pg_catalog".to_owned()
        } else {
            rel.namespace.clone()
        };
        // By oid first: a table renamed (or moved to another schema) under its rule is still
        // in the publication and its changes still come; dropping them as "not ours" would
        // leave its keys stale. By name otherwise (a table recreated under the same name).
        let name = (schema, rel.name.clone());
        let by_name = self.by_table.get(&name);
        let Some(&rule_index) = self.by_oid.get(&rel.id).or(by_name) else {
            self.relations.remove(&rel.id);
            return RelationCheck::Unmapped;
        };
        let rule = &self.rules[rule_index];
        let mut positions = HashMap::new();
        let mut problem = (rule.table != name).then(|| {
            format!(
                "table {}.{} was renamed to {}.{}",
                rule.table.0, rule.table.1, name.0, name.1
            )
        });
        for (col, ty) in &rule.column_types {
            match rel.columns.iter().position(|c| &c.name == col) {
                Some(p) => {
                    let oid_ok =
                        ColumnType::from_oid(rel.columns[p].type_oid).is_none_or(|t| t == *ty);
                    if !oid_ok {
                        problem = Some(format!("column {col:?} changed type"));
                    }
                    positions.insert(col.clone(), p);
                }
                None => problem = Some(format!("column {col:?} is gone")),
            }
        }
        let broken = problem.is_some() || self.broken_rules.contains(&rule_index);
        let key_columns = rule
            .column_types
            .keys()
            .filter(|col| {
                rel.columns
                    .iter()
                    .any(|c| &c.name == *col && c.flags & Column::FLAG_KEY != 0)
            })
            .cloned()
            .collect();
        self.relations.insert(
            rel.id,
            Bound {
                rule: rule_index,
                positions,
                key_columns,
                full_identity: rel.replica_identity == ReplicaIdentity::Full,
                broken,
                described: rel.clone(),
            },
        );
        match problem {
            None => RelationCheck::Ok,
            Some(reason) => RelationCheck::Mismatch {
                namespace: rule.namespace.clone(),
                reason,
            },
        }
    }

    /// The namespace of a relation, if it is mapped.
    pub fn namespace_of(&self, relation_id: u32) -> Option<&str> {
        self.relations
            .get(&relation_id)
            .map(|b| self.rules[b.rule].namespace.as_str())
    }

    /// The rule a relation's changes are mapped by, if any (the relation's latest Relation
    /// message bound it).
    pub fn rule_of(&self, relation_id: u32) -> Option<usize> {
        self.relations.get(&relation_id).map(|b| b.rule)
    }

    /// The invalidations for a row change: keys from `new` (absent for a DELETE) and from
    /// `old`, and the rule's tags. Unknown relations give nothing.
    ///
    /// Each change is judged by the replica identity of its own time — what its old tuple
    /// carries and what the relation's latest Relation message says — never by today's
    /// catalog: a template that needs a column the old row does not carry cannot name the old
    /// key, so the namespace is flushed instead (a table whose identity was narrowed while the
    /// daemon runs, a partition whose identity differs from its root's).
    pub fn change(
        &self,
        relation_id: u32,
        new: Option<&TupleData>,
        old: OldRow<'_>,
        out: &mut Vec<Invalidation>,
    ) {
        let Some(bound) = self.relations.get(&relation_id) else {
            return;
        };
        let rule = &self.rules[bound.rule];
        for tag in &rule.tags {
            out.push(Invalidation::Tag(tag.clone()));
        }
        let flush = |out: &mut Vec<Invalidation>| {
            metrics::counter!(crate::metrics::NAMESPACE_FLUSHES_TOTAL, "reason" => "unrenderable")
                .increment(1);
            out.push(Invalidation::Flush(rule.namespace.clone()));
        };
        if bound.broken {
            out.push(Invalidation::Flush(rule.namespace.clone()));
            return;
        }
        let (old_tuple, key_only) = match old {
            OldRow::None => (None, false),
            OldRow::Full(t) => (Some(t), false),
            OldRow::Key(t) => (Some(t), true),
            OldRow::Unchanged => {
                // An UPDATE that did not change the replica identity key sends no old row: the
                // old keys equal the new ones only for templates over key columns alone, and
                // only if the identity is not FULL (which always sends the old row: its absence
                // means the row's own identity, a partition's, is narrower than the Relation's).
                let all_key = rule
                    .templates
                    .iter()
                    .all(|t| t.columns().all(|c| bound.key_columns.contains(c)));
                if bound.full_identity || !all_key {
                    flush(out);
                    return;
                }
                (None, false)
            }
        };
        // Old tuple first; for the new tuple an unchanged TOASTed key column means "same as
        // the old one", which the old tuple (if any) already covered.
        for (tuple, is_new) in [(old_tuple, false), (new, true)] {
            let Some(tuple) = tuple else { continue };
            for template in &rule.templates {
                // In a key-only old row every column outside the identity key is null: a null
                // there is "not carried", not a value.
                let carried = !key_only
                    || template.columns().all(|c| {
                        bound
                            .positions
                            .get(c)
                            .and_then(|&p| tuple.0.get(p))
                            .is_some_and(|v| !matches!(v, ColumnValue::Null))
                    });
                if !carried {
                    flush(out);
                    return;
                }
                match render(template, rule, bound, tuple) {
                    Ok(key) => out.push(Invalidation::Key {
                        namespace: rule.namespace.clone(),
                        key,
                    }),
                    Err(Unrenderable::UnchangedToast) if is_new && old_tuple.is_some() => {}
                    Err(_) => {
                        flush(out);
                        return;
                    }
                }
            }
        }
    }

    /// The namespaces a TRUNCATE of these relations flushes.
    pub fn truncate(&self, relation_ids: &[u32], out: &mut Vec<Invalidation>) {
        for id in relation_ids {
            if let Some(bound) = self.relations.get(id) {
                out.extend(self.rules[bound.rule].invalidate_all());
            }
        }
    }
}

#[derive(Debug)]
enum Unrenderable {
    UnchangedToast,
    Other,
}

fn render(
    template: &KeyTemplate,
    rule: &CompiledRule,
    bound: &Bound,
    tuple: &TupleData,
) -> Result<String, Unrenderable> {
    template.render(|col| {
        let pos = *bound.positions.get(col).ok_or(Unrenderable::Other)?;
        let ty = *rule.column_types.get(col).ok_or(Unrenderable::Other)?;
        match tuple.0.get(pos).ok_or(Unrenderable::Other)? {
            ColumnValue::Null => Ok(KeyPart::Null),
            ColumnValue::UnchangedToast => Err(Unrenderable::UnchangedToast),
            ColumnValue::Text(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| Unrenderable::Other)?;
                ty.parse_pg_text(text)
                    .map(KeyPart::into_owned)
                    .map_err(|_| Unrenderable::Other)
            }
            ColumnValue::Binary(_) => Err(Unrenderable::Other),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(tags: &[&str], tag_namespaces: &[&str]) -> Rule {
        Rule {
            table: "public.users".into(),
            namespace: "users".into(),
            keys: vec!["{id}".into()],
            tags: tags.iter().map(|s| (*s).to_owned()).collect(),
            tag_namespaces: tag_namespaces.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn tags_are_bumped_in_the_rules_namespace_and_each_tag_namespace_once() {
        let r = rule(&["users", "people"], &["orders", "users", "orders"]);
        assert_eq!(
            rule_tags(&r),
            vec![
                TagRef::new("users", "users"),
                TagRef::new("users", "people"),
                TagRef::new("orders", "users"),
                TagRef::new("orders", "people"),
            ]
        );
        assert!(rule_tags(&rule(&[], &[])).is_empty());
    }

    #[test]
    fn invalidating_all_flushes_the_namespace_and_bumps_the_tags_elsewhere() {
        let compiled = CompiledRule::uncompiled(&rule(&["users"], &["orders"]));
        assert_eq!(
            compiled.tags,
            vec![
                TagRef::new("users", "users"),
                TagRef::new("orders", "users")
            ]
        );
        assert_eq!(
            compiled.invalidate_all().collect::<Vec<_>>(),
            vec![
                Invalidation::Flush("users".into()),
                Invalidation::Tag(TagRef::new("orders", "users")),
            ]
        );
    }
}
