-- The PostgreSQL store (executor/src/store/postgres.rs): claims, answers, in-flight markers,
-- tasks, the shared outbox and its dead letters. Times the executor compares with its own clock
-- are milliseconds since the epoch (bigint); leases are database time (timestamptz).

CREATE TABLE claims (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    owner       uuid NOT NULL,
    token       uuid NOT NULL,
    lease_until timestamptz NOT NULL
);
CREATE INDEX claims_owner ON claims (owner);

CREATE TABLE answers (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    answer      bytea NOT NULL,
    created_ms  bigint NOT NULL
);
CREATE INDEX answers_created ON answers (created_ms);

CREATE TABLE in_flight (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    marker      bytea NOT NULL,
    owner       uuid NOT NULL,
    lease_until timestamptz NOT NULL
);
CREATE INDEX in_flight_lease ON in_flight (lease_until);

CREATE TABLE tasks (
    id     text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE outbox (
    seq          bigserial PRIMARY KEY,
    sink         smallint NOT NULL,
    event_id     text NOT NULL,
    trace_id     text NOT NULL,
    body         bytea NOT NULL,
    enqueued_ms  bigint NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    leased_until timestamptz
);
CREATE INDEX outbox_sink_seq ON outbox (sink, seq);

CREATE TABLE dead_letters (
    id     bigserial PRIMARY KEY,
    sink   smallint NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX dead_letters_sink_id ON dead_letters (sink, id);
