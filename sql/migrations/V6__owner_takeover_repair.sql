-- Owners that registration cannot take over. Before V6 the bootstrap owner (the owner of apps made by
-- `strata apps create` without --owner) was found by the fixed address bootstrap@strata.invalid:
-- whoever registered that address over HTTP before the first CLI app owned every CLI app made after.
-- Now it is one flagged row without email or password. Emails become unique in a normalised form
-- (trimmed, NFC, lowercased: src/accounts/email.rs), and a login can be disabled. Databases where
-- the address had been registered are repaired here, and each repair is recorded.

-- NULL is the bootstrap owner's email: the one value registration can never write.
ALTER TABLE owners ALTER COLUMN email DROP NOT NULL;

ALTER TABLE owners
    -- True for the one owner that CLI apps made without --owner belong to. It has no email and no
    -- password (owners_bootstrap_has_no_login), so no login reaches it and no registration claims it.
    ADD COLUMN bootstrap boolean NOT NULL DEFAULT false,
    -- The email trimmed, NFC, lowercased, NFC again: what is unique and what login compares. NULL for
    -- the bootstrap owner, and for owners registered before V6 whose normalised address equals an
    -- older owner's: both keep their logins (those log in by their address as typed, in any case,
    -- the pre-V6 rule), and the older one holds the address for new registrations (409).
    ADD COLUMN email_norm text,
    -- When this login was disabled (by the repair below): it cannot log in, its bearer tokens are
    -- refused; the row stays for the record.
    ADD COLUMN disabled_at timestamptz;

-- Repairs of a registered bootstrap address, one row each: the durable record. The server logs each
-- one once at startup (reported_at), as a warning.
CREATE TABLE owner_repairs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The login that had registered the bootstrap address; now disabled, without a password.
    disabled_owner_id  uuid NOT NULL REFERENCES owners (id),
    -- The new bootstrap owner that received its apps.
    bootstrap_owner_id uuid NOT NULL REFERENCES owners (id),
    -- Apps moved from the disabled login to the bootstrap owner.
    apps_moved         integer NOT NULL,
    -- Keys of those apps created since that registration: that login may have minted them. They are
    -- not revoked here (they may be the operator's own, live in customers' sites): review them.
    keys_to_review     integer NOT NULL,
    repaired_at        timestamptz NOT NULL DEFAULT now(),
    -- When a server first logged this repair; NULL until then.
    reported_at        timestamptz
);

-- The genuine bootstrap owner (the address without a password): flagged, its email dropped.
UPDATE owners SET bootstrap = true, email = NULL
 WHERE lower(email) = 'bootstrap@strata.invalid' AND password_hash IS NULL;

-- The attacked state (the address with a password: someone registered it): its apps go to a new
-- bootstrap owner, the login is disabled (and its password dropped), and the repair is recorded.
DO $$
DECLARE
    squatter   uuid;
    registered timestamptz;
    fresh      uuid := gen_random_uuid();
    moved      integer;
    review     integer;
BEGIN
    SELECT id, created_at INTO squatter, registered FROM owners
     WHERE lower(email) = 'bootstrap@strata.invalid' AND password_hash IS NOT NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO owners (id, email, name, role, bootstrap) VALUES (fresh, NULL, 'Bootstrap owner', 'admin', true);
    UPDATE apps SET owner_id = fresh WHERE owner_id = squatter;
    GET DIAGNOSTICS moved = ROW_COUNT;
    SELECT count(*) INTO review FROM api_keys k JOIN apps a ON a.id = k.app_id
     WHERE a.owner_id = fresh AND k.created_at >= registered;
    UPDATE owners SET disabled_at = now(), password_hash = NULL WHERE id = squatter;
    INSERT INTO owner_repairs (disabled_owner_id, bootstrap_owner_id, apps_moved, keys_to_review)
    VALUES (squatter, fresh, moved, review);
    RAISE WARNING 'strata V6: owner % had registered the bootstrap address; % apps moved to the new bootstrap owner %, that login disabled; review % keys made since',
        squatter, moved, fresh, review;
END
$$;

-- Normalised emails of existing owners; of those equal after normalisation, the oldest holds it.
-- lower() under the database's collation lowercases only ASCII in the C locale (the embedded
-- cluster's), while the server lowercases every script: the ICU root collation does too, so it is
-- used when the server has ICU (PostgreSQL's packages do).
DO $$
DECLARE
    coll text := CASE WHEN EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu')
                      THEN 'und-x-icu' ELSE 'default' END;
BEGIN
    EXECUTE format(
        'WITH normalised AS (
             SELECT id, normalize(lower(normalize(btrim(email), NFC) COLLATE %I), NFC) AS norm, created_at
               FROM owners WHERE NOT bootstrap
         ), ranked AS (
             SELECT id, norm, row_number() OVER (PARTITION BY norm ORDER BY created_at, id) AS n FROM normalised
         )
         UPDATE owners o SET email_norm = r.norm FROM ranked r WHERE o.id = r.id AND r.n = 1', coll);
END
$$;

-- The bootstrap owner cannot log in: no email to log in with, no password to check.
ALTER TABLE owners ADD CONSTRAINT owners_bootstrap_has_no_login
    CHECK (NOT bootstrap OR (email IS NULL AND email_norm IS NULL AND password_hash IS NULL));
-- Every other owner has an email.
ALTER TABLE owners ADD CONSTRAINT owners_email_present CHECK (bootstrap OR email IS NOT NULL);
-- One bootstrap owner (and the arbiter of its insert-if-absent).
CREATE UNIQUE INDEX owners_bootstrap_key ON owners (bootstrap) WHERE bootstrap;
-- One owner per normalised address: registration's conflict arbiter and login's lookup.
CREATE UNIQUE INDEX owners_email_norm_key ON owners (email_norm);
-- The pre-V6 rule (address in any case) stays a lookup, no longer unique: owners equal after
-- normalisation are found by the address they typed.
DROP INDEX owners_email_key;
CREATE INDEX owners_email_lower_idx ON owners (lower(email));
