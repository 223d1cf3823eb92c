/*
 * audit.c — rows of mms.audit_log: who changed the registry, how, and what
 * the change was. The registry functions call it inside their catalog session,
 * so the row is written as the registry owner in the caller's transaction and
 * commits or rolls back with the change. What a change is stays with them.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "mms.h"

/*
 * The detail object is built by jsonb_build_object from parameters, so every
 * value keeps its SQL type (numbers stay numbers, NULL becomes null) and no
 * value is ever spliced into the statement; only the placeholders vary with
 * the number of fields. The role is stored by name, not oid: the log outlives
 * the roles it names.
 */
void
mms_audit(const MmsCatalogSession *s, const char *action, const char *model,
		  const MmsAuditField *fields, int n_fields)
{
	int			nargs = 3 + 2 * n_fields;
	Oid		   *t = palloc(nargs * sizeof(Oid));
	Datum	   *v = palloc(nargs * sizeof(Datum));
	char	   *n = palloc(nargs + 1);
	StringInfoData sql;

	Assert(n_fields >= 0);
	memset(n, ' ', nargs);
	n[nargs] = '\0';
	t[0] = NAMEOID;
	v[0] = mms_role_name_datum(s->caller);
	t[1] = TEXTOID;
	v[1] = CStringGetTextDatum(action);
	t[2] = TEXTOID;
	v[2] = model ? CStringGetTextDatum(model) : (Datum) 0;
	n[2] = model ? ' ' : 'n';

	initStringInfo(&sql);
	appendStringInfoString(&sql, "INSERT INTO mms.audit_log (role, action, model, detail)"
						   " VALUES ($1, $2, $3, pg_catalog.jsonb_build_object(");
	for (int i = 0; i < n_fields; i++)
	{
		int			k = 3 + 2 * i;

		t[k] = TEXTOID;
		v[k] = CStringGetTextDatum(fields[i].key);
		t[k + 1] = fields[i].type;
		v[k + 1] = fields[i].value;
		n[k + 1] = fields[i].isnull ? 'n' : ' ';
		appendStringInfo(&sql, "%s$%d, $%d", i > 0 ? ", " : "", k + 1, k + 2);
	}
	appendStringInfoString(&sql, "))");
	mms_spi_exec(sql.data, nargs, t, v, n, SPI_OK_INSERT);
}
