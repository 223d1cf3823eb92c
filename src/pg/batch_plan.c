/*
 * batch_plan.c — the planner half of transparent batching (batch.h): after
 * the standard planner, every plan node that projects rows (scans, joins, a
 * Result over a child) and whose target list calls mms_generate or mms_score
 * with a model and options that do not vary per row gets an MmsBatch node
 * over it, which sends the calls of many rows at once (batch_exec.c).
 *
 * The finished plan is rewritten rather than a path added: the calls sit in
 * target lists that the planner builds last, and a rewrite of the final
 * plan changes nothing the planner chose (join order, sort placement) and
 * nothing of the rows' order. The rewritten nodes are in their final form
 * (Vars as OUTER_VAR and INDEX_VAR, as set_plan_references leaves them).
 *
 * Left alone, so that no call runs that would not have run, or in another
 * order: calls inside CASE, COALESCE, AND, OR and row comparisons (they may
 * not be evaluated), inside aggregates and window functions, in WHERE and
 * join conditions, in RETURNING, in VALUES lists, in subplans' expressions,
 * calls whose model or options vary per row, and the inner side of a merge
 * join (which must mark and restore). A single-row Result is not worth a
 * batch.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "optimizer/planmain.h"
#include "optimizer/planner.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/syscache.h"

#include "batch.h"
#include "serve.h"

bool		mms_transparent_batching = true;
int			mms_batch_rows = 64;

static planner_hook_type prev_planner = NULL;

/* ---- which functions are ours -------------------------------------------- */

/* funcid -> kind (0: not ours), forgotten when pg_proc changes */
#define KIND_CACHE 32
static struct
{
	Oid			funcid;
	int			kind;
}			kind_cache[KIND_CACHE];
static int	kind_cache_next = 0;

static void
forget_kinds(Datum arg, int cacheid, uint32 hashvalue)
{
	memset(kind_cache, 0, sizeof(kind_cache));
}

/*
 * mms_generate(text, text, jsonb) and mms_score(text, text, text) of this
 * library, whatever schema or name they were installed under: C functions
 * whose symbol and argument types are those.
 */
static int
lookup_kind(Oid funcid)
{
	HeapTuple	tup;
	Form_pg_proc p;
	int			kind = 0;
	Datum		d;
	bool		isnull;
	char	   *bin;
	char	   *src;
	Oid			third;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (!HeapTupleIsValid(tup))
		return 0;
	p = (Form_pg_proc) GETSTRUCT(tup);
	/*
	 * SECURITY DEFINER and SET clauses change what a call does (its role,
	 * its settings), and a function marked parallel safe may run in parallel
	 * workers: such declarations of the symbols are called as written.
	 */
	if (p->prolang != ClanguageId || p->proretset || p->pronargs != 3 ||
		p->proargtypes.values[0] != TEXTOID || p->proargtypes.values[1] != TEXTOID ||
		p->prosecdef || p->proparallel != PROPARALLEL_UNSAFE ||
		!heap_attisnull(tup, Anum_pg_proc_proconfig, NULL))
	{
		ReleaseSysCache(tup);
		return 0;
	}
	third = p->proargtypes.values[2];
	d = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_probin, &isnull);
	bin = isnull ? NULL : TextDatumGetCString(d);
	d = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &isnull);
	src = isnull ? NULL : TextDatumGetCString(d);
	if (bin != NULL && src != NULL &&
		(strcmp(bin, "mms") == 0 || (strlen(bin) > 4 && strcmp(bin + strlen(bin) - 4, "/mms") == 0)))
	{
		if (strcmp(src, "mms_generate") == 0 && third == JSONBOID && p->prorettype == TEXTOID)
			kind = MMS_BATCH_GENERATE;
		else if (strcmp(src, "mms_score") == 0 && third == TEXTOID && p->prorettype == FLOAT8OID)
			kind = MMS_BATCH_SCORE;
	}
	ReleaseSysCache(tup);
	return kind;
}

