CREATE TABLE products (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

-- A reservation takes stock for one order, all items or none. Its id is chosen by the caller, which
-- makes reserving idempotent and lets the caller release what it reserved after a crash.
CREATE TABLE reservations (
    id           TEXT    PRIMARY KEY,
    status       TEXT    NOT NULL CHECK (status IN ('active', 'released')),
    request_hash TEXT    NOT NULL,
    total_cents  INTEGER NOT NULL,
    created_at   TEXT    NOT NULL,
    released_at  TEXT
);

CREATE TABLE reservation_items (
    reservation_id   TEXT    NOT NULL REFERENCES reservations (id),
    product_id       INTEGER NOT NULL,
    qty              INTEGER NOT NULL CHECK (qty > 0),
    unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, product_id)
);
