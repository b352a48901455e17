-- walcache DDL capture: changes that alter rows without row events (DDL, TRUNCATE of a
-- partition) announced in the WAL, in commit order, as logical decoding messages with the
-- prefix 'walcache' (see docs/adr/0010-ddl-capture.md). Installed by
-- `walcached ddl-capture install` as a superuser; removed by `walcached ddl-capture uninstall`.
--
-- Every function here is SECURITY DEFINER with a fixed search_path, and never raises: an
-- error is a WARNING, so the application's DDL or TRUNCATE always goes through (the daemon's
-- periodic catalog check remains the safety net).

CREATE SCHEMA IF NOT EXISTS walcache;

-- The SECURITY DEFINER functions below run as the installing superuser, for every role's DDL
-- and TRUNCATE, and call one another by their names in this schema. Whoever owns the schema
-- may drop and replace any object in it: a schema created beforehand by an ordinary role (a
-- database owner may create schemas) would hand that role superuser. Refuse such a schema,
-- and objects in it that an ordinary role owns.
DO $guard$
DECLARE
    owner text;
BEGIN
    SELECT r.rolname INTO owner
    FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
    WHERE n.nspname = 'walcache' AND NOT r.rolsuper;
    IF owner IS NULL THEN
        SELECT r.rolname INTO owner FROM (
            SELECT c.relowner AS o FROM pg_catalog.pg_class c
            WHERE c.relnamespace = 'walcache'::pg_catalog.regnamespace
            UNION ALL
            SELECT p.proowner FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'walcache'::pg_catalog.regnamespace
            UNION ALL
            SELECT t.typowner FROM pg_catalog.pg_type t
            WHERE t.typnamespace = 'walcache'::pg_catalog.regnamespace
        ) x JOIN pg_catalog.pg_roles r ON r.oid = x.o
        WHERE NOT r.rolsuper
        LIMIT 1;
    END IF;
    IF owner IS NOT NULL THEN
        RAISE EXCEPTION 'the schema walcache, or an object in it, is owned by role %, which is '
            'not a superuser: installing superuser-owned SECURITY DEFINER functions there would '
            'let that role run code as superuser', owner
            USING HINT = 'inspect the schema, then DROP SCHEMA walcache CASCADE (or make a '
                'superuser own it and everything in it) and install again';
    END IF;
END
$guard$;

REVOKE ALL ON SCHEMA walcache FROM PUBLIC;

-- The tables of the daemon's rules (written by install): their partitions get a TRUNCATE
-- trigger, now and whenever a partition is created or attached.
CREATE TABLE IF NOT EXISTS walcache.capture_tables (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    PRIMARY KEY (schema_name, table_name)
);

-- A random token, readable only by superusers (the schema is closed to PUBLIC): while
-- cover_partitions runs its own DDL it sets walcache.internal to it, so the event trigger
-- skips that DDL. A fixed value would let any session switch the announcements off.
CREATE TABLE IF NOT EXISTS walcache.secret (token text NOT NULL);
DELETE FROM walcache.secret;
INSERT INTO walcache.secret VALUES (gen_random_uuid()::text);

-- Whether the event trigger fires for cover_partitions' own DDL.
CREATE OR REPLACE FUNCTION walcache.internal() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(current_setting('walcache.internal', true) = (SELECT token FROM walcache.secret),
                    false)
$$;

-- One relation as the messages describe it: oid, schema, name and the root of its partition
-- tree (itself when it is not a partition).
CREATE OR REPLACE FUNCTION walcache.relation(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'type', 'table', 'oid', c.oid::int8, 'schema', n.nspname, 'name', c.relname,
        'root', r.oid::int8, 'root_schema', rn.nspname, 'root_name', r.relname)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_class r ON r.oid = pg_partition_root(c.oid)
    LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
    WHERE c.oid = rel
$$;

