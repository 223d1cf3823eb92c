#!/bin/bash
# t_upgrade.sh — ALTER EXTENSION mms UPDATE keeps the registry: a 0.1.0
# database with models, an alias and a grant is updated to the current
# version (0.4.0, through 0.2.0 and 0.3.0); the models keep their ids,
# weights, aliases and grants, config holds the hyperparameters the 0.1.0
# columns held, and they serve what mms-run prints. The updated catalog equals
# a fresh install (so do ones updated from 0.2.0 and from 0.3.0), it survives
# pg_dump / pg_restore (pool settings, audit log and API keys included), and a
# 0.1.0 dump restored into a database created at 0.1.0 can be updated the same
# way. The comparison is of whatever
# both scripts create, not of a list of objects.
# Run by test/pg/run.sh (PGHOST/PGPORT/PGUSER point at its cluster).
set -u
data=$MMS_TEST_DATA
root=${MMS_ROOT:-$(pwd)}
work=$TMPDIR_PG/upgrade
mkdir -p "$work"
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
run_cli() { "$root/build/mms-run" --model "$data/$1.gguf" "${@:2}"; }

current=0.4.0           # mms.control's default_version
fresh=mms_up_fresh      # CREATE EXTENSION mms: $current
old=mms_up_old          # CREATE EXTENSION mms VERSION '0.1.0', then UPDATE
mid=mms_up_mid          # CREATE EXTENSION mms VERSION '0.2.0', then UPDATE
v3=mms_up_v3            # CREATE EXTENSION mms VERSION '0.3.0', then UPDATE
restored=mms_up_restored
old_dump=mms_up_old_dump
for db in $fresh $old $mid $v3 $restored $old_dump; do dropdb --if-exists $db 2>/dev/null; done
createdb $fresh && createdb $old || { bad "createdb"; exit 0; }
reader=regress_mms_up_reader
sql -d postgres -c "SET client_min_messages = warning" -c "DROP ROLE IF EXISTS $reader" -c "CREATE ROLE $reader" >/dev/null

# --- a 0.1.0 registry ---------------------------------------------------------------
# The library installed registers into a current catalog only, so the rows
# are written here as 0.1.0's mms_import wrote them: the weights in a large
# object owned by the registry owner, sha256 and size of the file, the
# hyperparameters in their own columns (values as 0.1.0's
# expected/register.out shows for these fixtures), and the rest (n_params,
# tensor types, GGUF metadata, which the library computes as 0.1.0 did) taken
# from a registration of the same file in the fresh database.
if ! sql -d $fresh >/dev/null <<SQL; then bad "registration in $fresh"; exit 0; fi
CREATE EXTENSION mms;
SELECT mms_import('flan', '$data/flan_gated.gguf');
SELECT mms_import('relu', '$data/t5_relu_tied.gguf');
SQL
[ "$(sql -d $fresh -c "SELECT extversion FROM pg_extension WHERE extname = 'mms'")" = $current ] &&
	ok "CREATE EXTENSION mms installs $current" || bad "CREATE EXTENSION mms does not install $current"
[ "$(sql -d $old -c "CREATE EXTENSION mms VERSION '0.1.0'" -c "SELECT extversion FROM pg_extension WHERE extname = 'mms'")" = 0.1.0 ] &&
	ok "CREATE EXTENSION mms VERSION '0.1.0'" || { bad "CREATE EXTENSION mms VERSION '0.1.0'"; exit 0; }
out=$(sql -d $old -c "SELECT path FROM pg_extension_update_paths('mms') WHERE source = '0.1.0' AND target = '$current'")
[ "$out" = "0.1.0--0.2.0--0.3.0--$current" ] && ok "the update path from 0.1.0 is $out" || bad "update path from 0.1.0: '$out'"

