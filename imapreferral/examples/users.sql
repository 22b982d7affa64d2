-- The bundled example SQL passdb (SQLite). users.sqlite is made from this file:
--   python -c "import sqlite3; sqlite3.connect('users.sqlite').executescript(open('users.sql').read())"
CREATE TABLE users (
    userid   TEXT PRIMARY KEY,
    password TEXT,
    host     TEXT
);
-- Refer after a good password (the seed's first query adds 'Y' AS nologin).
INSERT INTO users VALUES ('sqlref', '{PLAIN}pass', 'imap3.example.com');
-- No host: the seed's query still says nologin, so: NO [CONTACTADMIN].
INSERT INTO users VALUES ('sqlnohost', '{PLAIN}pass', NULL);
