"""set_not_null with ``fill``: a rollback gives back the NULLs the fill replaced (breaker finding 5),
those the backfill filled and those the old app wrote during the window, and only those."""

from __future__ import annotations

import sqlalchemy as sa
from support import runner, zdm_objects

from zdm import db, planfile


def test_rollback_gives_back_the_nulls_the_fill_replaced(zdm_database_url: str) -> None:
    engine = db.create_engine(zdm_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, qty INTEGER, note TEXT)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1, 5, 'a'), (2, NULL, 'b'), (3, NULL, 'c'), "
                                   "(4, 0, 'd'), (5, NULL, 'e')")
    plan = planfile.parse({"id": "nn", "operations": [
        {"op": "set_not_null", "table": "t", "column": "qty", "fill": 0}]})
    run = runner(engine, batch_size=2)
    run.start(plan)
    with engine.begin() as connection:  # the old app, during the window
        connection.exec_driver_sql("INSERT INTO t (id, qty, note) VALUES (6, NULL, 'f'), (7, 0, 'g')")
        connection.exec_driver_sql("UPDATE t SET qty = 9 WHERE id = 3")  # a filled row given a value
        connection.exec_driver_sql("UPDATE t SET qty = NULL WHERE id = 1")  # NULL written: filled
        connection.exec_driver_sql("UPDATE t SET note = 'x' WHERE id = 5")  # another column
        assert connection.exec_driver_sql("SELECT count(*) FROM t WHERE qty IS NULL").scalar() == 0
    run.rollback(plan.id)
    with engine.connect() as connection:
        rows = dict(connection.exec_driver_sql("SELECT id, qty FROM t").all())
        tables = sa.inspect(connection).get_table_names()
    # 2, 5 (backfill), 1 and 6 (the old app's NULL) are NULL again; 4 and 7 were written 0; 3 got 9
    assert rows == {1: None, 2: None, 3: 9, 4: 0, 5: None, 6: None, 7: 0}
    assert [name for name in tables if name.startswith("zdm_") and name != "zdm_migrations"] == []
    assert zdm_objects(engine) == []
    run.start(plan)  # and the plan can run again, to complete
    run.complete(plan.id)
    with engine.connect() as connection:
        assert dict(connection.exec_driver_sql("SELECT id, qty FROM t").all()) == {
            1: 0, 2: 0, 3: 9, 4: 0, 5: 0, 6: 0, 7: 0}
        assert [name for name in sa.inspect(connection).get_table_names() if name.startswith("zdm_filled")] == []
