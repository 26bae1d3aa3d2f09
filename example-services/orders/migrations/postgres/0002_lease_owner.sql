-- Several instances share one database: a lease names its holder (a random id per process), so that an
-- instance only confirms, fails or releases an order it holds, and another takes an order over only
-- once the holder's lease has run out (`lease_until`, renewed while the holder works on it).
ALTER TABLE orders ADD COLUMN lease_owner TEXT;
CREATE INDEX orders_by_lease ON orders (lease_until);