static int
call_kind(Oid funcid)
{
	int			kind;

	if (funcid < FirstNormalObjectId)
		return 0;
	for (int i = 0; i < KIND_CACHE; i++)
		if (kind_cache[i].funcid == funcid)
			return kind_cache[i].kind;
	kind = lookup_kind(funcid);
	kind_cache[kind_cache_next].funcid = funcid;
	kind_cache[kind_cache_next].kind = kind;
	kind_cache_next = (kind_cache_next + 1) % KIND_CACHE;
	return kind;
}

/* ---- which calls are batched --------------------------------------------- */

/* Does the expression's value change from row to row (or group to group)? */
static bool
varies_per_row(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var) || IsA(node, Aggref) || IsA(node, WindowFunc) || IsA(node, GroupingFunc) ||
		IsA(node, SubPlan) || IsA(node, AlternativeSubPlan) || IsA(node, PlaceHolderVar) ||
		IsA(node, CurrentOfExpr))
		return true;
	return expression_tree_walker(node, varies_per_row, context);
}

static bool
row_constant(Node *node)
{
	return !varies_per_row(node, NULL) && !contain_volatile_functions(node);
}

/*
 * Nodes whose operands may be left unevaluated (or are evaluated elsewhere,
 * per group, per window or by a subplan), and nodes whose operands read a
 * value the node itself sets (CaseTestExpr: an assignment's old value, an
 * array element being coerced), which cannot move to another plan node: a
 * call under them is not batched.
 */
static bool
guards_operands(Node *node)
{
	switch (nodeTag(node))
	{
		case T_CaseExpr:
		case T_CoalesceExpr:
		case T_RowCompareExpr:
		case T_SubscriptingRef:	/* subscripts of a NULL container are not evaluated */
		case T_FieldStore:
		case T_ArrayCoerceExpr:
		case T_SubPlan:
		case T_AlternativeSubPlan:
		case T_Aggref:
		case T_WindowFunc:
		case T_GroupingFunc:
			return true;
		case T_BoolExpr:
			return ((BoolExpr *) node)->boolop != NOT_EXPR;
		default:
			return false;
	}
}

static bool contains_batchable(Node *node, void *context);

/* Its kind if node is a call to batch, else 0. */
static int
batchable_kind(Node *node)
{
	FuncExpr   *f;
	int			kind;

	if (!IsA(node, FuncExpr))
		return 0;
	f = (FuncExpr *) node;
	if (list_length(f->args) != 3 || (kind = call_kind(f->funcid)) == 0)
		return 0;
	if (!row_constant(linitial(f->args)))
		return 0;
	if (kind == MMS_BATCH_GENERATE && !row_constant(lthird(f->args)))
		return 0;
	/* a call on another call's result: the inner one is batched, this one runs per row */
	if (contains_batchable(lsecond(f->args), NULL) ||
		(kind == MMS_BATCH_SCORE && contains_batchable(lthird(f->args), NULL)))
		return 0;
	return kind;
}

static bool
contains_batchable(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (batchable_kind(node) != 0)
		return true;
	if (guards_operands(node))
		return false;
	return expression_tree_walker(node, contains_batchable, context);
}

/* ---- the rewrite of one node --------------------------------------------- */

typedef struct Rewrite
{
	List	   *child_tlist;	/* the node's new target list */
	Bitmapset  *placeholders;	/* its columns that only keep positions */
	List	   *calls;			/* IntList: kind, input column, target column per call */
	List	   *exprs;			/* model and options per call */
	List	   *results;		/* per call, the call over the child's columns (EXPLAIN) */
	List	   *result_vars;	/* the Vars that read the results, renumbered at the end */
} Rewrite;

static Var *
var_like(int varno, AttrNumber att, Node *like)
{
	return makeVar(varno, att, exprType(like), exprTypmod(like), exprCollation(like), 0);
}

