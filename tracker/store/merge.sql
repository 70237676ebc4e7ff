-- The merge rule of tracker.merge over a whole batch at once (PostgreSQL): the body of the
-- function tracker_merge(json, bigint[]) that postgresql.py makes in each session that folds.
--
-- Parameters: $1, the batch as one JSON array of events; $2, the batch's job ids, already locked
-- in id order by the statement before. Answers one row (changed, NULL, …) holding the number of
-- rows it changed, then a row (NULL, job_id, kind, status, start_time, end_time, notifies) for each
-- job it ended (PENDING before it, SUCCEEDED or FAILED after), notifies saying whether it queued
-- the job's webhook delivery (SPEC §13: a job with a notify_url). It keeps every event of the batch whose
-- job has a row in the timeline (async_status_event, once per event_id), which is also the
-- history it reads, and an entry in the stream's change log for each row it changes. It also
-- renews the heartbeat lease (SPEC §6) of each job of the batch that
-- has one, from now (this receipt), and deletes the lease of a job that is no longer PENDING: a
-- table of its own, so a heartbeat writes no row of async_status (whose updates the API's cache
-- watches).
--
-- Keys compare as (occurred_at, seq, event_id) with event_id in the "C" collation, which is
-- Python's order for these ASCII texts. Ties keep what merge.merge keeps: the stored state first,
-- then the earlier event of the batch (n). A result and an error's details travel as the compact
-- JSON text they came as (tracker.events.json_text), and are kept as json, which keeps it as it is.
WITH batch AS (
    SELECT e.job_id, e.event_id COLLATE "C" AS event_id, e.occurred_at, e.seq, e.type, e.message,
           e.progress, e.result_json, e.error_code, e.error_details_json, e.n
    FROM ROWS FROM (json_to_recordset($1) AS (
             job_id bigint, event_id text, occurred_at timestamptz, seq bigint, type text, message text,
             progress float8, result_json text, error_code text, error_details_json text))
         WITH ORDINALITY AS e(job_id, event_id, occurred_at, seq, type, message,
                              progress, result_json, error_code, error_details_json, n)
),
job AS (
    SELECT id, kind, start_time, initial_message, status, terminal_at, terminal_seq,
           terminal_event_id COLLATE "C" AS terminal_event_id,
           result::text AS result, error_code, error_details::text AS error_details,
           message_at, message_seq, message_event_id COLLATE "C" AS message_event_id, message,
           progress_at, progress_seq, progress_event_id COLLATE "C" AS progress_event_id, progress,
           cancel_requested_at, cancel_seq, cancel_event_id COLLATE "C" AS cancel_event_id, notify_url
    FROM async_status WHERE id = ANY($2)
),
-- t: the earliest terminal event by key, the stored one or one of the batch, with its result or error
terminal AS (
    SELECT DISTINCT ON (job_id) job_id, at, seq, event_id, type, result, error_code, error_details
    FROM (
        SELECT id AS job_id, terminal_at AS at, terminal_seq AS seq, terminal_event_id AS event_id,
               lower(status) AS type, result, error_code, error_details, 0 AS n
        FROM job WHERE terminal_at IS NOT NULL
        UNION ALL
        SELECT job_id, occurred_at, seq, event_id, type, result_json, error_code, error_details_json, n
        FROM batch WHERE type IN ('succeeded', 'failed')
    ) AS candidate
    ORDER BY job_id, at, seq, event_id, n
),
folded AS (
    SELECT job.*, t.at AS t_at, t.seq AS t_seq, t.event_id AS t_event_id, t.type AS t_type,
           t.result AS t_result, t.error_code AS t_error_code, t.error_details AS t_error_details
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
-- the latest progress event in R, found as the latest message event is
progressed AS (
    SELECT DISTINCT ON (job_id) job_id, at, seq, event_id, progress
    FROM (
        SELECT id AS job_id, progress_at AS at, progress_seq AS seq, progress_event_id AS event_id,
               progress, 0 AS n
        FROM folded
        WHERE progress_at IS NOT NULL
          AND (t_at IS NULL OR (progress_at, progress_seq, progress_event_id) <= (t_at, t_seq, t_event_id))
        UNION ALL
        SELECT f.id, h.occurred_at, h.seq, h.event_id, h.progress, 0
        FROM folded AS f CROSS JOIN LATERAL (
            SELECT occurred_at, seq, event_id COLLATE "C" AS event_id, progress
            FROM async_status_event
            WHERE job_id = f.id AND progress IS NOT NULL
              AND (occurred_at, seq, event_id COLLATE "C") <= (f.t_at, f.t_seq, f.t_event_id)
            ORDER BY occurred_at DESC, seq DESC, event_id COLLATE "C" DESC
            LIMIT 1
        ) AS h
        WHERE f.progress_at IS NOT NULL
          AND (f.progress_at, f.progress_seq, f.progress_event_id) > (f.t_at, f.t_seq, f.t_event_id)
        UNION ALL
        SELECT b.job_id, b.occurred_at, b.seq, b.event_id, b.progress, b.n
        FROM batch AS b JOIN folded AS f ON f.id = b.job_id
        WHERE b.progress IS NOT NULL
          AND (f.t_at IS NULL OR (b.occurred_at, b.seq, b.event_id) <= (f.t_at, f.t_seq, f.t_event_id))
    ) AS candidate
    ORDER BY job_id, at DESC, seq DESC, event_id DESC, n
),
-- the earliest cancel_requested event in R: the stored one if still in R (if not, none stored is:
-- tracker.merge), or one of the batch
cancelled AS (
    SELECT DISTINCT ON (job_id) job_id, at, seq, event_id
    FROM (
        SELECT id AS job_id, cancel_requested_at AS at, cancel_seq AS seq, cancel_event_id AS event_id, 0 AS n
        FROM folded
        WHERE cancel_requested_at IS NOT NULL
          AND (t_at IS NULL OR (cancel_requested_at, cancel_seq, cancel_event_id) <= (t_at, t_seq, t_event_id))
        UNION ALL
        SELECT b.job_id, b.occurred_at, b.seq, b.event_id, b.n
        FROM batch AS b JOIN folded AS f ON f.id = b.job_id
        WHERE b.type = 'cancel_requested'
          AND (f.t_at IS NULL OR (b.occurred_at, b.seq, b.event_id) <= (f.t_at, f.t_seq, f.t_event_id))
    ) AS candidate
    ORDER BY job_id, at, seq, event_id, n
),
-- the timeline: every event of the batch whose job has a row, received now
kept AS (
    INSERT INTO async_status_event (job_id, event_id, occurred_at, seq, type, message, received_at,
                                    progress, result, error_code, error_details)
    SELECT b.job_id, b.event_id, b.occurred_at, b.seq, b.type, b.message, now(),
           b.progress, b.result_json::json, b.error_code, b.error_details_json::json
    FROM batch AS b JOIN job AS j ON j.id = b.job_id
    ON CONFLICT DO NOTHING
),
next AS (
    SELECT f.id, f.kind, f.notify_url, f.status AS status_before,
           CASE f.t_type WHEN 'succeeded' THEN 'SUCCEEDED' WHEN 'failed' THEN 'FAILED' ELSE 'PENDING' END
               AS status,
           CASE WHEN l.job_id IS NULL THEN f.initial_message ELSE l.message END AS message,
           CASE WHEN f.t_at IS NOT NULL THEN greatest(f.t_at, f.start_time) END AS end_time,
           f.t_at, f.t_seq, f.t_event_id, f.t_result, f.t_error_code, f.t_error_details,
           l.at AS l_at, l.seq AS l_seq, l.event_id AS l_event_id,
           p.progress AS p_progress, p.at AS p_at, p.seq AS p_seq, p.event_id AS p_event_id,
           c.at AS c_at, c.seq AS c_seq, c.event_id AS c_event_id
    FROM folded AS f LEFT JOIN latest AS l ON l.job_id = f.id
         LEFT JOIN progressed AS p ON p.job_id = f.id
         LEFT JOIN cancelled AS c ON c.job_id = f.id
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
-- The result and the error's details change only with t's key (they are t's), so comparing the
-- keys is enough: json has no equality to compare them with.
changed AS (
    UPDATE async_status AS a
    SET status = n.status, message = n.message, end_time = n.end_time,
        terminal_at = n.t_at, terminal_seq = n.t_seq, terminal_event_id = n.t_event_id,
        result = n.t_result::json, error_code = n.t_error_code, error_details = n.t_error_details::json,
        message_at = n.l_at, message_seq = n.l_seq, message_event_id = n.l_event_id,
        progress = n.p_progress, progress_at = n.p_at, progress_seq = n.p_seq, progress_event_id = n.p_event_id,
        cancel_requested_at = n.c_at, cancel_seq = n.c_seq, cancel_event_id = n.c_event_id
    FROM next AS n
    WHERE a.id = n.id AND a.id = ANY($2)
      AND (a.status, a.message, a.terminal_at, a.terminal_seq, a.terminal_event_id,
           a.message_at, a.message_seq, a.message_event_id,
           a.progress, a.progress_at, a.progress_seq, a.progress_event_id,
           a.cancel_requested_at, a.cancel_seq, a.cancel_event_id)
          IS DISTINCT FROM (n.status, n.message, n.t_at, n.t_seq, n.t_event_id,
                            n.l_at, n.l_seq, n.l_event_id,
                            n.p_progress, n.p_at, n.p_seq, n.p_event_id,
                            n.c_at, n.c_seq, n.c_event_id)
    RETURNING a.id, n.kind, a.status, a.start_time, a.end_time, n.status_before, n.notify_url
),
-- SPEC §13: the stream's change log, an entry per row changed, its cursor taken in commit order
-- (tracker.store.cursor): under the advisory lock that every writer of async_status takes last,
-- joined in so that it is taken before the first cursor, and kept until the commit. (The log's
-- row trigger of migration 0015 leaves these rows alone: the fold's transaction says it logs them.)
serialized AS (
    SELECT pg_advisory_xact_lock(1953653099)
),
logged AS (
    INSERT INTO async_status_change (job_id)
    SELECT c.id FROM changed AS c CROSS JOIN serialized ORDER BY c.id
),
-- SPEC §13: the webhook of each job this batch ends, queued in the transaction that ends it (a job
-- ends once: its status never goes back to PENDING)
queued AS (
    INSERT INTO async_status_delivery (job_id, queued_at, due_at)
    SELECT id, now(), now() FROM changed
    WHERE status_before = 'PENDING' AND status <> 'PENDING' AND notify_url IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT count(*), NULL::bigint, NULL::text, NULL::text, NULL::timestamptz, NULL::timestamptz, NULL::boolean
FROM changed
UNION ALL
SELECT NULL, id, kind, status, start_time, end_time, notify_url IS NOT NULL FROM changed
WHERE status_before = 'PENDING' AND status <> 'PENDING'
