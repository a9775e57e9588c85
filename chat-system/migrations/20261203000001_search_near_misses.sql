-- Search finds near misses (a typo: `helo` finds `hello`) with pg_trgm's
-- strict_word_similarity, within the one chat searched (reads.rs
-- `search`). No trigram index: a GIN index on the body would be one more
-- index every message insert and edit maintains, and writes are the hot
-- path; near misses are only looked for when the word matches (served by
-- the existing `messages_search` GIN index, prefix terms included) do not
-- fill the page, and the search pool's statement timeout bounds them.
-- pg_trgm is a trusted extension (PostgreSQL 13 and later): a role with
-- CREATE on the database may install it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
