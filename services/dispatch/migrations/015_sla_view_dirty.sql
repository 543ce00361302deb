-- dispatch 015: GET /v1/tickets/{number}/sla is current also while the engine has not yet
-- saved a clock's new computation. A status change marks the ticket's clocks dirty (gen
-- moves on); the engine computes and saves them in batches, up to COMPUTE_GAP_S (sla.c)
-- later. Until then the stored levels are the old ones: the view showed a paused clock
-- with its old next deadline. The view now names its dirty clocks ("dirty": targets), and
-- sla.c renders their deadlines from a computation made for the request, merged with the
-- stored levels exactly as the engine will save them.
CREATE OR REPLACE FUNCTION dispatch.sla_view(p_number text) RETURNS json
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    t dispatch.tickets;
    v json;
BEGIN
    SELECT * INTO t FROM dispatch.tickets WHERE number = p_number;
    IF NOT FOUND THEN
        RETURN dispatch.err(404, 'not_found', format('dispatch knows no ticket %s', p_number));
    END IF;
    v := dispatch.sla_state(ARRAY[t.id], true);
    RETURN dispatch.ok(200, jsonb_build_object(
        'now_us', dispatch.epoch_us(clock_timestamp()),
        'ticket', (v->'tickets'->0)::jsonb, 'policies', (v->'policies')::jsonb,
        'calendars', (v->'calendars')::jsonb,
        'dirty', coalesce((SELECT jsonb_agg(c.target) FROM dispatch.sla_clocks c
                            WHERE c.ticket_id = t.id AND c.gen <> c.computed_gen), '[]'),
        'references', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'target', d.target, 'reference_id', d.reference_id, 'level', d.level,
                       'id', d.id::text, 'state', d.state, 'due_at', dispatch.ts(d.due_at),
                       'fired_at', dispatch.ts(d.fired_at)) ORDER BY d.due_at, d.id)
              FROM dispatch.sla_vendor_deadlines d WHERE d.ticket_id = t.id), '[]')));
END
$$;
