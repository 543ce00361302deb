-- deploy/pg-bootstrap.sql — roles, database and shared schemas of aftercare.
--
-- Run by a superuser with psql, connected to any database of the cluster (it switches to
-- "aftercare" itself), with three psql variables holding the login passwords:
--
--   psql -v ON_ERROR_STOP=1 -d postgres \
--        -v admin_password=... -v intake_password=... -v dispatch_password=... -v bus_password=... \
--        -f deploy/pg-bootstrap.sql
--
-- (deploy/pg.sh feeds the variables on stdin instead, so they never show up in ps.)
-- Idempotent: running it again changes nothing but the passwords, which it sets to the
-- given values, so it is also how passwords are rotated.
--
-- Each service logs in with its own role, granted only what it needs:
--   ac_admin   owns the database and schema auth (tokens); used by aftercarectl.
--   ac_intake  owns schema intake; reads auth.tokens.
--   ac_dispatch owns schema dispatch; reads auth.tokens.
--   ac_bus     reads auth.tokens and auth.bus_keys; USAGE on intake, and SELECT on the
--              outbox tables (granted by the service's outbox migration) for replay.
-- Services create their own tables through their migrations, in the schema they own.

\set ON_ERROR_STOP 1

\if :{?admin_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'pg-bootstrap.sql: the psql variable admin_password is not set'; END $$;
\endif
\if :{?intake_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'pg-bootstrap.sql: the psql variable intake_password is not set'; END $$;
\endif
\if :{?dispatch_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'pg-bootstrap.sql: the psql variable dispatch_password is not set'; END $$;
\endif
\if :{?bus_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'pg-bootstrap.sql: the psql variable bus_password is not set'; END $$;
\endif

-- Roles: created when missing, password (re)set either way.
SELECT format('CREATE ROLE %I LOGIN', r)
  FROM unnest(ARRAY['ac_admin', 'ac_intake', 'ac_dispatch', 'ac_bus']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)
\gexec
ALTER ROLE ac_admin  LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'admin_password';
ALTER ROLE ac_intake LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'intake_password';
ALTER ROLE ac_dispatch LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'dispatch_password';
ALTER ROLE ac_bus    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'bus_password';

-- CREATE DATABASE cannot run inside a DO block or a transaction: \gexec it.
SELECT 'CREATE DATABASE aftercare OWNER ac_admin ENCODING ''UTF8'' TEMPLATE template0'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'aftercare')
\gexec

-- Only our roles may connect; nobody gets TEMP by default.
REVOKE ALL ON DATABASE aftercare FROM PUBLIC;
GRANT CONNECT ON DATABASE aftercare TO ac_admin, ac_intake, ac_dispatch, ac_bus;

\connect aftercare

BEGIN;

REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION ac_admin;
CREATE SCHEMA IF NOT EXISTS intake AUTHORIZATION ac_intake;
CREATE SCHEMA IF NOT EXISTS dispatch AUTHORIZATION ac_dispatch;
ALTER SCHEMA auth OWNER TO ac_admin;
ALTER SCHEMA intake OWNER TO ac_intake;
ALTER SCHEMA dispatch OWNER TO ac_dispatch;

-- Bearer tokens: only the SHA-256 (hex) of a token is stored (see common/ac_auth.h).
CREATE TABLE IF NOT EXISTS auth.tokens (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL,
    role         text        NOT NULL
                 CHECK (role IN ('agent', 'engineer', 'supervisor', 'warehouse', 'admin',
                                 'integration')),
    token_sha256 text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
ALTER TABLE auth.tokens OWNER TO ac_admin;
-- An engineer's token names the engineer (dispatch.engineers.id; not a foreign key: the
-- dispatch schema is another service's): dispatch lets it answer only that engineer's
-- offers. NULL for every other role.
ALTER TABLE auth.tokens ADD COLUMN IF NOT EXISTS engineer_id uuid;
ALTER TABLE auth.tokens DROP CONSTRAINT IF EXISTS tokens_engineer_role;
ALTER TABLE auth.tokens ADD CONSTRAINT tokens_engineer_role
    CHECK (engineer_id IS NULL OR role = 'engineer');

-- Every change to the table tells the services' token caches to reload.
CREATE OR REPLACE FUNCTION auth.tokens_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ac_auth', '');
    RETURN NULL;
END
$$;
ALTER FUNCTION auth.tokens_changed() OWNER TO ac_admin;

CREATE OR REPLACE TRIGGER tokens_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON auth.tokens
    FOR EACH STATEMENT EXECUTE FUNCTION auth.tokens_changed();

-- CURVE public keys allowed on the bus (see docs/events.md). Only public keys are stored;
-- a secret key never leaves the machine of its owner. The bus loads the table at start and
-- again on every NOTIFY ac_bus_keys, so a revoked key is refused without a restart.
--   kind 'service':    may publish into the bus input, only envelopes whose source is
--                      `source`; may also subscribe and replay like a subscriber.
--   kind 'subscriber': may subscribe to the output and use replay, nothing else.
--   topics:            the topic prefixes the key may see, live and replayed;
--                      an empty array means every topic.
CREATE TABLE IF NOT EXISTS auth.bus_keys (
    public_key text        PRIMARY KEY CHECK (length(public_key) = 40), -- Z85
    name       text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    kind       text        NOT NULL CHECK (kind IN ('service', 'subscriber')),
    source     text        CHECK (source ~ '^aftercare/[a-z][a-z0-9-]{0,31}$'),
    topics     text[]      NOT NULL DEFAULT '{}'
               CHECK (array_position(topics, NULL) IS NULL),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CHECK ((kind = 'service') = (source IS NOT NULL))
);
ALTER TABLE auth.bus_keys OWNER TO ac_admin;
-- a name is reusable once its key is revoked (rotation)
CREATE UNIQUE INDEX IF NOT EXISTS bus_keys_live_name ON auth.bus_keys (name)
    WHERE revoked_at IS NULL;

CREATE OR REPLACE FUNCTION auth.bus_keys_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ac_bus_keys', '');
    RETURN NULL;
END
$$;
ALTER FUNCTION auth.bus_keys_changed() OWNER TO ac_admin;

CREATE OR REPLACE TRIGGER bus_keys_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON auth.bus_keys
    FOR EACH STATEMENT EXECUTE FUNCTION auth.bus_keys_changed();

GRANT USAGE ON SCHEMA auth TO ac_intake, ac_dispatch, ac_bus;
GRANT SELECT ON auth.bus_keys TO ac_bus;
GRANT SELECT ON auth.tokens TO ac_intake, ac_dispatch, ac_bus;
GRANT USAGE ON SCHEMA intake TO ac_bus;
GRANT USAGE ON SCHEMA dispatch TO ac_bus;

COMMIT;
