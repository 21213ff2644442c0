"""`zdm rehearse`: run a plan on a staging database and check every promise before production does.

A plan can be correct and still hurt: a statement may hold an ACCESS EXCLUSIVE lock while it
rewrites a big table, or a raw ``sql`` step's ``down`` may not undo its ``up``. Reading the SQL
does not tell; running it does. A rehearsal snapshots the affected tables (shape and a checksum
of every row), runs ``start`` with a tracer that records what each statement locked, for how
long and whether it rewrote a table, probes that the old and the new app shapes both read and
write (right after expand, while the backfill has reached no row, and after start), rolls back
and proves the snapshot is back. Optionally it then completes the plan. Before anything runs it
notes the user objects (views, triggers, foreign keys, constraints) that use a column the plan
renames, retypes or drops.

Locks are read back for the runner's own session right after each statement, while its
transaction is still open, and count as held until that transaction commits (PostgreSQL's
``pg_locks``, through the dialect). A statement run outside a transaction has released its locks
before they can be read: unless its kind is known to let writes through (CONCURRENTLY, VALIDATE
CONSTRAINT), it counts as blocking writes while it ran. SQLite has no lock table to read: there
each write transaction holds the database's write lock from its first statement to its commit,
and that is what the report shows.

The parts: ``locks`` (lock modes and how they are judged), ``snapshot`` (what a rollback must give
back), ``tracer`` (what each statement did), ``probes`` (both app versions write), ``run`` (the
rehearsal and its verdict), ``report`` (the human report).
"""

from zdm.rehearse.report import print_report
from zdm.rehearse.run import Rehearsal, affected_tables, final_model, refuse_started, rehearse
from zdm.rehearse.snapshot import table_shape, user_tables

__all__ = ["Rehearsal", "affected_tables", "final_model", "print_report", "refuse_started", "rehearse",
           "table_shape", "user_tables"]
