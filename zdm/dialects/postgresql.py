"""PostgreSQL: BEFORE ROW triggers, lock budgets, constraints added NOT VALID then validated."""

from __future__ import annotations

import sqlalchemy as sa

from zdm.dialects import ColumnFacts, Dialect, Sync, UserTrigger, mentions, object_name


class PostgresDialect(Dialect):
    name = "postgresql"

    def begin(self, lock_timeout_ms: int) -> list[str]:
        # SET LOCAL: the budget ends with the transaction, the app's sessions never see it.
        return [f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"]

    concurrent_indexes = True

    def index_definitions(self, connection: sa.Connection, table: str) -> dict[str, str]:
        rows = connection.execute(sa.text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(:t)"), {"t": self.quote(table)})
        return {name: sql for name, sql in rows}

    def column_facts(self, connection: sa.Connection, table: str, column: str) -> ColumnFacts:
        """Read from pg_attribute, pg_constraint, pg_depend and pg_trigger (PostgreSQL's own record
        of what depends on the column, so nothing is guessed from names)."""
        relation = self.quote(table)
        row = connection.execute(sa.text(
            "SELECT a.attnum, a.attnotnull, a.attidentity, NULLIF(a.attstattarget, -1) AS statistics, "
            "CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage END AS storage, "
            "col_description(a.attrelid, a.attnum) AS comment, pg_get_expr(d.adbin, d.adrelid) AS default, "
            "pg_get_serial_sequence(:t, a.attname) AS sequence "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = to_regclass(:t) AND a.attname = :c AND NOT a.attisdropped"),
            {"t": relation, "c": column}).one()
        facts = ColumnFacts(default=row.default, comment=row.comment, not_null=row.attnotnull,
                            statistics=row.statistics, sequence=row.sequence,
                            identity={"a": "ALWAYS", "d": "BY DEFAULT"}.get(row.attidentity),
                            storage={"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}.get(row.storage))
        key = {"t": relation, "n": row.attnum}
        facts.grants = [(grantee, privilege, grantable) for grantee, privilege, grantable in connection.execute(sa.text(
            "SELECT CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, acl.privilege_type, "
            "acl.is_grantable FROM pg_attribute a, aclexplode(a.attacl) acl "
            "LEFT JOIN pg_roles r ON r.oid = acl.grantee "
            "WHERE a.attrelid = to_regclass(:t) AND a.attnum = :n ORDER BY 1, 2"), key)]
        for name, kind, relid, definition in connection.execute(sa.text(
                "SELECT conname, contype, conrelid, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE (conrelid = to_regclass(:t) AND :n = ANY(conkey)) "
                "OR (confrelid = to_regclass(:t) AND :n = ANY(confkey) AND conrelid <> to_regclass(:t))"), key):
            if relid == connection.scalar(sa.text("SELECT to_regclass(:t)::oid"), key):
                facts.constraints[name] = (kind, definition)
            else:
                child = connection.scalar(sa.text("SELECT relname FROM pg_class WHERE oid = :o"), {"o": relid})
                facts.referenced_by.append((child, name, definition))
        # Views and rules, policies, generated columns, publications, statistics and column triggers
        # that use the column; its own default, sequence, indexes and constraints are read above.
        facts.dependents = list(connection.execute(sa.text(
            "SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
            "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(:t) AND d.refobjsubid = :n "
            "AND d.classid IN ('pg_rewrite'::regclass, 'pg_policy'::regclass, 'pg_publication_rel'::regclass, "
            "'pg_statistic_ext'::regclass, 'pg_trigger'::regclass) "
            "OR (d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(:t) AND d.refobjsubid = :n "
            "AND d.classid = 'pg_attrdef'::regclass AND d.objid NOT IN (SELECT oid FROM pg_attrdef "
            "WHERE adrelid = to_regclass(:t) AND adnum = :n)) ORDER BY 1"), key).scalars())
        for name, kind, function, source, cost in connection.execute(sa.text(
                "SELECT t.tgname, t.tgtype, p.oid::regprocedure::text, p.prosrc, p.procost FROM pg_trigger t "
                "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = to_regclass(:t) AND NOT t.tgisinternal "
                "AND t.tgname NOT LIKE 'zdm\\_%' ORDER BY t.tgname"), key):
            row_level, before, on_insert, on_update = (bool(kind & bit) for bit in (1, 2, 4, 16))
            facts.triggers.append(UserTrigger(name, row_level and before and (on_insert or on_update),
                                              mentions(source or "", column), function, cost))
        return facts

    def create_index(self, name: str, table: str, columns: list[str], *, unique: bool = False) -> list[str]:
        # CONCURRENTLY never blocks writes; a failed try leaves an INVALID index behind, which
        # IF NOT EXISTS would then keep, so an earlier attempt's leftover is dropped first.
        index = self._index(name, table, columns, unique, postgresql_concurrently=True)
        return [*self.drop_index(name, table), self.sql(sa.schema.CreateIndex(index))]

    def drop_index(self, name: str, table: str) -> list[str]:
        index = self._index(name, table, [], False, postgresql_concurrently=True)
        return [self.sql(sa.schema.DropIndex(index, if_exists=True))]

    def rename_index(self, old: str, new: str) -> str:
        return f"ALTER INDEX {self.quote(old)} RENAME TO {self.quote(new)}"

    def unique_constraint_using_index(self, table: str, name: str, index: str) -> str:
        """Turn a unique index into a named constraint: no scan, only a brief lock."""
        q = self.quote
        return f"ALTER TABLE {q(table)} ADD CONSTRAINT {q(name)} UNIQUE USING INDEX {q(index)}"

    def sync_triggers(self, sync: Sync) -> tuple[list[str], list[str]]:
        # A BEFORE trigger edits NEW in place: no second UPDATE, so no recursion, and the value
        # is there before NOT NULL and CHECK constraints are tested. The rules are Sync's.
        q = self.quote
        fn = q(object_name("zdm_fn", sync.name))
        trigger = q(object_name("zdm_tg", sync.name))
        table = q(sync.table)
        new_a, new_b, old_a, old_b = f"NEW.{q(sync.a)}", f"NEW.{q(sync.b)}", f"OLD.{q(sync.a)}", f"OLD.{q(sync.b)}"
        up = self.expr(sync.up, new_a)

        def text(value: str) -> str:
            # Compare text forms: json has no equality operator, text forms work for every type.
            return f"({value})::text"

        left_out = f"{new_b} IS NULL" if sync.b_default is None else \
            f"{text(new_b)} IS NOT DISTINCT FROM {text(sync.b_default)}"
        insert = [f"    IF {left_out} THEN", f"      {new_b} := {up};"]
        update = [f"  ELSIF {text(new_a)} IS DISTINCT FROM {text(old_a)} THEN", f"    {new_b} := {up};"]
        if sync.down is not None:
            down = self.expr(sync.down, new_b)
            insert += ["    ELSE", f"      {new_a} := {down};"]
            update += [f"  ELSIF {text(new_b)} IS DISTINCT FROM {text(old_b)} "
                       f"AND {text(new_b)} IS DISTINCT FROM {text(up)} THEN", f"    {new_a} := {down};"]
        if sync.fill_unreached:
            update += [f"  ELSIF {new_b} IS NULL AND {new_a} IS NOT NULL THEN", f"    {new_b} := {up};"]
        body = "\n".join(
            ["BEGIN", "  IF TG_OP = 'INSERT' THEN", *insert, "    END IF;", *update, "  END IF;",
             "  RETURN NEW;", "END"]
        )
        create = [
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $zdm$\n{body}\n$zdm$",
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        ]
        drop = [f"DROP TRIGGER IF EXISTS {trigger} ON {table}", f"DROP FUNCTION IF EXISTS {fn}()"]
        return create, drop

    def fill_triggers(self, name: str, table: str, key: tuple[str, ...], column: str, value: str
                      ) -> tuple[list[str], list[str]]:
        q = self.quote
        fn, trigger = q(object_name("zdm_fn", name)), q(object_name("zdm_tg", name))
        body = f"BEGIN\n  IF NEW.{q(column)} IS NULL THEN NEW.{q(column)} := {value}; END IF;\n  RETURN NEW;\nEND"
        create = [
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $zdm$\n{body}\n$zdm$",
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {q(table)} FOR EACH ROW EXECUTE FUNCTION {fn}()",
        ]
        return create, [f"DROP TRIGGER IF EXISTS {trigger} ON {q(table)}", f"DROP FUNCTION IF EXISTS {fn}()"]

    # -- constraints: added NOT VALID (brief lock), validated later (no write lock) ------------
    def add_check(self, table: str, name: str, condition: str) -> str:
        return f"ALTER TABLE {self.quote(table)} ADD CONSTRAINT {self.quote(name)} CHECK ({condition}) NOT VALID"

    def add_foreign_key(self, table: str, name: str, columns: list[str], ref_table: str, ref_columns: list[str],
                        on_delete: str | None) -> str:
        q = self.quote
        action = f" ON DELETE {on_delete}" if on_delete else ""
        return (f"ALTER TABLE {q(table)} ADD CONSTRAINT {q(name)} FOREIGN KEY ({', '.join(map(q, columns))}) "
                f"REFERENCES {q(ref_table)} ({', '.join(map(q, ref_columns))}){action} NOT VALID")

    def validate_constraint(self, table: str, name: str) -> str:
        return f"ALTER TABLE {self.quote(table)} VALIDATE CONSTRAINT {self.quote(name)}"

    def drop_constraint(self, table: str, name: str) -> str:
        return f"ALTER TABLE {self.quote(table)} DROP CONSTRAINT IF EXISTS {self.quote(name)}"

    # -- NOT NULL without a long ACCESS EXCLUSIVE scan ---------------------------------------------
    def not_null_check(self, table: str, column: str, name: str) -> tuple[str, str, str]:
        """(add the check NOT VALID, validate it, drop it).

        SET NOT NULL after a validated ``CHECK (col IS NOT NULL)`` skips the full-table scan
        under ACCESS EXCLUSIVE (PostgreSQL 12+); VALIDATE only takes SHARE UPDATE EXCLUSIVE.
        """
        q = self.quote
        check = q(object_name("zdm_nn", name))
        return (
            f"ALTER TABLE {q(table)} ADD CONSTRAINT {check} CHECK ({q(column)} IS NOT NULL) NOT VALID",
            f"ALTER TABLE {q(table)} VALIDATE CONSTRAINT {check}",
            f"ALTER TABLE {q(table)} DROP CONSTRAINT IF EXISTS {check}",
        )

    def set_not_null(self, table: str, column: str) -> str:
        return f"ALTER TABLE {self.quote(table)} ALTER COLUMN {self.quote(column)} SET NOT NULL"

    def drop_not_null(self, table: str, column: str) -> str:
        return f"ALTER TABLE {self.quote(table)} ALTER COLUMN {self.quote(column)} DROP NOT NULL"

    def set_default(self, table: str, column: str, default: str | None) -> str:
        head = f"ALTER TABLE {self.quote(table)} ALTER COLUMN {self.quote(column)}"
        return f"{head} DROP DEFAULT" if default is None else f"{head} SET DEFAULT {default}"

    def zdm_objects(self, connection: sa.Connection) -> list[str]:
        rows = connection.execute(
            sa.text(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'zdm\\_%' "
                "UNION ALL SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE proname LIKE 'zdm\\_%' AND n.nspname = current_schema() "
                "UNION ALL SELECT conname FROM pg_constraint WHERE conname LIKE 'zdm\\_%' "
                "AND conrelid IS DISTINCT FROM to_regclass('zdm_migrations')"
            )
        )
        return sorted(r[0] for r in rows)

