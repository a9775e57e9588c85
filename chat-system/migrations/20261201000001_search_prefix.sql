-- A message's search vector covers the first 100,000 characters of its
-- body. PostgreSQL refuses a tsvector over 1 MiB (54000), which a body
-- under MAX_BODY_BYTES of distinct words can exceed (990 KB did): that
-- refused the whole record. 100,000 characters make at most about 600 KB
-- of tsvector (one-character words of four-byte characters: 12 bytes of
-- lexeme, position and entry for every 2 characters), so every body the
-- api accepts is stored, and searchable in its first 100,000 characters.
ALTER TABLE messages DROP COLUMN search;
ALTER TABLE messages
    ADD COLUMN search TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', left(body, 100000))) STORED;
CREATE INDEX messages_search ON messages USING GIN (search);