register_010() {  # name fixture d_model d_ff n_enc n_dec n_heads d_kv vocab context ffn_kind tied
	cat <<SQL
\\c $fresh
SELECT n_params, tensor_types, metadata::text AS meta FROM mms.models WHERE name = '$1' \\gset
\\c $old
\\lo_import '$data/$2.gguf'
\\set lo :LASTOID
INSERT INTO mms.model_versions (name, version, author, description, owner, owner_name, weights,
    size_bytes, sha256, arch, n_params, tensor_types, d_model, d_ff, n_enc_layers, n_dec_layers,
    n_heads, d_kv, vocab_size, context_length, ffn_kind, tied_embeddings, tokenizer, metadata)
SELECT '$1', 1, 'upgrade test', 'registered by 0.1.0', current_user::regrole, current_user, :lo,
       length(b), encode(sha256(b), 'hex'), 't5', :n_params, :'tensor_types',
       $3, $4, $5, $6, $7, $8, $9, ${10}, '${11}', ${12}, 't5', :'meta'::jsonb
FROM lo_get(:lo) b;
SQL
}
if { register_010 flan flan_gated 32 64 2 2 4 8 1008 512 gated-gelu false
	register_010 relu t5_relu_tied 32 64 2 2 4 8 1000 512 relu true; } | sql >/dev/null; then
	ok "0.1.0 registry filled in $old"
else
	bad "0.1.0 registrations in $old"; exit 0
fi
# The library refuses a 0.1.0 catalog, with a hint.
out=$(sql -d $old -c "SELECT mms_set_alias('flan', 'prod', 1)" 2>&1)
if grep -q 'older than the installed mms library' <<<"$out" &&
	grep -q 'HINT:  Run ALTER EXTENSION mms UPDATE' <<<"$out"; then
	ok "before the update, the library asks for ALTER EXTENSION mms UPDATE"
else
	bad "a call on a 0.1.0 catalog: $out"
fi
# so the alias and the grant are written as 0.1.0 wrote them, too
sql -d $old >/dev/null <<SQL || bad "0.1.0 alias and grant"
INSERT INTO mms.model_aliases (name, alias, version) VALUES ('flan', 'prod', 1);
INSERT INTO mms.model_grants (name, grantee, grantee_name, grantor, grantor_name)
VALUES ('flan', '$reader'::regrole, '$reader', current_user::regrole, current_user);
SQL
before=$(sql -d $old -c "SELECT name, id, weights, sha256, aliases, owner FROM mms.models ORDER BY name")
pg_dump -Fc -f "$work/old.dump" $old || bad "pg_dump of the 0.1.0 database"

# --- the update -------------------------------------------------------------------
if out=$(sql -d $old -c "ALTER EXTENSION mms UPDATE" -c "SELECT extversion FROM pg_extension WHERE extname = 'mms'" 2>&1) &&
	[ "$out" = $current ]; then
	ok "ALTER EXTENSION mms UPDATE: 0.1.0 -> $current"
else
	bad "ALTER EXTENSION mms UPDATE: $out"; exit 0
