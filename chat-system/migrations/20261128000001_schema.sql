-- Applications, their chats and the chats' messages.
--
-- Numbers are handed out by the api (from Redis) and stored as given: the
-- unique constraints make a redelivered job a no-op instead of a second row.
-- The cached counts and highest numbers change in the same statement as the
-- insert that moves them (see store.rs), so they are exact under concurrent
-- writers. `last_*_number` is what the api seeds its counters from: once a
-- number has been skipped (a job the broker refused), the count and the
-- highest number differ, and only the highest number is safe to count on.

CREATE TABLE applications (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token            TEXT        NOT NULL UNIQUE,
    name             TEXT        NOT NULL,
    chats_count      BIGINT      NOT NULL DEFAULT 0,
    last_chat_number BIGINT      NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chats (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    application_id      BIGINT      NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    number              BIGINT      NOT NULL CHECK (number > 0),
    messages_count      BIGINT      NOT NULL DEFAULT 0,
    last_message_number BIGINT      NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (application_id, number)
);

-- 'simple' parses any language the same way (no stemming, no stop words),
-- as Elasticsearch's standard analyzer does; messages are not all English.
CREATE TABLE messages (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id    BIGINT      NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    number     BIGINT      NOT NULL CHECK (number > 0),
    body       TEXT        NOT NULL,
    search     TSVECTOR    GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (chat_id, number)
);

CREATE INDEX messages_search ON messages USING GIN (search);
