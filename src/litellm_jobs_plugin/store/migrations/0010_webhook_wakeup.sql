-- The delivering process is woken when an event gets deliveries (a NOTIFY, sent at commit), instead
-- of polling the outbox twice a second. The channel is named after the schema, so that two
-- installations in one database do not wake each other: 'ljp_webhooks_' || md5(schema).

CREATE OR REPLACE FUNCTION webhook_emit(p_type text, p_team text, p_job text, p_order_key text, p_natural_key text,
                                        p_snapshot jsonb)
RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_id    text := 'evt_' || md5(p_natural_key);
    v_seq   bigint;
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE (e.team_id IS NULL OR e.team_id = p_team) AND p_type = ANY (e.event_types)) THEN
        RETURN;
    END IF;
    INSERT INTO webhook_events (event_id, event_type, team_id, job_id, order_key, snapshot)
    VALUES (v_id, p_type, p_team, p_job, p_order_key, p_snapshot)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING seq INTO v_seq;
    IF v_seq IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO webhook_deliveries (event_id, endpoint_id, seq, order_key)
    SELECT v_id, e.endpoint_id, v_seq, p_order_key
    FROM webhook_endpoints e
    WHERE (e.team_id IS NULL OR e.team_id = p_team) AND p_type = ANY (e.event_types)
    ORDER BY e.endpoint_id
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify('ljp_webhooks_' || md5(current_schema()), '');
    END IF;
END
$$;