fi
after=$(sql -d $old -c "SELECT name, id, weights, sha256, aliases, owner FROM mms.models ORDER BY name")
[ "$after" = "$before" ] && ok "ids, weights, sha256, aliases and owners kept" || bad "before: $before; after: $after"
out=$(sql -d $old -c "SELECT bool_and(sha256 = encode(sha256(lo_get(weights)), 'hex'))
	AND bool_and((SELECT lomowner FROM pg_largeobject_metadata WHERE oid = weights) = current_user::regrole)
	FROM mms.models")
[ "$out" = t ] && ok "stored weights intact and owned by the registry owner" || bad "stored weights: $out"
[ "$(sql -d $old -c "SELECT model || '>' || grantee FROM mms.grants")" = "flan>$reader" ] &&
	[ "$(sql -d $old -c "SELECT mms.resolve('flan@prod') = id FROM mms.models WHERE name = 'flan'")" = t ] &&
	ok "grant and alias kept" || bad "grant or alias lost"
want_flan='{"d_ff": 64, "d_kv": 8, "d_model": 32, "n_heads": 4, "ffn_kind": "gated-gelu", "vocab_size": 1008, "n_dec_layers": 2, "n_enc_layers": 2, "context_length": 512, "tied_embeddings": false}'
want_relu='{"d_ff": 64, "d_kv": 8, "d_model": 32, "n_heads": 4, "ffn_kind": "relu", "vocab_size": 1000, "n_dec_layers": 2, "n_enc_layers": 2, "context_length": 512, "tied_embeddings": true}'
got=$(sql -d $old -c "SELECT config FROM mms.models ORDER BY name")
[ "$got" = "$want_flan"$'\n'"$want_relu" ] && ok "config holds the 0.1.0 hyperparameters" || bad "config: $got"
[ "$got" = "$(sql -d $fresh -c "SELECT config FROM mms.models ORDER BY name")" ] &&
	ok "config equals what a $current registration of the same files writes" || bad "config differs from a fresh registration"
out=$(sql -d $old -c "SELECT count(*) FROM pg_attribute WHERE attrelid = 'mms.model_versions'::regclass
	AND attname IN ('d_model', 'ffn_kind', 'tied_embeddings') AND NOT attisdropped")
[ "$out" = 0 ] && ok "the hyperparameter columns are gone" || bad "$out hyperparameter columns left"

# --- serving after the update, as the grantee ------------------------------------------
want=$(run_cli flan_gated "an upgraded model")
got=$(sql -d $old -c "SET ROLE $reader" -c "SELECT mms_generate('flan@prod', 'an upgraded model')" 2>&1)
[ "$got" = "$want" ] && ok "mms_generate on the upgraded model = mms-run, for the grantee" || bad "mms_generate: '$got', mms-run: '$want'"
want=$(run_cli t5_relu_tied "x" "yz")
got=$(sql -d $old -c "SELECT r FROM unnest(mms_generate_batch('relu', ARRAY['x', 'yz'])) r" 2>&1)
[ "$got" = "$want" ] && ok "mms_generate_batch on the upgraded model = mms-run" || bad "mms_generate_batch: '$got', mms-run: '$want'"
out=$(sql -d $old -c "SELECT mms_generate('relu', ARRAY['x'])" 2>&1)
grep -q 'function mms_generate(unknown, text\[\]) does not exist' <<<"$out" &&
	ok "the text[] form of mms_generate is gone" || bad "mms_generate(text, text[]): $out"

# --- a 0.2.0 registry: refused as well, then updated in one step ------------------------
if createdb $mid &&
	[ "$(sql -d $mid -c "CREATE EXTENSION mms VERSION '0.2.0'" -c "SELECT extversion FROM pg_extension WHERE extname = 'mms'")" = 0.2.0 ]; then
	ok "CREATE EXTENSION mms VERSION '0.2.0'"
else
	bad "CREATE EXTENSION mms VERSION '0.2.0'"
fi
out=$(sql -d $mid -c "SELECT mms_import('flan', '$data/flan_gated.gguf')" 2>&1)
if grep -q 'older than the installed mms library' <<<"$out" &&
	grep -q 'HINT:  Run ALTER EXTENSION mms UPDATE' <<<"$out"; then
	ok "a 0.2.0 catalog is refused with the same hint"
else
	bad "a call on a 0.2.0 catalog: $out"
fi
out=$(sql -d $mid -c "ALTER EXTENSION mms UPDATE" -c "SELECT extversion FROM pg_extension WHERE extname = 'mms'" \
	-c "SELECT mms_import('flan', '$data/flan_gated.gguf')" 2>&1)
[ "$out" = "$current"$'\n'1 ] && ok "ALTER EXTENSION mms UPDATE: 0.2.0 -> $current, then registration works" ||
	bad "update from 0.2.0: $out"

# --- a 0.3.0 registry with a quota: refused too, then updated -----------------------------
# (0.3.0's library wrote rows the way the current one does: a quota row
# written by hand stands for them)
if createdb $v3 &&
	[ "$(sql -d $v3 -c "CREATE EXTENSION mms VERSION '0.3.0'" -c "SELECT extversion FROM pg_extension WHERE extname = 'mms'")" = 0.3.0 ]; then
	ok "CREATE EXTENSION mms VERSION '0.3.0'"
else
	bad "CREATE EXTENSION mms VERSION '0.3.0'"
fi
out=$(sql -d $v3 -c "SELECT mms_import('flan', '$data/flan_gated.gguf')" 2>&1)
grep -q 'older than the installed mms library' <<<"$out" && ok "a 0.3.0 catalog is refused with the same hint" ||
	bad "a call on a 0.3.0 catalog: $out"
sql -d $v3 -c "INSERT INTO mms.role_quotas (role, role_name, requests_per_minute) VALUES ('$reader'::regrole, '$reader', 10)" >/dev/null ||
	bad "a 0.3.0 quota row"
# the library keeps an old registry's roles consistent: DROP ROLE waits for its quota
out=$(sql -d $v3 -c "DROP ROLE $reader" 2>&1)
grep -q 'quota on every model' <<<"$out" && ok "DROP ROLE sees the quota of a 0.3.0 registry" || bad "DROP ROLE in a 0.3.0 registry: $out"
out=$(sql -d $v3 -c "SET client_min_messages = warning" -c "ALTER EXTENSION mms UPDATE" \
	-c "SELECT extversion FROM pg_extension WHERE extname = 'mms'" \
	-c "SELECT requests_per_minute FROM mms.quotas WHERE role = '$reader'" \
	-c "SELECT mms_create_api_key('$reader') ~ '^mms-' AS key" 2>&1)
[ "$out" = "$current"$'\n'10$'\n't ] && ok "ALTER EXTENSION mms UPDATE: 0.3.0 -> $current keeps quotas, and API keys work" ||
	bad "update from 0.3.0: $out"
sql -d $v3 -c "DROP OWNED BY $reader" >/dev/null

# --- the updated catalog is the one a fresh install creates -------------------------------
# Every member object's definition, columns (their privileges and comments too),
# constraints, indexes, triggers, policies, sequences, types, comments,
# privileges (initial ones too) and pg_dump registrations: whatever the
# install and update scripts create is compared, with no list of objects.
catalog() {
	sql -d "$1" <<'SQL'
CREATE TEMP VIEW members AS
SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'mms';
SELECT 'member', pg_describe_object(classid, objid, 0) FROM members ORDER BY 2;
SELECT 'column', c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attacl,
       col_description(c.oid, a.attnum)
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
WHERE c.relnamespace = 'mms'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum;
SELECT 'constraint', conrelid::regclass, conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'mms'::regnamespace ORDER BY 2, 3;
SELECT 'index', indexrelid::regclass, pg_get_indexdef(indexrelid) FROM pg_index
WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'mms'::regnamespace) ORDER BY 2;
SELECT 'trigger', pg_get_triggerdef(oid) FROM pg_trigger
WHERE tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'mms'::regnamespace) AND NOT tgisinternal
ORDER BY 2;
SELECT 'view', c.relname, pg_get_viewdef(c.oid), obj_description(c.oid, 'pg_class')
FROM pg_class c WHERE c.relnamespace = 'mms'::regnamespace AND c.relkind = 'v' ORDER BY 2;
SELECT 'acl', c.relname, c.relacl FROM pg_class c WHERE c.relnamespace = 'mms'::regnamespace ORDER BY 2;
SELECT 'relation', c.relname, c.relkind, c.relpersistence, c.reloptions, c.relrowsecurity,
       c.relforcerowsecurity, obj_description(c.oid, 'pg_class')
FROM pg_class c WHERE c.relnamespace = 'mms'::regnamespace ORDER BY 2;
SELECT 'sequence', s.seqrelid::regclass, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
       s.seqmax, s.seqmin, s.seqcache, s.seqcycle
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
WHERE c.relnamespace = 'mms'::regnamespace ORDER BY 2::text;
SELECT 'policy', p.polrelid::regclass, p.polname, p.polcmd, p.polpermissive,
       p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
WHERE c.relnamespace = 'mms'::regnamespace ORDER BY 2::text, 3;
SELECT 'type', t.oid::regtype, t.typtype, t.typacl,
       (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
       (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
        FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
ORDER BY t.oid::regtype::text;
SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
FROM pg_description d JOIN members m ON m.classid = d.classoid AND m.objid = d.objoid ORDER BY 2;
SELECT 'function', p.oid::regprocedure, pg_get_functiondef(p.oid), p.proacl,
       obj_description(p.oid, 'pg_proc')
FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
ORDER BY p.oid::regprocedure::text;
SELECT 'init_privs', pg_describe_object(i.classoid, i.objoid, i.objsubid), i.privtype, i.initprivs
FROM pg_init_privs i JOIN members m ON m.classid = i.classoid AND m.objid = i.objoid ORDER BY 2;
SELECT 'dumped', c::regclass, e.extcondition[i]
FROM pg_extension e, unnest(e.extconfig) WITH ORDINALITY u(c, i) WHERE e.extname = 'mms'
ORDER BY c::regclass::text;
SQL
}
catalog $fresh >"$work/fresh.catalog" || bad "catalog query in $fresh"
for db in $old $mid $v3; do
	catalog $db >"$work/$db.catalog" || bad "catalog query in $db"
	if cmp -s "$work/fresh.catalog" "$work/$db.catalog" && [ -s "$work/$db.catalog" ]; then
		ok "the catalog of $db equals a fresh $current install ($(wc -l <"$work/$db.catalog") lines)"
	else
		bad "the catalog of $db differs from a fresh install"; diff "$work/fresh.catalog" "$work/$db.catalog" | head -30
	fi
done

# --- pg_dump / pg_restore of the updated database -------------------------------------
sql -d $old >/dev/null <<'SQL' || bad "mms_configure after the update"
SELECT mms_configure('flan', min_workers => 1, max_workers => 2, pinned => true, priority => 10);
SELECT mms_configure('relu', priority => -5);
SQL
sql -d $old -c "SET client_min_messages = warning" -c "SELECT mms_create_api_key('$reader', 'upgrade')" >/dev/null ||
	bad "mms_create_api_key after the update"
snapshot() {
	sql -d "$1" -c "SELECT id, name, version, aliases, owner, config, sha256, weights, metadata FROM mms.models ORDER BY name" \
		-c "SELECT * FROM mms.model_config ORDER BY model" -c "SELECT model, grantee FROM mms.grants ORDER BY 1, 2" \
		-c "SELECT id, at, role, action, model, detail FROM mms.audit_log ORDER BY id" \
		-c "SELECT id, prefix, secret_sha256, role_name, label, created, expires, revoked FROM mms.api_key_rows ORDER BY id"
}
snapshot $old >"$work/old.snap"
if pg_dump -Fc -f "$work/updated.dump" $old && createdb $restored &&
	pg_restore --exit-on-error -d $restored "$work/updated.dump"; then
	ok "pg_dump / pg_restore of the updated database"
else
	bad "pg_dump / pg_restore of the updated database"
fi
snapshot $restored >"$work/restored.snap"
if cmp -s "$work/old.snap" "$work/restored.snap" && grep -q '^flan|1|2|t|10$' "$work/restored.snap" &&
	[ "$(grep -c '|configure|' "$work/restored.snap")" = 2 ] && grep -q "|$reader|upgrade|" "$work/restored.snap"; then
	ok "models, pool settings, grants, audit log and API keys identical after restore"
else
	bad "restore differs"; diff "$work/old.snap" "$work/restored.snap" | head -20
fi
want=$(run_cli flan_gated "restored")
got=$(sql -d $restored -c "SELECT mms_generate('flan', 'restored')" 2>&1)
[ "$got" = "$want" ] && ok "the restored model serves" || bad "restored mms_generate: '$got', want '$want'"

# --- a 0.1.0 dump, restored where the extension was created at 0.1.0 --------------------
# pg_restore's CREATE EXTENSION IF NOT EXISTS keeps the version found there.
createdb $old_dump && sql -d $old_dump -c "CREATE EXTENSION mms VERSION '0.1.0'" >/dev/null &&
	pg_restore --exit-on-error -d $old_dump "$work/old.dump" 2>"$work/old_dump.err" &&
	sql -d $old_dump -c "ALTER EXTENSION mms UPDATE" >/dev/null
got=$(sql -d $old_dump -c "SELECT name, id, weights, sha256, aliases, owner FROM mms.models ORDER BY name" 2>&1)
[ "$got" = "$before" ] && [ "$(sql -d $old_dump -c "SELECT config FROM mms.models WHERE name = 'flan'")" = "$want_flan" ] &&
	ok "a 0.1.0 dump restored at 0.1.0 and updated keeps its models" ||
	bad "0.1.0 dump: $got $(cat "$work/old_dump.err")"

for db in $fresh $old $mid $v3 $restored $old_dump; do dropdb $db; done
sql -d postgres -c "DROP ROLE $reader" >/dev/null
