-- Owner accounts over HTTP: logout revokes one bearer token before its expiry.

-- Bearer tokens revoked before they expire (logout). Tokens are stateless HS256 JWTs, so a revoked one
-- stays valid by signature; every authenticated request checks its jti here (a primary-key probe).
-- Rows are useless once the token has expired anyway, so logout prunes rows past expires_at.
CREATE TABLE revoked_tokens (
    jti        uuid PRIMARY KEY,
    owner_id   uuid NOT NULL REFERENCES owners (id),
    -- The token's own expiry: after it the row can go.
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
-- Pruning expired rows.
CREATE INDEX revoked_tokens_expires_idx ON revoked_tokens (expires_at);
