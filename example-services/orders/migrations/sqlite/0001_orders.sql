-- An order is written as `pending` before any other service is called, so that a crash at any point
-- leaves a record of what may have been reserved. Pending orders whose lease ran out are failed and their
-- reservation released by the recovery loop.
CREATE TABLE orders (
    id                TEXT    PRIMARY KEY,
    user_id           INTEGER NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'failed', 'cancelled')),
    total_cents       INTEGER NOT NULL DEFAULT 0,
    idempotency_key   TEXT    UNIQUE,
    request_hash      TEXT    NOT NULL,
    response_status   INTEGER,
    response_body     TEXT,
    -- 1 when stock this order may hold has been given back (or never needs to be).
    stock_released    INTEGER NOT NULL DEFAULT 0,
    lease_until       TEXT    NOT NULL,
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, created_at);
CREATE INDEX orders_by_status ON orders (status, stock_released);

CREATE TABLE order_items (
    order_id         TEXT    NOT NULL REFERENCES orders (id),
    product_id       INTEGER NOT NULL,
    qty              INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
