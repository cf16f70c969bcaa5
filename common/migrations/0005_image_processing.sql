-- The process function's work (issue 16): one job per distinct original and recipe version, the
-- variants it made (blobs in the CAS, counted as references like records), and the outbox the
-- upload's own transaction writes to, so no upload is left unprocessed.
CREATE TABLE image_jobs (
    sha256          text NOT NULL,
    recipe          integer NOT NULL,
    content_type    text NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_until     timestamptz,
    reason          text,
    width           integer,
    height          integer,
    blurhash        text,
    dominant_color  text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (sha256, recipe)
);
CREATE INDEX image_jobs_due ON image_jobs (next_attempt_at) WHERE state = 'pending';

CREATE TABLE image_variants (
    sha256          text NOT NULL,
    recipe          integer NOT NULL,
    format          text NOT NULL,
    width           integer NOT NULL,
    height          integer NOT NULL,
    size            bigint NOT NULL,
    variant_sha256  text NOT NULL,
    PRIMARY KEY (sha256, recipe, format, width),
    FOREIGN KEY (sha256, recipe) REFERENCES image_jobs ON DELETE CASCADE
);
CREATE INDEX image_variants_blob ON image_variants (variant_sha256);

CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    type       text NOT NULL,
    subject    text NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
