"""PostgreSQL: BEFORE ROW triggers, lock budgets, constraints added NOT VALID then validated."""

from __future__ import annotations

import sqlalchemy as sa

from zdm.dialects import Dialect, Sync, object_name, takes_other


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
        # is there before NOT NULL and CHECK constraints are tested.
        q = self.quote
        fn = q(object_name("zdm_fn", sync.name))
        trigger = q(object_name("zdm_tg", sync.name))
        table = q(sync.table)
        new_a, new_b = f"NEW.{q(sync.a)}", f"NEW.{q(sync.b)}"
        up = self.expr(sync.up, new_a)

        def text(value: str | None) -> str | None:
            # Compare text forms: json has no equality operator, text forms work for every type.
            return None if value is None else f"({value})::text"

        same, differs = "IS NOT DISTINCT FROM", "IS DISTINCT FROM"
        b_from_a = takes_other(text(new_b), text(sync.b_default), text(new_a), text(sync.a_default), same, differs)
        insert = [f"    IF {b_from_a} THEN", f"      {new_b} := {up};"]
        update = [
            f"  ELSIF {text(new_a)} IS DISTINCT FROM {text(f'OLD.{q(sync.a)}')} THEN",
            f"    {new_b} := {up};",
        ]
        if sync.down is not None:
            down = self.expr(sync.down, new_b)
            a_from_b = takes_other(text(new_a), text(sync.a_default), text(new_b), text(sync.b_default), same, differs)
            insert += [f"    ELSIF {a_from_b} THEN", f"      {new_a} := {down};"]
            # The guard skips a write that is already consistent, such as the backfill's.
            update += [
                f"  ELSIF {text(new_b)} IS DISTINCT FROM {text(f'OLD.{q(sync.b)}')} "
                f"AND {text(new_b)} IS DISTINCT FROM {text(up)} THEN",
                f"    {new_a} := {down};",
            ]
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

