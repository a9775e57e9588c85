-- Messages can be edited. `revision` is the revision of the stored body:
-- 0 for the body it was created with, then the revision the api drew for
-- each edit (one counter per message in Redis, seeded from here). An edit
-- is applied only when its revision is above the stored one, so edits
-- stored out of order (retries, redeliveries, replays) leave the body of
-- the highest. `updated_at` is when the stored body last changed by an
-- edit; null for a message never edited. `created_body` keeps the body the
-- message was created with once an edit replaces it (null before): a
-- create delivered again after an edit is still told from a conflict (a
-- number handed out twice) by it. Constant defaults: no rewrite of the
-- table.
ALTER TABLE messages
    ADD COLUMN revision     BIGINT      NOT NULL DEFAULT 0 CHECK (revision >= 0),
    ADD COLUMN updated_at   TIMESTAMPTZ,
    ADD COLUMN created_body TEXT;
