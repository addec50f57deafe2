-- Sample data of the lab's PostgreSQL (roles/lab_seed): two databases and a role with grants.
-- Unicode, bytea, jsonb, arrays, a sequence, a view, a function and a trigger.
SELECT 'CREATE ROLE app_reader LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_reader')\gexec
SELECT 'CREATE DATABASE rag ENCODING ''UTF8'' TEMPLATE template0'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'rag')\gexec
SELECT 'CREATE DATABASE analytics ENCODING ''UTF8'' TEMPLATE template0'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'analytics')\gexec

\connect rag
CREATE SEQUENCE chunk_seq START 1000;
CREATE TABLE sources (
  id integer PRIMARY KEY,
  uri text NOT NULL UNIQUE,
  meta jsonb NOT NULL,
  tags text[] NOT NULL
);
CREATE TABLE chunks (
  id bigint PRIMARY KEY DEFAULT nextval('chunk_seq'),
  source_id integer NOT NULL REFERENCES sources (id),
  ord integer NOT NULL,
  content text NOT NULL,
  raw bytea NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
);
CREATE FUNCTION touch_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := GREATEST(NEW.updated_at, OLD.updated_at); RETURN NEW; END $$;
CREATE TRIGGER chunks_touch BEFORE UPDATE ON chunks FOR EACH ROW EXECUTE FUNCTION touch_chunk();
CREATE VIEW source_sizes AS
  SELECT s.id, s.uri, count(c.id) AS chunks, sum(length(c.content)) AS chars
  FROM sources s LEFT JOIN chunks c ON c.source_id = s.id GROUP BY s.id, s.uri;
INSERT INTO sources
  SELECT g, 'file:///uploads/문서-' || g || '.pdf',
         jsonb_build_object('title', 'Ñoño 한국어 ' || g, 'pages', g % 37, 'lang', CASE WHEN g % 2 = 0 THEN 'ko' ELSE 'en' END),
         ARRAY['tag' || (g % 5), 'rag']
  FROM generate_series(1, 300) g;
INSERT INTO chunks (source_id, ord, content, raw)
  SELECT 1 + (g % 300), g, repeat('청크 chunk ' || g || ' ', 20), decode(md5(g::text) || '00ff', 'hex')
  FROM generate_series(1, 6000) g;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_reader;
-- Names are data: a schema, a table, columns and a role whose names break naive scripts.
CREATE ROLE "역할 ""q"" 'q' $(touch pwned)" NOLOGIN;
CREATE SCHEMA "스키마 ""q"" `b` \ ; $(touch pwned)";
CREATE TABLE "스키마 ""q"" `b` \ ; $(touch pwned)"."표 🚀 a.b
nl	tab" (id integer PRIMARY KEY, "열 ""값"" $(id); --" text);
INSERT INTO "스키마 ""q"" `b` \ ; $(touch pwned)"."표 🚀 a.b
nl	tab" VALUES (1, E'값 😀 \'q\' "q" `b` \\ $(touch pwned)\t\n'), (2, NULL);
GRANT USAGE ON SCHEMA "스키마 ""q"" `b` \ ; $(touch pwned)" TO "역할 ""q"" 'q' $(touch pwned)";
GRANT SELECT ON ALL TABLES IN SCHEMA "스키마 ""q"" `b` \ ; $(touch pwned)" TO "역할 ""q"" 'q' $(touch pwned)";

\connect analytics
CREATE TABLE daily_usage (day date PRIMARY KEY, requests integer NOT NULL, p95_ms numeric(8,2) NOT NULL);
INSERT INTO daily_usage
  SELECT DATE '2026-01-01' + g, 1000 + g * 7, 120 + (g % 40) * 1.25 FROM generate_series(0, 299) g;
GRANT SELECT ON daily_usage TO app_reader;
CREATE TABLE seed_info (version integer PRIMARY KEY, seeded_at timestamptz NOT NULL DEFAULT now());
INSERT INTO seed_info (version) VALUES (1);
