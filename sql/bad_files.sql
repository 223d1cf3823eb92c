-- Every kind of bad model file is refused with a message naming the problem
-- and a fitting SQLSTATE, and a failed registration leaves no row and no
-- large object, in and out of explicit transactions.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\set VERBOSITY default
-- context lines would name this session's temporary schema
\set SHOW_CONTEXT never
SELECT count(*) AS los_before FROM pg_largeobject_metadata \gset
\set ON_ERROR_STOP 0

-- a client-side file each: \lo_import then mms_register
CREATE TEMP TABLE bad (kind text, lo oid);
\set f :data '/bad/empty.gguf'
\lo_import :f
INSERT INTO bad VALUES ('empty', :LASTOID);
\set f :data '/bad/truncated.gguf'
\lo_import :f
INSERT INTO bad VALUES ('truncated', :LASTOID);
\set f :data '/bad/not_gguf.gguf'
\lo_import :f
INSERT INTO bad VALUES ('not_gguf', :LASTOID);
\set f :data '/bad/wrong_version.gguf'
\lo_import :f
INSERT INTO bad VALUES ('wrong_version', :LASTOID);
\set f :data '/bad/bad_arch.gguf'
\lo_import :f
INSERT INTO bad VALUES ('bad_arch', :LASTOID);
\set f :data '/bad/missing_tensor.gguf'
\lo_import :f
INSERT INTO bad VALUES ('missing_tensor', :LASTOID);
\set f :data '/bad/wrong_shape.gguf'
\lo_import :f
INSERT INTO bad VALUES ('wrong_shape', :LASTOID);
\set f :data '/bad/bad_type.gguf'
\lo_import :f
INSERT INTO bad VALUES ('bad_type', :LASTOID);
\set f :data '/bad/no_tokenizer.gguf'
\lo_import :f
INSERT INTO bad VALUES ('no_tokenizer', :LASTOID);
\set f :data '/tok_nfkc.gguf'
\lo_import :f
INSERT INTO bad VALUES ('tokenizer_only', :LASTOID);

-- the exact messages
SELECT lo AS lo FROM bad WHERE kind = 'empty' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'truncated' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'not_gguf' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'wrong_version' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'bad_arch' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'missing_tensor' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'wrong_shape' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'bad_type' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'no_tokenizer' \gset
SELECT mms_register('bad', :lo);
SELECT lo AS lo FROM bad WHERE kind = 'tokenizer_only' \gset
SELECT mms_register('bad', :lo);

-- and their SQLSTATEs
CREATE FUNCTION pg_temp.sqlstate_of(lo oid) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mms_register('bad', lo);
    RETURN 'registered';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE;
END $$;
SELECT kind, pg_temp.sqlstate_of(lo) FROM bad ORDER BY kind;

-- a large object that does not exist, and a server file that does not
SELECT mms_register('bad', 4294967295);
\set VERBOSITY terse
SELECT mms_import('bad', '/nonexistent/model.gguf');
SELECT mms_import('bad', '/');
\set VERBOSITY default

-- the same checks for server files
SELECT mms_import('bad', :'data' || '/bad/empty.gguf');
SELECT mms_import('bad', :'data' || '/bad/wrong_shape.gguf');

-- the size cap (flan_gated.gguf has 722912 bytes)
SET mms.max_model_size = '512kB';
SELECT mms_import('big', :'flan');
\lo_import :flan
SELECT mms_register('big', :LASTOID);
SELECT lo_unlink(:LASTOID);
RESET mms.max_model_size;

SELECT count(*) AS models FROM mms.models;
SELECT lo_unlink(lo) FROM bad;
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;

-- a failure inside a transaction: the earlier registration rolls back too
BEGIN;
SELECT mms_import('good', :'flan');
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;
SELECT mms_import('bad', :'data' || '/bad/missing_tensor.gguf');
ROLLBACK;
SELECT count(*) AS models FROM mms.models;
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;

-- a failure after the weights' large object was created (here: the insert
-- into the catalog fails) leaves no large object behind
CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'catalog insert refused (weights already stored as large object: %)',
        (SELECT count(*) - current_setting('mms_test.los_before')::int FROM pg_largeobject_metadata);
END $$;
SELECT set_config('mms_test.los_before', :'los_before', false);
CREATE TRIGGER refuse BEFORE INSERT ON mms.model_versions
    FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse();
SELECT mms_import('good', :'flan');
SELECT count(*) AS models FROM mms.models;
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;
-- the same inside a transaction, rolled back to a savepoint
BEGIN;
SAVEPOINT before_import;
SELECT mms_import('good', :'flan');
ROLLBACK TO SAVEPOINT before_import;
SELECT current_user;
DROP TRIGGER refuse ON mms.model_versions;
SELECT mms_import('good', :'flan');
COMMIT;
SELECT name, version FROM mms.models;
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;

-- a duplicate version fails after validation; nothing is left of it
SELECT mms_import('good', :'flan', '1');
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;
SELECT mms_unregister('good');
SELECT count(*) - :los_before AS new_los FROM pg_largeobject_metadata;