-- The relation, and every rule's table (capture_tables) in its partition tree above it (other
-- than the root, which `relation` names already) or below it. A rule's table may be a
-- partition itself, whose partitions name the tree's root, not the rule's table; and DDL on a
-- table recurses to its partitions (`ALTER COLUMN … TYPE … USING` rewrites them all) while the
-- event trigger sees only the table named.
CREATE OR REPLACE FUNCTION walcache.related(rel oid) RETURNS SETOF jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT walcache.relation(rel)
    UNION ALL
    SELECT walcache.relation(c.oid)
    FROM walcache.capture_tables ct
    CROSS JOIN LATERAL (SELECT to_regclass(quote_ident(ct.schema_name) || '.'
                                           || quote_ident(ct.table_name))::oid AS oid) c
    WHERE c.oid IS NOT NULL AND c.oid <> rel
      AND c.oid IS DISTINCT FROM pg_partition_root(rel)::oid
      AND (c.oid IN (SELECT a.relid::oid FROM pg_partition_ancestors(rel) a)
           OR rel IN (SELECT a.relid::oid FROM pg_partition_ancestors(c.oid) a))
$$;

-- Write one message into the WAL, transactional: it is decoded at its transaction's commit,
-- in commit order with the row changes.
CREATE OR REPLACE FUNCTION walcache.emit(content jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_logical_emit_message(true, 'walcache', content::text);
END
$$;

-- Give every partition (at any depth) of every capture table its TRUNCATE trigger, enabled
-- ALWAYS (so it fires under session_replication_role = replica too). pgoutput sends no
-- TRUNCATE of a partition when the publication publishes via the partition root.
CREATE OR REPLACE FUNCTION walcache.cover_partitions() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part regclass;
BEGIN
    PERFORM set_config('walcache.internal', (SELECT token FROM walcache.secret), true);
    -- DISTINCT: rules on nested tables of one tree (a parent and one of its partitions)
    -- list the same partitions twice, and a second CREATE TRIGGER would fail the whole loop.
    FOR part IN
        SELECT DISTINCT t.relid
        FROM walcache.capture_tables ct
        CROSS JOIN LATERAL pg_partition_tree(
            to_regclass(quote_ident(ct.schema_name) || '.' || quote_ident(ct.table_name))) t
        WHERE t.level > 0
          AND NOT EXISTS (SELECT 1 FROM pg_trigger g
                          WHERE g.tgrelid = t.relid AND g.tgname = 'walcache_truncate')
    LOOP
        EXECUTE format('CREATE TRIGGER walcache_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION walcache.on_truncate()', part);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER walcache_truncate', part);
    END LOOP;
    PERFORM set_config('walcache.internal', '', true);
END
$$;

CREATE OR REPLACE FUNCTION walcache.on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    BEGIN
        PERFORM walcache.emit(jsonb_build_object(
            'v', 1, 'event', 'truncate', 'tag', 'TRUNCATE',
            'objects', (SELECT jsonb_agg(r) FROM walcache.related(TG_RELID) r)));
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'walcache: the TRUNCATE of % was not announced to walcached (%): its '
            'namespace is flushed by the next catalog check', TG_RELID::regclass, SQLERRM;
    END;
    RETURN NULL;
END
$$;

-- ddl_command_end: every table and publication a command created or altered.
CREATE OR REPLACE FUNCTION walcache.on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    objects jsonb;
BEGIN
    IF walcache.internal() THEN
        RETURN;
    END IF;
    BEGIN
        SELECT jsonb_agg(DISTINCT o) INTO objects FROM (
            SELECT r AS o
            FROM pg_event_trigger_ddl_commands() d
            CROSS JOIN LATERAL walcache.related(d.objid) r
            WHERE d.classid = 'pg_class'::regclass AND d.object_type = 'table'
            UNION ALL
            -- Every partition of the tree of a table named, when the tree holds a rule's
            -- table: the daemon learns the oids of partitions attached or created, so a later
            -- DROP of one (whose announcement can no longer name its tree) is still the rule's.
            SELECT walcache.relation(t.relid)
            FROM pg_event_trigger_ddl_commands() d
            CROSS JOIN LATERAL pg_partition_tree(pg_partition_root(d.objid)) t
            WHERE d.classid = 'pg_class'::regclass AND d.object_type = 'table' AND t.level > 0
              AND EXISTS (
                  SELECT 1 FROM walcache.capture_tables ct
                  JOIN pg_partition_tree(pg_partition_root(d.objid)) m
                    ON m.relid = to_regclass(quote_ident(ct.schema_name) || '.'
                                             || quote_ident(ct.table_name)))
            UNION ALL
            -- A type altered (an enum value renamed changes the text of every row holding
            -- it): every table with a column of it, of an array of it or of a domain over it.
            SELECT r
            FROM pg_event_trigger_ddl_commands() d
            JOIN pg_type t ON t.oid = d.objid OR t.typelem = d.objid OR t.typbasetype = d.objid
            JOIN pg_attribute a ON a.atttypid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
            JOIN pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p')
            CROSS JOIN LATERAL walcache.related(c.oid) r
            WHERE d.classid = 'pg_type'::regclass
            UNION ALL
            SELECT jsonb_build_object('type', 'publication', 'name', d.object_identity)
            FROM pg_event_trigger_ddl_commands() d
            WHERE d.object_type LIKE 'publication%'
        ) s WHERE o IS NOT NULL;
        IF objects IS NOT NULL THEN
            PERFORM walcache.emit(jsonb_build_object(
                'v', 1, 'event', 'ddl', 'tag', tg_tag, 'objects', objects));
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'walcache: % was not announced to walcached (%): its namespaces are '
            'flushed by the next catalog check', tg_tag, SQLERRM;
    END;
    -- Apart, so that a failure here does not take the announcement back.
    IF objects IS NOT NULL THEN
        BEGIN
            PERFORM walcache.cover_partitions();
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'walcache: a new partition did not get its TRUNCATE trigger (%): '
                'run `walcached ddl-capture install` again', SQLERRM;
        END;
    END IF;
END
$$;

-- sql_drop: every table and publication dropped (a dropped partition's root is no longer
-- known here; the daemon knows the partitions' oids).
CREATE OR REPLACE FUNCTION walcache.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    objects jsonb;
BEGIN
    IF walcache.internal() THEN
        RETURN;
    END IF;
    BEGIN
        SELECT jsonb_agg(o) INTO objects FROM (
            SELECT jsonb_build_object('type', 'table', 'oid', d.objid::int8,
                                      'schema', d.schema_name, 'name', d.object_name) AS o
            FROM pg_event_trigger_dropped_objects() d
            WHERE d.object_type = 'table'
            UNION ALL
            SELECT jsonb_build_object('type', 'publication', 'name', d.object_identity)
            FROM pg_event_trigger_dropped_objects() d
            WHERE d.object_type LIKE 'publication%'
        ) s;
        IF objects IS NOT NULL THEN
            PERFORM walcache.emit(jsonb_build_object(
                'v', 1, 'event', 'drop', 'tag', tg_tag, 'objects', objects));
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'walcache: % was not announced to walcached (%): its namespaces are '
            'flushed by the next catalog check', tg_tag, SQLERRM;
    END;
END
$$;

DROP EVENT TRIGGER IF EXISTS walcache_ddl_command_end;
CREATE EVENT TRIGGER walcache_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION walcache.on_ddl_command_end();
ALTER EVENT TRIGGER walcache_ddl_command_end ENABLE ALWAYS;

DROP EVENT TRIGGER IF EXISTS walcache_sql_drop;
CREATE EVENT TRIGGER walcache_sql_drop ON sql_drop EXECUTE FUNCTION walcache.on_sql_drop();
ALTER EVENT TRIGGER walcache_sql_drop ENABLE ALWAYS;
