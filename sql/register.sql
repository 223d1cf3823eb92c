-- Registration from a client file (\lo_import + mms_register) and from a
-- server file (mms_import), and what the registry records for each fixture.
\getenv data MMS_TEST_DATA
\set flan :data '/flan_gated.gguf'
\lo_import :flan
\set flan_lo :LASTOID
SELECT mms_register('flan', :flan_lo, author => 'tests', description => 'gated-gelu, untied');
-- the registry stored its own copy: the caller's large object may go
SELECT weights <> :flan_lo AS own_copy,
       sha256 = encode(sha256(lo_get(weights)), 'hex') AS sha_of_stored,
       sha256 = encode(sha256(pg_read_binary_file(:'flan')), 'hex') AS sha_of_file,
       size_bytes = (pg_stat_file(:'flan')).size AS size_ok
FROM mms.models WHERE name = 'flan';
SELECT lo_unlink(:flan_lo);
SELECT lomowner::regrole AS weights_owner FROM pg_largeobject_metadata
WHERE oid = (SELECT weights FROM mms.models WHERE name = 'flan');

-- every fixture model, from the server's file system
SELECT f AS fixture, mms_import(f, :'data' || '/' || f || '.gguf', description => 'fixture ' || f)
FROM unnest(ARRAY['t5_relu_tied', 'depth_3_1', 'inner_48', 'flan_gated_f16',
                  'flan_gated_bf16', 'flan_gated_q8_0', 'flan_gated_q4_0']) f;

\x on
SELECT name, version, aliases, author, description, owner, arch, n_params, tensor_types,
       config, tokenizer, size, size_bytes
FROM mms.models ORDER BY name, version;
\x off
SELECT name, sha256 = encode(sha256(lo_get(weights)), 'hex') AS sha_ok,
       created_at > now() - interval '1 hour' AS recent
FROM mms.models ORDER BY name;

-- the GGUF metadata, vocabulary arrays summarized
SELECT jsonb_pretty(metadata) FROM mms.models WHERE name = 'flan';
SELECT name, metadata->>'general.file_type' AS file_type,
       metadata->'tokenizer.ggml.tokens' AS tokens
FROM mms.models ORDER BY name;

-- every value type; arrays up to 64 elements inline; text that is not UTF-8 made safe
SELECT mms_import('extra', :'data' || '/bad/extra_metadata.gguf');
SELECT key, value FROM mms.models, jsonb_each(metadata)
WHERE name = 'extra' AND key LIKE 'test.%' ORDER BY key;

-- config: the architecture's hyperparameters (the keys of arch t5, and
-- t5encoder's, which has no decoder)
SELECT mms_import('encoder', :'data' || '/t5encoder.gguf');
SELECT arch, array_agg(DISTINCT k ORDER BY k) AS config_keys
FROM mms.models, jsonb_object_keys(config) k GROUP BY arch ORDER BY arch;
SELECT name, config->'n_enc_layers' AS n_enc_layers, config->'n_dec_layers' AS n_dec_layers
FROM mms.models WHERE arch = 't5encoder';

-- clean up: nothing may remain
SELECT name, mms_unregister(name) FROM mms.models ORDER BY name;
SELECT count(*) AS models FROM mms.models;
SELECT count(*) AS weights_left FROM pg_largeobject_metadata;
