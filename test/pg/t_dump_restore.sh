#!/bin/bash
# t_dump_restore.sh — pg_dump / pg_restore carry the registry: every model,
# version, alias, grant, pool setting, audit log row and API key arrives in a
# new database with the same sha256 (of the catalog and of the stored bytes),
# the same tokenization and the weights still unreadable to ordinary roles;
# registration continues afterwards (and is logged after the restored rows),
# and so do the keys (a restored key works, a revoked one does not).
# Run by test/pg/run.sh (PGHOST/PGPORT/PGUSER point at its cluster).
set -u
data=$MMS_TEST_DATA
work=$TMPDIR_PG/dump
mkdir -p "$work"
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; }
sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

src=mms_dump_src
dst=mms_dump_dst
dropdb --if-exists $src 2>/dev/null; dropdb --if-exists $dst 2>/dev/null
createdb $src || { bad "createdb $src"; exit 0; }

setup=$(cat <<SQL
CREATE EXTENSION mms;
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'regress_mms_dump_reader') THEN
        CREATE ROLE regress_mms_dump_reader;
    END IF;
END \$\$;
SELECT mms_import(f, '$data/' || f || '.gguf', author => 'dump test', description => 'fixture ' || f)
FROM unnest(ARRAY['t5_relu_tied', 'flan_gated', 'depth_3_1', 'inner_48', 'flan_gated_f16',
                  'flan_gated_bf16', 'flan_gated_q8_0', 'flan_gated_q4_0']) f;
SELECT mms_import('flan_gated', '$data/bad/other_tokenizer.gguf', '7');
SELECT mms_import('flan_gated', '$data/flan_gated_q8_0.gguf');
SELECT mms_set_alias('flan_gated', 'default', 1);
SELECT mms_set_alias('flan_gated', 'prod', 7);
SELECT mms_set_alias('t5_relu_tied', 'prod', 1);
SELECT mms_grant('flan_gated', 'regress_mms_dump_reader');
SELECT mms_grant('inner_48', 'public');
SELECT mms_configure('flan_gated', min_workers => 1, max_workers => 3, pinned => true, priority => 7);
SELECT mms_configure('inner_48', priority => -2);
\lo_import '$data/flan_gated.gguf'
SELECT mms_register('from_client', :LASTOID, NULL, 'a client', 'via lo_import');
SELECT lo_unlink(:LASTOID);
SQL
)
if sql -d $src >/dev/null <<<"$setup"; then ok "registry filled in $src"; else bad "registry setup in $src"; exit 0; fi
key_sql() { sql -d $src -c "SET client_min_messages = warning" -c "$1"; }
key=$(key_sql "SELECT mms_create_api_key('regress_mms_dump_reader', 'dump', now() + interval '1 year')")
revoked_key=$(key_sql "SELECT mms_create_api_key('regress_mms_dump_reader', 'revoked')")
key_sql "SELECT mms_revoke_api_key(id) FROM mms.api_keys WHERE label = 'revoked'" >/dev/null
key_sql "SELECT count(*) FROM mms.api_authenticate('$key')" >/dev/null   # sets last_used
[ "${#key}" = 68 ] && [ "${#revoked_key}" = 68 ] && ok "API keys created in $src" || bad "API keys in $src: '$key' '$revoked_key'"