/* A column of the child computing e (an existing one if it computes the same); its number. */
static AttrNumber
push_down(Rewrite *rw, Expr *e)
{
	TargetEntry *te;
	ListCell   *lc;

	if (!contain_volatile_functions((Node *) e))
		foreach(lc, rw->child_tlist)
		{
			te = lfirst(lc);
			if (!bms_is_member(te->resno, rw->placeholders) && equal(te->expr, e))
				return te->resno;
		}
	te = makeTargetEntry(copyObject(e), list_length(rw->child_tlist) + 1, NULL, true);
	rw->child_tlist = lappend(rw->child_tlist, te);
	return te->resno;
}

static Node *
batch_call(FuncExpr *f, int kind, Rewrite *rw)
{
	Node	   *model = linitial(f->args);
	Node	   *input = lsecond(f->args);
	Node	   *third = lthird(f->args);
	AttrNumber in_att = push_down(rw, (Expr *) input);
	AttrNumber tgt_att = kind == MMS_BATCH_SCORE ? push_down(rw, (Expr *) third) : 0;
	FuncExpr   *shown = copyObject(f);
	Var		   *v;

	rw->calls = lappend_int(lappend_int(lappend_int(lappend_int(rw->calls, kind), in_att), tgt_att),
							(int) f->funcid);
	rw->exprs = lappend(rw->exprs, copyObject(model));
	rw->exprs = lappend(rw->exprs, kind == MMS_BATCH_GENERATE ? copyObject(third) :
						(Node *) makeNullConst(TEXTOID, -1, InvalidOid));
	shown->args = list_make3(copyObject(model), var_like(OUTER_VAR, in_att, input),
							 kind == MMS_BATCH_SCORE ? (Node *) var_like(OUTER_VAR, tgt_att, third) :
							 copyObject(third));
	rw->results = lappend(rw->results, shown);
	/* numbered after the child's columns once their count is known */
	v = var_like(INDEX_VAR, list_length(rw->results), (Node *) f);
	rw->result_vars = lappend(rw->result_vars, v);
	return (Node *) v;
}

/*
 * The expression over the MmsBatch scan tuple: calls become their results,
 * and each largest part without a call becomes a column of the child, which
 * computes it as it did before.
 */
static Node *
lift(Node *node, Rewrite *rw)
{
	int			kind;

	if (node == NULL)
		return NULL;
	if (IsA(node, List))
		return expression_tree_mutator(node, lift, rw);
	if ((kind = batchable_kind(node)) != 0)
		return batch_call((FuncExpr *) node, kind, rw);
	if (!contains_batchable(node, NULL))
	{
		if (IsA(node, Const))
			return copyObject(node);
		return (Node *) var_like(INDEX_VAR, push_down(rw, (Expr *) node), node);
	}
	return expression_tree_mutator(node, lift, rw);
}

typedef struct Walk
{
	List	   *added;			/* the MmsBatch nodes put in, numbered at the end */
} Walk;

static bool
projects_rows(Plan *plan)
{
	switch (nodeTag(plan))
	{
		case T_SeqScan:
		case T_SampleScan:
		case T_IndexScan:
		case T_IndexOnlyScan:
		case T_BitmapHeapScan:
		case T_TidScan:
		case T_TidRangeScan:
		case T_SubqueryScan:
		case T_FunctionScan:
		case T_TableFuncScan:
		case T_ValuesScan:
		case T_CteScan:
		case T_NamedTuplestoreScan:
		case T_WorkTableScan:
		case T_ForeignScan:
		case T_NestLoop:
		case T_MergeJoin:
		case T_HashJoin:
			return true;
		case T_Result:
			return plan->lefttree != NULL;
		default:
			return false;
	}
}

