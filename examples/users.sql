-- A tiny schema to try the plans in plans/ and examples/ on; SQLite and PostgreSQL both accept it.
--   sqlite3 /tmp/zdm-try.db < examples/users.sql
--   psql -h 127.0.0.1 -U postgres -d scratch -f examples/users.sql
CREATE TABLE teams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT,
    legacy_flag BOOLEAN,
    age INTEGER,
    zip TEXT,
    prefs TEXT,
    team_id INTEGER
);

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    token TEXT CONSTRAINT sessions_token_ck CHECK (length(token) > 0)
);

CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_email VARCHAR(255) NOT NULL,
    amount NUMERIC(10,2) NOT NULL,
    status VARCHAR(20) DEFAULT 'new'
);

CREATE TABLE events (
    id INTEGER,
    what TEXT
);

CREATE INDEX users_name_ix ON users (name);

INSERT INTO teams (id, name) VALUES (1, 'core');
INSERT INTO teams (id, name) VALUES (2, 'infra');

INSERT INTO users (id, email, name, legacy_flag, age, zip, prefs, team_id)
    VALUES (1, 'Ada@Example.COM', 'Ada', TRUE, 36, '01234', '{"theme": "dark"}', 1);
INSERT INTO users (id, email, name, legacy_flag, age, zip, prefs, team_id)
    VALUES (2, 'grace@example.com', 'Grace', FALSE, 45, '20500', '{"theme": "light"}', 2);
INSERT INTO users (id, email, name, legacy_flag, age, zip, prefs, team_id)
    VALUES (3, 'Linus@Kernel.ORG', NULL, NULL, 28, '97201', NULL, NULL);

INSERT INTO sessions (id, token) VALUES (1, 'abc');

INSERT INTO orders (id, customer_email, amount, status) VALUES (1, 'ada@example.com', 19.95, 'paid');
INSERT INTO orders (id, customer_email, amount) VALUES (2, 'grace@example.com', 1234.50);
INSERT INTO events (id, what) VALUES (1, 'signup');
INSERT INTO events (id, what) VALUES (2, 'login');