# What must survive, as text.
snapshot() {
	local db=$1
	sql -d "$db" >"$work/$db.models" <<'SQL'
SELECT id, name, version, aliases, author, description, created_at, owner, arch, n_params,
       tensor_types, config, tokenizer, size, size_bytes, sha256, weights, metadata
FROM mms.models ORDER BY name, version;
SQL
	sql -d "$db" >"$work/$db.pool" <<'SQL'
SELECT * FROM mms.model_config ORDER BY model;
SQL
	sql -d "$db" >"$work/$db.stored" <<'SQL'
SELECT name, version, sha256 = encode(sha256(lo_get(weights)), 'hex') AS stored_bytes_match,
       (SELECT lomowner::regrole FROM pg_largeobject_metadata WHERE oid = weights) AS lo_owner
FROM mms.models ORDER BY name, version;
SQL
	sql -d "$db" >"$work/$db.grants" <<'SQL'
SELECT model, grantee, grantor, granted_at FROM mms.grants ORDER BY model, grantee;
SQL
	sql -d "$db" >"$work/$db.audit" <<'SQL'
SELECT id, at, role, action, model, detail FROM mms.audit_log ORDER BY id;
SQL
	sql -d "$db" >"$work/$db.keys" <<'SQL'
SELECT id, prefix, secret_sha256, role, role_name, label, created, expires, last_used, revoked
FROM mms.api_key_rows ORDER BY id;
SELECT * FROM mms.api_keys ORDER BY id;
SQL
	sql -d "$db" >"$work/$db.tokens" <<'SQL'
SELECT r, s, mms_tokenize(r, s)
FROM (SELECT name || ':' || version FROM mms.models
      UNION ALL SELECT 'flan_gated' UNION ALL SELECT 'flan_gated@prod'
      UNION ALL SELECT 't5_relu_tied@prod') refs(r),
     (VALUES ('Hello world, this is a test.'), ('  many   spaces  '),
             ('ｆｕｌｌｗｉｄｔｈ ① ﬁ café'), ('$100.00 on 2024-06-01'), ('')) t(s)
ORDER BY r, s;
SQL
	sql -d "$db" >"$work/$db.reader" <<'SQL'
SET ROLE regress_mms_dump_reader;
SELECT mms_tokenize('flan_gated', 'reader') IS NOT NULL;
SELECT mms_tokenize('inner_48', 'reader') IS NOT NULL;
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE sql; RETURN 'readable';
EXCEPTION WHEN insufficient_privilege THEN RETURN 'denied'; END $$;
SELECT name, version, pg_temp.try(format('SELECT lo_get(%s)', weights))
FROM mms.models ORDER BY name, version;
SQL
}
snapshot $src || bad "snapshot of $src"
if grep -q '^f$' "$work/$src.reader" || grep -q 'readable' "$work/$src.reader"; then
	bad "reader rights in $src are wrong"; cat "$work/$src.reader"
fi

if pg_dump -Fc -f "$work/mms.dump" $src; then ok "pg_dump -Fc $src"; else bad "pg_dump"; exit 0; fi
createdb $dst
if pg_restore --exit-on-error -d $dst "$work/mms.dump"; then ok "pg_restore into $dst"; else bad "pg_restore"; exit 0; fi
snapshot $dst || bad "snapshot of $dst"

n_models=$(sql -d $dst -c "SELECT count(*) FROM mms.models")
[ "$n_models" = 11 ] && ok "11 model versions restored" || bad "$n_models model versions restored, expected 11"
n_audit=$(sql -d $dst -c "SELECT count(*) FROM mms.audit_log")
[ "$n_audit" = 21 ] && ok "21 audit log rows restored" || bad "$n_audit audit log rows restored, expected 21"
for what in models stored grants pool audit tokens reader keys; do
	if cmp -s "$work/$src.$what" "$work/$dst.$what" && [ -s "$work/$dst.$what" ]; then
		ok "identical $what after restore ($(wc -l <"$work/$dst.$what") lines)"
	else
		bad "$what differ after restore"; diff "$work/$src.$what" "$work/$dst.$what" | head -20
	fi
done
if grep -q '|f|\|||' "$work/$dst.stored"; then bad "stored bytes or owners wrong"; cat "$work/$dst.stored"; else ok "stored bytes match sha256 in $dst"; fi

# The restored registry keeps working: the id sequence came along.
if out=$(sql -d $dst -c "SELECT mms_import('flan_gated', '$data/flan_gated.gguf'); SELECT max(id) = (SELECT id FROM mms.models WHERE name = 'flan_gated' AND version = 9) FROM mms.models; SELECT mms_unregister('from_client')") &&
	[ "$out" = "$(printf '9\nt\n1')" ]; then
	ok "register and unregister after restore"
else
	bad "register/unregister after restore: $out"
