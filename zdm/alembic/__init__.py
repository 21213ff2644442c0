"""zdm for Alembic projects: zero-downtime operations in revision files, one helper in env.py.

In a revision file (after ``import zdm.alembic`` in env.py, every catalogue operation is on ``op``)::

    def upgrade():
        op.zdm_rename_column("users", "email", "email_address")

    def downgrade():
        op.zdm_rollback()

In env.py, instead of ``with context.begin_transaction(): context.run_migrations()``::

    zdm.alembic.run_migrations(context)

``alembic upgrade`` then runs expand and migrate of each zdm operation with zdm's runner (lock
budget, batched backfill, progress, state in ``zdm_migrations``) as plan ``<revision>``;
``alembic -x zdm=complete upgrade head`` or ``zdm complete <revision>`` contracts after the
deploy; ``alembic downgrade`` or ``zdm rollback <revision>`` undoes a plan not yet complete;
``alembic upgrade head --sql`` prints the SQL for review (``-x zdm=contract`` adds the contract
phase). ``alembic revision --autogenerate`` writes unsafe changes as ``op.zdm_*`` and leaves
zdm's objects and plans in flight alone (``zdm.alembic.autogenerate``). The why of transactions
and plan ids is in ``zdm.alembic.runtime``, offline mode in ``zdm.alembic.offline``.
"""

from __future__ import annotations

from zdm.alembic import operations as _operations
from zdm.alembic.runtime import MODES, ZdmAlembicError, revision_of, run_migrations

#: The ``op.zdm_*`` methods now on Alembic's ``op``.
OPERATIONS = _operations.register()

__all__ = ["MODES", "OPERATIONS", "ZdmAlembicError", "revision_of", "run_migrations"]
