-- Versions, aliases, every form of model reference, and unregistration.
\getenv data MMS_TEST_DATA
\set relu :data '/t5_relu_tied.gguf'
\set flan :data '/flan_gated.gguf'
SELECT count(*) AS los_before FROM pg_largeobject_metadata \gset

-- versions: next integer by default, or given (as text, a positive integer)
SELECT mms_import('m', :'relu');
SELECT mms_import('m', :'flan');
SELECT mms_import('m', :'relu', version => '5');
SELECT mms_import('m', :'flan');
SELECT mms_import('other', :'flan', '3', 'someone', 'another model');
SELECT name, version, arch, config->>'ffn_kind' AS ffn_kind FROM mms.models ORDER BY name, version;

-- a version that exists, and versions that are not positive integers
SELECT mms_import('m', :'flan', '5');
SELECT mms_import('m', :'flan', '0');
SELECT mms_import('m', :'flan', '-1');
SELECT mms_import('m', :'flan', '1.5');
SELECT mms_import('m', :'flan', 'v2');
SELECT mms_import('m', :'flan', '');
SELECT mms_import('m', :'flan', '99999999999');

-- names
SELECT mms_import('', :'flan');
SELECT mms_import('a:b', :'flan');
SELECT mms_import('a@b', :'flan');
SELECT mms_import('a b', :'flan');
SELECT mms_import(E'a\tb', :'flan');
SELECT mms_import(E'a\x01b', :'flan');
SELECT mms_import(repeat('x', 64), :'flan');
SELECT mms_import(NULL, :'flan');
SELECT mms_import('m', NULL);
SELECT mms_import(repeat('x', 63), :'flan');
SELECT mms_unregister(repeat('x', 63));

-- references: 'name' is the highest version while there is no default alias
CREATE FUNCTION pg_temp.show(ref text) RETURNS text LANGUAGE sql AS
$$ SELECT name || ':' || version FROM mms.models WHERE id = mms.resolve(ref) $$;
SELECT r AS ref, pg_temp.show(r) AS resolves_to
FROM unnest(ARRAY['m', 'm:1', 'm:2', 'm:5', 'other', 'other:3']) r;

-- aliases
SELECT mms_set_alias('m', 'default', 2);
SELECT mms_set_alias('m', 'prod', 5);
SELECT mms_set_alias('m', 'canary', 6);
SELECT r AS ref, pg_temp.show(r) AS resolves_to
FROM unnest(ARRAY['m', 'm@default', 'm@prod', 'm@canary', 'm:6']) r;
SELECT name, version, aliases FROM mms.models ORDER BY name, version;
-- moving an alias
SELECT mms_set_alias('m', 'prod', 1);
SELECT pg_temp.show('m@prod');
SELECT mms_drop_alias('m', 'canary');
SELECT name, version, aliases FROM mms.models WHERE name = 'm' ORDER BY version;
-- the same alias word for another model is independent
SELECT mms_set_alias('other', 'prod', 3);
SELECT pg_temp.show('other@prod'), pg_temp.show('m@prod');

-- alias errors
SELECT mms_set_alias('m', 'prod', 9);
SELECT mms_set_alias('nope', 'prod', 1);
SELECT mms_set_alias('m', 'a:b', 1);
SELECT mms_set_alias('m', '', 1);
SELECT mms_set_alias('m', 'x', 0);
SELECT mms_set_alias('m', 'x', NULL);
SELECT mms_drop_alias('m', 'canary');
SELECT mms_drop_alias('nope', 'canary');

-- references that match nothing, and malformed references
SELECT mms.resolve('nope');
SELECT mms.resolve('nope:1');
SELECT mms.resolve('nope@prod');
SELECT mms.resolve('m:7');
SELECT mms.resolve('m@staging');
SELECT mms.resolve('');
SELECT mms.resolve(':1');
SELECT mms.resolve('@prod');
SELECT mms.resolve('m:');
SELECT mms.resolve('m@');
SELECT mms.resolve('m:1:2');
SELECT mms.resolve('m:1@prod');
SELECT mms.resolve('m@a@b');
SELECT mms.resolve('m:x');
SELECT mms.resolve('m:0');
SELECT mms.resolve(NULL) IS NULL AS null_in_null_out;

-- unregister: the version a reference names, its aliases and its weights
SELECT weights AS w2 FROM mms.models WHERE name = 'm' AND version = 2 \gset
SELECT mms_unregister('m@default');
SELECT count(*) AS w2_left FROM pg_largeobject_metadata WHERE oid = :w2;
SELECT name, version, aliases FROM mms.models WHERE name = 'm' ORDER BY version;
SELECT pg_temp.show('m');
SELECT mms_unregister('m');
SELECT mms_unregister('m:5');
SELECT pg_temp.show('m'), pg_temp.show('m@prod');
SELECT mms_unregister('m:5');
SELECT mms_unregister('m@default');
SELECT mms_unregister('nope');
SELECT mms_unregister(NULL);
-- grants go with the last version of a name
SELECT mms_grant('m', 'public');
SELECT model, grantee FROM mms.grants;
SELECT mms_unregister('m');
SELECT model, grantee FROM mms.grants;
SELECT mms_unregister('other');
SELECT count(*) AS models FROM mms.models;
SELECT count(*) - :los_before AS weights_left FROM pg_largeobject_metadata;