fi
out=$(sql -d $dst -c "SELECT string_agg(action || ':' || model, ',' ORDER BY id) FROM mms.audit_log
	WHERE id > (SELECT max(id) FROM mms.audit_log WHERE model = 'from_client' AND action = 'register')")
[ "$out" = "import:flan_gated,unregister:from_client" ] &&
	ok "the audit log continues after the restored rows" || bad "audit rows after restore: $out"
# the keys work where they were restored (the role the same), the revoked
# one does not, and new keys continue the ids
out=$(sql -d $dst -c "SELECT role FROM mms.api_authenticate('$key')" -c "SELECT count(*) FROM mms.api_authenticate('$revoked_key')")
[ "$out" = "regress_mms_dump_reader"$'\n'0 ] && ok "a restored API key works, a restored revoked one does not" ||
	bad "restored keys authenticate: $out"
out=$(sql -d $dst -c "SET client_min_messages = warning" -c "SELECT mms_create_api_key('regress_mms_dump_reader', 'new') IS NOT NULL" \
	-c "SELECT max(id) = (SELECT id FROM mms.api_keys WHERE label = 'new') AND count(*) = 3 FROM mms.api_keys")
[ "$out" = "t"$'\n't ] && ok "API keys created after restore continue the ids" || bad "a key after restore: $out"


# Roles missing where a dump is restored: every model survives (owned by the
# registry owner when its owner is missing), a grant to a missing role is
# skipped, and WARNINGs say which.
dst2=mms_dump_dst2
dropdb --if-exists $dst2 2>/dev/null
psql -X -q -d $src -v ON_ERROR_STOP=1 >/dev/null <<SQL || bad "setup of roles that go away"
CREATE ROLE regress_mms_dump_owner IN ROLE mms_admin;
CREATE ROLE regress_mms_dump_gone;
\lo_import '$data/flan_gated.gguf'
\set lo :LASTOID
ALTER LARGE OBJECT :lo OWNER TO regress_mms_dump_owner;
SET ROLE regress_mms_dump_owner;
SELECT mms_register('owned', :lo);
SELECT lo_unlink(:lo);
SELECT mms_grant('owned', 'regress_mms_dump_gone');
RESET ROLE;
SET client_min_messages = warning;
SELECT mms_create_api_key('regress_mms_dump_gone', 'gone');
SQL
pg_dump -Fc -f "$work/roles.dump" $src || bad "pg_dump with roles"
sql -d $src -c "REASSIGN OWNED BY regress_mms_dump_owner TO CURRENT_USER" -c "DROP OWNED BY regress_mms_dump_gone" \
	-c "DROP ROLE regress_mms_dump_owner" -c "DROP ROLE regress_mms_dump_gone" >/dev/null || bad "dropping the roles"
createdb $dst2
# -v: pg_restore shows the server's WARNINGs only when verbose
if pg_restore -v -d $dst2 "$work/roles.dump" 2>"$work/roles.err"; then
	ok "pg_restore succeeds with the roles of two rows missing"
else
	bad "pg_restore with missing roles failed: $(cat "$work/roles.err")"
fi
n_models=$(sql -d $dst2 -c "SELECT count(*) FROM mms.models")
owner=$(sql -d $dst2 -c "SELECT owner FROM mms.models WHERE name = 'owned'")
grants=$(sql -d $dst2 -c "SELECT string_agg(model || '>' || grantee, ',' ORDER BY model) FROM mms.grants")
[ "$n_models" = 12 ] && [ "$owner" = "$PGUSER" ] && ok "every model restored; a missing owner becomes the registry owner" ||
	bad "restored $n_models models (want 12), owner of 'owned' '$owner'"
[ "$grants" = "flan_gated>regress_mms_dump_reader,inner_48>public" ] &&
	grep -q 'grant of model "owned" to role "regress_mms_dump_gone" not restored' "$work/roles.err" &&
	grep -q 'owner "regress_mms_dump_owner" of model "owned:1" does not exist' "$work/roles.err" &&
	grep -q 'API key mms-[0-9a-f]\{8\}... of role "regress_mms_dump_gone" not restored' "$work/roles.err" &&
	ok "the grant and the API key of a missing role are skipped, and reported" ||
	bad "grants after restore: $grants; messages: $(cat "$work/roles.err")"
out=$(sql -d $dst2 -c "SELECT string_agg(action, ',' ORDER BY id) FROM mms.audit_log WHERE role = 'regress_mms_dump_owner'")
[ "$out" = register,grant ] && ok "audit rows of a role missing at restore keep its name" ||
	bad "audit rows of regress_mms_dump_owner in $dst2: $out"
[ "$(sql -d $dst2 -c "SELECT mms_tokenize('owned', 'hi') IS NOT NULL")" = t ] &&
	ok "the restored model serves" || bad "restored model does not tokenize"

dropdb $src; dropdb $dst; dropdb $dst2
psql -X -q -c "DROP ROLE IF EXISTS regress_mms_dump_reader"
