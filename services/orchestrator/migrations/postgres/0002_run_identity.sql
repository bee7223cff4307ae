-- The identity a run was started with, so that the orchestrator acts for it
-- (on the LLM gateway and the tool runner) when it resumes the run after a
-- restart, with no incoming call to take it from.
-- Runs stored before this migration have NULLs: they resume as before, with
-- no forwarded identity.

-- The id of the credential the run was started with (an API key's id,
-- `jwt:<issuer>`, `none`), never the secret: which runs a key started.
ALTER TABLE runs ADD COLUMN credential_id TEXT;

-- The end user's identity as JSON: tenant, subject, scopes, allow-lists,
-- credential id and how they authenticated (never a secret; never the
-- service that forwarded it).
ALTER TABLE runs ADD COLUMN identity TEXT;