/* A LIMIT right above: its offset plus count bound the rows the node reads. */
static void
add_bound(Plan *parent, Plan *plan, List **exprs, bool *has_bound)
{
	Limit	   *l = (Limit *) parent;

	*has_bound = false;
	if (parent == NULL || !IsA(parent, Limit) || parent->lefttree != plan ||
		l->limitOption != LIMIT_OPTION_COUNT || l->limitCount == NULL ||
		!row_constant(l->limitCount) || (l->limitOffset && !row_constant(l->limitOffset)))
		return;
	*exprs = lappend(*exprs, l->limitOffset ? copyObject(l->limitOffset) :
					 (Node *) makeConst(INT8OID, -1, InvalidOid, 8, Int64GetDatum(0), false, FLOAT8PASSBYVAL));
	*exprs = lappend(*exprs, copyObject(l->limitCount));
	*has_bound = true;
}

static Plan *
wrap(Plan *plan, Plan *parent, Walk *w)
{
	Rewrite		rw = {0};
	List	   *tlist = NIL;
	List	   *scan_tlist = NIL;
	ListCell   *lc;
	int			n_child;
	int			k = 0;
	bool		has_bound;
	CustomScan *cs;

	foreach(lc, plan->targetlist)
		if (contains_batchable((Node *) ((TargetEntry *) lfirst(lc))->expr, NULL))
			break;
	if (lc == NULL)
		return plan;

	/* the child keeps its columns in place; those with calls become placeholders */
	foreach(lc, plan->targetlist)
	{
		TargetEntry *te = copyObject(lfirst(lc));

		if (contains_batchable((Node *) te->expr, NULL))
		{
			te->expr = (Expr *) makeNullConst(exprType((Node *) te->expr), exprTypmod((Node *) te->expr),
											  exprCollation((Node *) te->expr));
			rw.placeholders = bms_add_member(rw.placeholders, te->resno);
		}
		rw.child_tlist = lappend(rw.child_tlist, te);
	}
	foreach(lc, plan->targetlist)
	{
		TargetEntry *te = copyObject(lfirst(lc));
		Node	   *e = (Node *) te->expr;

		if (bms_is_member(te->resno, rw.placeholders))
			te->expr = (Expr *) lift(e, &rw);
		else if (!IsA(e, Const))	/* a dropped column's NULL stays a Const */
			te->expr = (Expr *) var_like(INDEX_VAR, te->resno, e);
		tlist = lappend(tlist, te);
	}
	n_child = list_length(rw.child_tlist);
	foreach(lc, rw.result_vars)
		((Var *) lfirst(lc))->varattno += n_child;

	/* the scan tuple: the child's columns, then the results */
	foreach(lc, rw.child_tlist)
	{
		TargetEntry *te = lfirst(lc);

		scan_tlist = lappend(scan_tlist,
							 makeTargetEntry((Expr *) var_like(OUTER_VAR, te->resno, (Node *) te->expr),
											 te->resno, NULL, false));
	}
	foreach(lc, rw.results)
		scan_tlist = lappend(scan_tlist, makeTargetEntry(lfirst(lc), n_child + ++k, NULL, false));

	add_bound(parent, plan, &rw.exprs, &has_bound);

	cs = makeNode(CustomScan);
	cs->scan.plan.startup_cost = plan->startup_cost;
	cs->scan.plan.total_cost = plan->total_cost;
	cs->scan.plan.plan_rows = plan->plan_rows;
	cs->scan.plan.plan_width = plan->plan_width;
	cs->scan.plan.parallel_aware = false;
	cs->scan.plan.parallel_safe = false;
	cs->scan.plan.targetlist = tlist;
	cs->scan.plan.lefttree = plan;
	/* a parameter that changes must rescan the node as it rescans its child */
	cs->scan.plan.extParam = bms_copy(plan->extParam);
	cs->scan.plan.allParam = bms_copy(plan->allParam);
	cs->scan.scanrelid = 0;
	cs->custom_exprs = rw.exprs;
	cs->custom_private = list_concat(list_make2_int(list_length(rw.results), has_bound), rw.calls);
	cs->custom_scan_tlist = scan_tlist;
	cs->methods = &mms_batch_scan_methods;
	plan->targetlist = rw.child_tlist;
	w->added = lappend(w->added, cs);
	return (Plan *) cs;
}

