-- dispatch 001: engineers, their skills (a child table), and the function that renders
-- an engineer as API JSON. The schema "dispatch" exists already (deployment bootstrap);
-- everything is qualified. Input is validated by api.c before it gets here; the CHECKs
-- are the last line of defence.

CREATE TABLE dispatch.engineers (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq           bigserial NOT NULL UNIQUE,            -- keyset pagination, newest first
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role          text NOT NULL
        CHECK (role IN ('technical_support', 'field_engineer', 'depot_technician',
                        'supervisor', 'manager')),
    regions       text[] NOT NULL DEFAULT '{}' CHECK (array_position(regions, NULL) IS NULL),
    capacity      int NOT NULL CHECK (capacity >= 0),   -- open jobs at once
    availability  text NOT NULL DEFAULT 'available'
        CHECK (availability IN ('available', 'away', 'on_leave')),
    phone         text,
    email         text,
    shift         jsonb NOT NULL,                       -- calendar JSON (calendar.h)
    version       bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR email IS NOT NULL)
);
CREATE INDEX engineers_regions ON dispatch.engineers USING gin (regions);
CREATE INDEX engineers_role_seq ON dispatch.engineers (role, seq);

CREATE TABLE dispatch.engineer_skills (
    engineer_id  uuid NOT NULL REFERENCES dispatch.engineers (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('product_line', 'category')),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    level        int NOT NULL CHECK (level BETWEEN 1 AND 5),
    PRIMARY KEY (engineer_id, kind, name)
);
CREATE INDEX engineer_skills_name ON dispatch.engineer_skills (name, level);

CREATE FUNCTION dispatch.ts(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION dispatch.engineer_doc(e dispatch.engineers) RETURNS json
    LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', e.id, 'name', e.name, 'role', e.role,
        'skills', (SELECT coalesce(json_agg(json_build_object('kind', s.kind, 'name', s.name,
                                                              'level', s.level)
                                            ORDER BY s.kind, s.name), '[]')
                   FROM dispatch.engineer_skills s WHERE s.engineer_id = e.id),
        'regions', to_json(e.regions), 'capacity', e.capacity,
        'availability', e.availability,
        'contact', json_strip_nulls(json_build_object('phone', e.phone, 'email', e.email)),
        'shift', e.shift, 'version', e.version,
        'created_at', dispatch.ts(e.created_at), 'updated_at', dispatch.ts(e.updated_at))
$$;

-- Writes a validated engineer document d (api.c): a new row when p_id is NULL, otherwise
-- the row p_id at version p_version - 1 (NULL when it moved on). Skills are replaced
-- whole. Returns the engineer's document after the write.
CREATE FUNCTION dispatch.engineer_save(p_id uuid, p_version bigint, d jsonb) RETURNS json
    LANGUAGE plpgsql AS $$
DECLARE
    e dispatch.engineers;
BEGIN
    IF p_id IS NULL THEN
        INSERT INTO dispatch.engineers AS x
            (name, role, regions, capacity, availability, phone, email, shift)
        VALUES (d->>'name', d->>'role',
                ARRAY(SELECT jsonb_array_elements_text(d->'regions')),
                (d->>'capacity')::int, d->>'availability',
                d->'contact'->>'phone', d->'contact'->>'email', d->'shift')
        RETURNING * INTO e;
    ELSE
        UPDATE dispatch.engineers AS x SET
            name = d->>'name', role = d->>'role',
            regions = ARRAY(SELECT jsonb_array_elements_text(d->'regions')),
            capacity = (d->>'capacity')::int, availability = d->>'availability',
            phone = d->'contact'->>'phone', email = d->'contact'->>'email',
            shift = d->'shift', version = p_version, updated_at = now()
        WHERE x.id = p_id AND x.version = p_version - 1
        RETURNING * INTO e;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        DELETE FROM dispatch.engineer_skills WHERE engineer_id = p_id;
    END IF;
    INSERT INTO dispatch.engineer_skills (engineer_id, kind, name, level)
    SELECT e.id, s->>'kind', s->>'name', (s->>'level')::int
      FROM jsonb_array_elements(d->'skills') AS s;
    RETURN dispatch.engineer_doc(e);
END
$$;
