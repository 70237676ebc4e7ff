-- The merge rule of tracker.merge over a whole batch at once (PostgreSQL): the body of the
-- function tracker_merge(json, bigint[]) that postgresql.py makes in each session that folds.
--
-- Parameters: $1, the batch as one JSON array of events; $2, the batch's job ids, already locked
-- in id order by the statement before. Answers the number of rows it changed. It keeps every
-- event of the batch whose job has a row in the timeline (async_status_event, once per
-- event_id), which is also the history it reads. It also renews the heartbeat lease (SPEC §6) of
-- each job of the batch that has one, from now (this receipt), and deletes the lease of a job
-- that is no longer PENDING: a table of its own, so a heartbeat writes no row of async_status
-- (whose updates the API's cache watches).
--
-- Keys compare as (occurred_at, seq, event_id) with event_id in the "C" collation, which is
-- Python's order for these ASCII texts. Ties keep what merge.merge keeps: the stored state first,
-- then the earlier event of the batch (n).
WITH batch AS (
    SELECT e.job_id, e.event_id COLLATE "C" AS event_id, e.occurred_at, e.seq, e.type, e.message, e.n
    FROM ROWS FROM (json_to_recordset($1) AS (
             job_id bigint, event_id text, occurred_at timestamptz, seq bigint, type text, message text))
         WITH ORDINALITY AS e(job_id, event_id, occurred_at, seq, type, message, n)
),
job AS (
    SELECT id, start_time, initial_message, status, terminal_at, terminal_seq,
           terminal_event_id COLLATE "C" AS terminal_event_id,
           message_at, message_seq, message_event_id COLLATE "C" AS message_event_id, message
    FROM async_status WHERE id = ANY($2)
),
-- t: the earliest terminal event by key, the stored one or one of the batch
terminal AS (
    SELECT DISTINCT ON (job_id) job_id, at, seq, event_id, type
    FROM (
        SELECT id AS job_id, terminal_at AS at, terminal_seq AS seq, terminal_event_id AS event_id,
               lower(status) AS type, 0 AS n
        FROM job WHERE terminal_at IS NOT NULL
        UNION ALL
        SELECT job_id, occurred_at, seq, event_id, type, n FROM batch WHERE type <> 'progress'
    ) AS candidate
    ORDER BY job_id, at, seq, event_id, n
),
folded AS (
    SELECT job.*, t.at AS t_at, t.seq AS t_seq, t.event_id AS t_event_id, t.type AS t_type
    FROM job LEFT JOIN terminal AS t ON t.job_id = job.id
),
-- the latest message event in R (key <= t's): the stored one if still in R, else the latest
-- such in the timeline (the history); or one of the batch
latest AS (
    SELECT DISTINCT ON (job_id) job_id, at, seq, event_id, message
    FROM (
        SELECT id AS job_id, message_at AS at, message_seq AS seq, message_event_id AS event_id,
               message, 0 AS n
        FROM folded
        WHERE message_at IS NOT NULL
          AND (t_at IS NULL OR (message_at, message_seq, message_event_id) <= (t_at, t_seq, t_event_id))
        UNION ALL
        SELECT f.id, h.occurred_at, h.seq, h.event_id, h.message, 0
        FROM folded AS f CROSS JOIN LATERAL (
            SELECT occurred_at, seq, event_id COLLATE "C" AS event_id, message
            FROM async_status_event
            WHERE job_id = f.id AND message IS NOT NULL
              AND (occurred_at, seq, event_id COLLATE "C") <= (f.t_at, f.t_seq, f.t_event_id)
            ORDER BY occurred_at DESC, seq DESC, event_id COLLATE "C" DESC
            LIMIT 1
        ) AS h
        WHERE f.message_at IS NOT NULL
          AND (f.message_at, f.message_seq, f.message_event_id) > (f.t_at, f.t_seq, f.t_event_id)
        UNION ALL
        SELECT b.job_id, b.occurred_at, b.seq, b.event_id, b.message, b.n
        FROM batch AS b JOIN folded AS f ON f.id = b.job_id
        WHERE b.message IS NOT NULL
          AND (f.t_at IS NULL OR (b.occurred_at, b.seq, b.event_id) <= (f.t_at, f.t_seq, f.t_event_id))
    ) AS candidate
    ORDER BY job_id, at DESC, seq DESC, event_id DESC, n
),
-- the timeline: every event of the batch whose job has a row, received now
kept AS (
    INSERT INTO async_status_event (job_id, event_id, occurred_at, seq, type, message, received_at)
    SELECT b.job_id, b.event_id, b.occurred_at, b.seq, b.type, b.message, now()
    FROM batch AS b JOIN job AS j ON j.id = b.job_id
    ON CONFLICT DO NOTHING
),
next AS (
    SELECT f.id,
           CASE f.t_type WHEN 'succeeded' THEN 'SUCCEEDED' WHEN 'failed' THEN 'FAILED' ELSE 'PENDING' END
               AS status,
           CASE WHEN l.job_id IS NULL THEN f.initial_message ELSE l.message END AS message,
           CASE WHEN f.t_at IS NOT NULL THEN greatest(f.t_at, f.start_time) END AS end_time,
           f.t_at, f.t_seq, f.t_event_id, l.at AS l_at, l.seq AS l_seq, l.event_id AS l_event_id
    FROM folded AS f LEFT JOIN latest AS l ON l.job_id = f.id
),
-- the receipt: the leases of the batch's PENDING jobs renewed, those of its finished jobs deleted
renewed AS (
    UPDATE async_status_lease AS l SET expires_at = now() + l.heartbeat_timeout_s * interval '1 s'
    FROM next AS n WHERE l.job_id = n.id AND n.status = 'PENDING'
      AND l.expires_at < now() + (l.heartbeat_timeout_s - 1) * interval '1 s'
),
ended AS (
    DELETE FROM async_status_lease AS l USING next AS n WHERE l.job_id = n.id AND n.status <> 'PENDING'
),
changed AS (
    UPDATE async_status AS a
    SET status = n.status, message = n.message, end_time = n.end_time,
        terminal_at = n.t_at, terminal_seq = n.t_seq, terminal_event_id = n.t_event_id,
        message_at = n.l_at, message_seq = n.l_seq, message_event_id = n.l_event_id
    FROM next AS n
    WHERE a.id = n.id AND a.id = ANY($2)
      AND (a.status, a.message, a.terminal_at, a.terminal_seq, a.terminal_event_id,
           a.message_at, a.message_seq, a.message_event_id)
          IS DISTINCT FROM (n.status, n.message, n.t_at, n.t_seq, n.t_event_id, n.l_at, n.l_seq, n.l_event_id)
    RETURNING a.id
)
SELECT count(*) FROM changed