typedef Plan *(*ChildFn) (Plan *child, Plan *parent, bool marked, void *arg);

/*
 * Replaces each child of plan by fn's result: the outer and inner plans, and
 * the plans Append, MergeAppend, SubqueryScan and CustomScan hold. marked: a
 * merge join's inner side, which must mark and restore.
 */
static void
map_children(Plan *plan, ChildFn fn, void *arg)
{
	List	   *list = NIL;
	ListCell   *lc;

	plan->lefttree = fn(plan->lefttree, plan, false, arg);
	plan->righttree = fn(plan->righttree, plan, IsA(plan, MergeJoin), arg);
	if (IsA(plan, Append))
		list = ((Append *) plan)->appendplans;
	else if (IsA(plan, MergeAppend))
		list = ((MergeAppend *) plan)->mergeplans;
	else if (IsA(plan, CustomScan))
		list = ((CustomScan *) plan)->custom_plans;
	else if (IsA(plan, SubqueryScan))
		((SubqueryScan *) plan)->subplan = fn(((SubqueryScan *) plan)->subplan, plan, false, arg);
	foreach(lc, list)
		lfirst(lc) = fn(lfirst(lc), plan, false, arg);
}

static Plan *
batch_tree(Plan *plan, Plan *parent, bool marked, void *arg)
{
	if (plan == NULL)
		return NULL;
	check_stack_depth();
	map_children(plan, batch_tree, arg);
	if (marked || !projects_rows(plan) || plan->targetlist == NIL)
		return plan;
	return wrap(plan, parent, (Walk *) arg);
}

static Plan *
note_max_node_id(Plan *plan, Plan *parent, bool marked, void *arg)
{
	if (plan == NULL)
		return NULL;
	*(int *) arg = Max(*(int *) arg, plan->plan_node_id);
	map_children(plan, note_max_node_id, arg);
	return plan;
}

static void
batch_statement(PlannedStmt *stmt, int cursor_options)
{
	Walk		w = {0};
	ListCell   *lc;
	int			max_id = 0;

	stmt->planTree = batch_tree(stmt->planTree, NULL, false, &w);
	foreach(lc, stmt->subplans)
		lfirst(lc) = batch_tree(lfirst(lc), NULL, false, &w);
	if (w.added == NIL)
		return;

	/* the standard planner made the plan scrollable before MmsBatch went in */
	if ((cursor_options & CURSOR_OPT_SCROLL) && !ExecSupportsBackwardScan(stmt->planTree))
	{
		stmt->planTree = materialize_finished_plan(stmt->planTree);
		w.added = lappend(w.added, stmt->planTree);
	}

	/* the new nodes take numbers after the planner's (they key parallel and EXPLAIN state) */
	(void) note_max_node_id(stmt->planTree, NULL, false, &max_id);
	foreach(lc, stmt->subplans)
		(void) note_max_node_id(lfirst(lc), NULL, false, &max_id);
	foreach(lc, w.added)
		((Plan *) lfirst(lc))->plan_node_id = ++max_id;
}

static PlannedStmt *
batch_planner(Query *parse, const char *query_string, int cursor_options, ParamListInfo bound_params)
{
	PlannedStmt *stmt;

	stmt = prev_planner ? prev_planner(parse, query_string, cursor_options, bound_params) :
		standard_planner(parse, query_string, cursor_options, bound_params);
	if (mms_transparent_batching && mms_shared != NULL && stmt->commandType != CMD_UTILITY)
		batch_statement(stmt, cursor_options);
	return stmt;
}

void
mms_batch_install_hook(void)
{
	prev_planner = planner_hook;
	planner_hook = batch_planner;
	CacheRegisterSyscacheCallback(PROCOID, forget_kinds, (Datum) 0);
	mms_batch_register_methods();
}
