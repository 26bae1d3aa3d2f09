CREATE TABLE users (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT      NOT NULL,
    email      TEXT      NOT NULL UNIQUE,
    created_at TEXT      NOT NULL,
    updated_at TEXT      NOT NULL
);
