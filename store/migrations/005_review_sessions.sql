-- Review page logins are server-side sessions: the cookie holds a random session secret, of which
-- only the SHA-256 is stored. Logout deletes the row; expires_at ends it; revoking a reviewer
-- deletes their sessions and stops their token.
CREATE TABLE review_sessions (
    session_sha256    VARCHAR PRIMARY KEY,
    reviewer_id       VARCHAR NOT NULL,
    created_at        TIMESTAMP NOT NULL,
    expires_at        TIMESTAMP NOT NULL
);
ALTER TABLE reviewers ADD COLUMN revoked_at TIMESTAMP;
