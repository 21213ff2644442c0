-- A tiny table to try the plans in plans/ on; both SQLite and PostgreSQL accept it.
--   sqlite3 /tmp/zdm-try.db < examples/users.sql
--   psql -h 127.0.0.1 -U postgres -d scratch -f examples/users.sql
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT,
    legacy_flag BOOLEAN
);

INSERT INTO users (id, email, name, legacy_flag) VALUES (1, 'Ada@Example.COM', 'Ada', TRUE);
INSERT INTO users (id, email, name, legacy_flag) VALUES (2, 'grace@example.com', 'Grace', FALSE);
INSERT INTO users (id, email, name, legacy_flag) VALUES (3, 'Linus@Kernel.ORG', NULL, NULL);
