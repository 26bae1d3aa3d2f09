CREATE TABLE products (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    stock       BIGINT NOT NULL CHECK (stock >= 0),
    created_at  TEXT   NOT NULL,
    updated_at  TEXT   NOT NULL
);

CREATE TABLE reservations (
    id           TEXT   PRIMARY KEY,
    status       TEXT   NOT NULL CHECK (status IN ('active', 'released')),
    request_hash TEXT   NOT NULL,
    total_cents  BIGINT NOT NULL,
    created_at   TEXT   NOT NULL,
    released_at  TEXT
);

CREATE TABLE reservation_items (
    reservation_id   TEXT   NOT NULL REFERENCES reservations (id),
    product_id       BIGINT NOT NULL,
    qty              BIGINT NOT NULL CHECK (qty > 0),
    unit_price_cents BIGINT NOT NULL,
    PRIMARY KEY (reservation_id, product_id)
);
