/* Queue control (see queue_ctl.h): parsing, matching, formatting and the
 * request the workers answer. Nothing here touches a queue. */
#include "queue_ctl.h"

#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

static const char *const op_names[] = {"show queue", "show destinations", "hold", "release",
				       "delete", "bounce", "retry"};
static const char *const op_done[] = {"listed", "destinations", "held", "released",
				      "deleted", "bounced", "retried"};

const char *qctl_op_name(enum qctl_op op)
{
	return op_names[op];
}

const char *qctl_op_done(enum qctl_op op)
{
	return op_done[op];
}

bool qctl_op_of(const char *word, enum qctl_op *op)
{
	for (int i = QCTL_HOLD; i <= QCTL_RETRY; i++)
		if (strcmp(word, op_names[i]) == 0) {
			*op = (enum qctl_op)i;
			return true;
		}
	return false;
}

/* "<a@b>" and "a@b" are the same filter; "<>" (or "") the null sender. */
static bool set_pattern(char *dst, size_t cap, const char *v, size_t n)
{
	if (n >= 2 && v[0] == '<' && v[n - 1] == '>') {
		v++;
		n -= 2;
	}
	if (n >= cap)
		return false;
	/* A filter given twice: the last one, and nothing of the first. */
	memset(dst, 0, cap);
	memcpy(dst, v, n);
	return true;
}

static bool parse_u64(const char *v, size_t n, uint64_t max, uint64_t *out)
{
	if (n == 0 || n > 19)
		return false;
	uint64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return false;
		x = x * 10 + (uint64_t)(v[i] - '0');
	}
	if (x > max)
		return false;
	*out = x;
	return true;
}

static bool parse_id(const char *v, size_t n, uint64_t *id)
{
	if (n != 16)
		return false;
	uint64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		char c = v[i];
		unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
			: c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
			: c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
		if (d > 15)
			return false;
		x = x << 4 | d;
	}
	*id = x;
	return true;
}

static bool key_is(const char *w, size_t wn, const char *key, const char **v, size_t *vn)
{
	size_t k = strlen(key);
	if (wn <= k || strncmp(w, key, k) != 0 || w[k] != '=')
		return false;
	*v = w + k + 1;
	*vn = wn - k - 1;
	return true;
}

int qctl_parse(enum qctl_op op, const char *args, struct qctl_cmd *c, char *err, size_t cap)
{
	memset(c, 0, sizeof(*c));
	c->op = op;
	c->limit = QCTL_DEFAULT_LIMIT;
	bool listing = op == QCTL_SHOW || op == QCTL_DESTINATIONS;
	bool all = listing, first = true;
	const char *p = args ? args : "";
	for (;;) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *w = p;
		while (*p && *p != ' ')
			p++;
		size_t wn = (size_t)(p - w);
		const char *v;
		size_t vn;
		uint64_t x;
		if (first && !listing) {
			first = false;
			if (wn == 3 && strncmp(w, "all", 3) == 0) {
				all = true;
				continue;
			}
			if (!parse_id(w, wn, &c->f.id)) {
				snprintf(err, cap, "error: \"%.*s\" is not a message id (16 hex digits) nor \"all\"",
					 (int)(wn < 64 ? wn : 64), w);
				return -1;
			}
			c->f.by_id = true;
			continue;
		}
		first = false;
		if (c->f.by_id) {
			snprintf(err, cap, "error: %s ID takes no filters (use %s all ...)",
				 op_names[op], op_names[op]);
			return -1;
		}
		if (key_is(w, wn, "sender", &v, &vn)) {
			if (!set_pattern(c->f.sender, sizeof(c->f.sender), v, vn))
				goto too_long;
			c->f.has_sender = true;
		} else if (key_is(w, wn, "rcpt", &v, &vn)) {
			if (!vn || !set_pattern(c->f.rcpt, sizeof(c->f.rcpt), v, vn))
				goto too_long;
		} else if (key_is(w, wn, "domain", &v, &vn)) {
			if (!set_pattern(c->f.domain, sizeof(c->f.domain), v, vn))
				goto too_long;
		} else if (key_is(w, wn, "client", &v, &vn)) {
			if (!set_pattern(c->f.client, sizeof(c->f.client), v, vn))
				goto too_long;
		} else if (key_is(w, wn, "state", &v, &vn)) {
			if (vn == 6 && !strncmp(v, "active", 6))
				c->f.state = QCTL_ACTIVE;
			else if (vn == 8 && !strncmp(v, "deferred", 8))
				c->f.state = QCTL_DEFERRED;
			else if (vn == 4 && !strncmp(v, "held", 4))
				c->f.state = QCTL_HELD;
			else {
				snprintf(err, cap, "error: state must be active, deferred or held");
				return -1;
			}
		} else if (op == QCTL_SHOW && key_is(w, wn, "limit", &v, &vn)) {
			if (!parse_u64(v, vn, QCTL_MAX_LIMIT, &x) || x == 0) {
				snprintf(err, cap, "error: limit must be 1 to %u", QCTL_MAX_LIMIT);
				return -1;
			}
			c->limit = (unsigned)x;
		} else if (op == QCTL_SHOW && key_is(w, wn, "offset", &v, &vn)) {
			if (!parse_u64(v, vn, QCTL_MAX_OFFSET, &x)) {
				snprintf(err, cap, "error: offset must be 0 to %u (narrow the filters)",
					 QCTL_MAX_OFFSET);
				return -1;
			}
			c->offset = x;
		} else {
			snprintf(err, cap, "error: unknown filter \"%.*s\" (sender=, rcpt=, domain=, client=, state=%s)",
				 (int)(wn < 64 ? wn : 64), w, op == QCTL_SHOW ? ", limit=, offset=" : "");
			return -1;
		}
	}
	if (!all && !c->f.by_id) {
		snprintf(err, cap, "error: %s needs a message id or \"all\" [filters]", op_names[op]);
		return -1;
	}
	return 0;
too_long:
	snprintf(err, cap, "error: filter value too long or empty");
	return -1;
}

void qctl_filter_text(const struct qctl_cmd *c, char *buf, size_t cap)
{
	static const char *const states[] = {"", "active", "deferred", "held"};
	const struct qctl_filter *f = &c->f;
	size_t n = 0;
	buf[0] = '\0';
#define ADD(...) do { if (n < cap) n += (size_t)snprintf(buf + n, cap - n, __VA_ARGS__); } while (0)
	if (f->by_id) {
		ADD("%016" PRIX64, f->id);
		return;
	}
	ADD("all");
	if (f->has_sender)
		ADD(" sender=<%s>", f->sender);
	if (f->rcpt[0])
		ADD(" rcpt=%s", f->rcpt);
	if (f->domain[0])
		ADD(" domain=%s", f->domain);
	if (f->client[0])
		ADD(" client=%s", f->client);
	if (f->state)
		ADD(" state=%s", states[f->state]);
#undef ADD
}

/* Exact (case-insensitive) unless the pattern has a '*'. */
static bool like(const char *pattern, const char *s)
{
	if (!strchr(pattern, '*'))
		return strcasecmp(pattern, s) == 0;
	return fnmatch(pattern, s, FNM_CASEFOLD) == 0;
}

static const char *domain_of(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

bool qctl_filter_empty(const struct qctl_filter *f)
{
	return !f->by_id && !f->has_sender && !f->rcpt[0] && !f->domain[0] && !f->client[0] &&
	       f->state == QCTL_ANY;
}

bool qctl_filter_needs_rcpts(const struct qctl_filter *f)
{
	return !f->by_id && (f->rcpt[0] || f->domain[0]);
}

bool qctl_match(const struct qctl_filter *f, const struct qctl_view *v)
{
	if (f->by_id)
		return v->id == f->id;
	if (f->state && f->state != v->state)
		return false;
	if (f->has_sender && !like(f->sender, v->from))
		return false;
	if (f->client[0] && !like(f->client, v->client ? v->client : ""))
		return false;
	/* Recipients: those still to deliver. */
	if (f->rcpt[0] || f->domain[0]) {
		bool any = false;
		for (unsigned i = 0; !any && i < v->nrcpt; i++) {
			const struct qctl_rview *r = &v->r[i];
			if (r->state != QCTL_R_PENDING)
				continue;
			any = (!f->rcpt[0] || like(f->rcpt, r->addr)) &&
			      (!f->domain[0] || like(f->domain, domain_of(r->addr)));
		}
		if (!any)
			return false;
	}
	return true;
}

static const char *const state_names[] = {"", "active", "deferred", "held"};
static const char *const rstate_names[] = {"pending", "delivered", "failed"};

static void iso_time(char *buf, size_t cap, int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void json_str_or_null(FILE *out, const char *s)
{
	if (s)
		json_write_string(out, s);
	else
		fputs("null", out);
}

void qctl_write_row(FILE *out, const struct qctl_view *v, bool json, int64_t now)
{
	char id[24], from[QCTL_PATTERN_MAX + 3], at[32], rc[QCTL_PATTERN_MAX + 3];
	snprintf(id, sizeof(id), "%016" PRIX64, v->id);
	snprintf(from, sizeof(from), "<%s>", v->from);
	iso_time(at, sizeof(at), v->arrival);
	bool sched = v->state != QCTL_HELD && v->attempts;
	int64_t next_s = v->next_ms / 1000;
	if (json) {
		fputs("{\"id\": ", out);
		json_write_string(out, id);
		fputs(", \"arrival\": ", out);
		json_write_string(out, at);
		fprintf(out, ", \"arrival_s\": %lld, \"age_s\": %lld, \"size\": %llu, \"state\": \"%s\", "
			"\"held_reason\": ", (long long)v->arrival, (long long)(now - v->arrival),
			(unsigned long long)v->size, state_names[v->state]);
		json_str_or_null(out, v->state == QCTL_HELD ? v->held_reason : NULL);
		fputs(", \"sender\": ", out);
		json_write_string(out, from);
		fputs(", \"recipients\": [", out);
		for (unsigned i = 0; i < v->nrcpt; i++) {
			if (i)
				fputs(", ", out);
			snprintf(rc, sizeof(rc), "<%s>", v->r[i].addr);
			json_write_string(out, rc);
		}
		fputs("], \"recipient_states\": [", out);
		for (unsigned i = 0; i < v->nrcpt; i++) {
			const struct qctl_rview *r = &v->r[i];
			fputs(i ? ", {\"address\": " : "{\"address\": ", out);
			snprintf(rc, sizeof(rc), "<%s>", r->addr);
			json_write_string(out, rc);
			fprintf(out, ", \"state\": \"%s\", \"status\": ", rstate_names[r->state]);
			json_str_or_null(out, r->status && r->status[0] ? r->status : NULL);
			fputs(", \"reply\": ", out);
			json_str_or_null(out, r->reply);
			fputc('}', out);
		}
		fprintf(out, "], \"recipient_count\": %u, \"pending\": %u, \"attempts\": %u, "
			"\"next_attempt\": ", v->nrcpt, v->pending, v->attempts);
		if (sched)
			fprintf(out, "%lld, \"next_attempt_in_s\": %lld", (long long)next_s,
				(long long)(next_s - now));
		else
			fputs("null", out);
		fputs(", \"last_error\": ", out);
		json_str_or_null(out, v->last_error && v->last_error[0] ? v->last_error : NULL);
		fputs(", \"connector\": ", out);
		json_write_string(out, v->connector ? v->connector : "");
		fputs(", \"client\": ", out);
		json_write_string(out, v->client ? v->client : "");
		fputc('}', out);
		return;
	}
	char next[32] = "now";
	if (v->state == QCTL_HELD)
		snprintf(next, sizeof(next), "held");
	else if (sched && next_s > now)
		snprintf(next, sizeof(next), "in %llds", (long long)(next_s - now));
	fprintf(out, "%-16s %-20s %8llu %7lld %8u %-12s %-8s %s\n", id, at,
		(unsigned long long)v->size, (long long)(now - v->arrival), v->attempts, next,
		state_names[v->state], from);
	if (v->state == QCTL_HELD && v->held_reason)
		fprintf(out, "%16s held: %s\n", "", v->held_reason);
	if (v->last_error && v->last_error[0])
		fprintf(out, "%16s last error: %s\n", "", v->last_error);
	for (unsigned i = 0; i < v->nrcpt; i++) {
		const struct qctl_rview *r = &v->r[i];
		fprintf(out, "%16s rcpt <%s> %s", "", r->addr, rstate_names[r->state]);
		if (r->status && r->status[0])
			fprintf(out, " %s", r->status);
		if (r->reply && r->reply[0])
			fprintf(out, " (%s)", r->reply);
		fputc('\n', out);
	}
}

/* ---- destinations ---------------------------------------------------------- */

static uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		h = (h ^ (c >= 'A' && c <= 'Z' ? c + 32u : c)) * 1099511628211ull;
	}
	return h;
}

static struct qctl_dest *dest_slot(struct qctl_dests *t, const char *name)
{
	if ((t->used + 1) * 2 > t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 64;
		struct qctl_dest *nd = calloc(nc, sizeof(*nd));
		if (!nd)
			return NULL;
		for (size_t i = 0; i < t->cap; i++) {
			if (!t->d[i].name)
				continue;
			size_t k = name_hash(t->d[i].name) & (nc - 1);
			while (nd[k].name)
				k = (k + 1) & (nc - 1);
			nd[k] = t->d[i];
		}
		free(t->d);
		t->d = nd;
		t->cap = nc;
	}
	size_t k = name_hash(name) & (t->cap - 1);
	while (t->d[k].name && strcasecmp(t->d[k].name, name) != 0)
		k = (k + 1) & (t->cap - 1);
	struct qctl_dest *d = &t->d[k];
	if (!d->name) {
		if (!(d->name = strdup(name)))
			return NULL;
		d->oldest = INT64_MAX;
		d->next_ms = INT64_MAX;
		t->used++;
	}
	return d;
}

static bool set_error(struct qctl_dest *d, const char *err, int64_t when)
{
	if (!err || !err[0] || (d->last_error && when < d->error_ms))
		return true;
	char *e = strdup(err);
	if (!e)
		return false;
	free(d->last_error);
	d->last_error = e;
	d->error_ms = when;
	return true;
}

struct qctl_dest *qctl_dests_entry(struct qctl_dests *t, const char *name)
{
	return dest_slot(t, name);
}

bool qctl_dests_add(struct qctl_dests *t, const char *name, const struct qctl_view *v,
		    bool throttled)
{
	struct qctl_dest *d = dest_slot(t, name);
	return d && qctl_dest_count(d, v, throttled);
}

bool qctl_dest_count(struct qctl_dest *d, const struct qctl_view *v, bool throttled)
{
	d->recipients++;
	d->throttled |= throttled;
	if (d->last_msg == v->id && d->messages)
		return true;
	d->last_msg = v->id;
	d->messages++;
	if (v->arrival < d->oldest)
		d->oldest = v->arrival;
	if (v->state == QCTL_HELD)
		d->held++;
	else if (v->next_ms < d->next_ms)
		d->next_ms = v->next_ms;
	/* A message's last error is from its last attempt: the later
	 * attempt's is the destination's. */
	return set_error(d, v->last_error, v->attempts ? v->next_ms : 0);
}

bool qctl_dests_merge(struct qctl_dests *t, const struct qctl_dests *from)
{
	for (size_t i = 0; i < from->cap; i++) {
		const struct qctl_dest *s = &from->d[i];
		if (!s->name)
			continue;
		struct qctl_dest *d = dest_slot(t, s->name);
		if (!d)
			return false;
		d->messages += s->messages;
		d->recipients += s->recipients;
		d->held += s->held;
		d->throttled |= s->throttled;
		if (s->oldest < d->oldest)
			d->oldest = s->oldest;
		if (s->next_ms < d->next_ms)
			d->next_ms = s->next_ms;
		if (!set_error(d, s->last_error, s->error_ms))
			return false;
	}
	return true;
}

void qctl_dests_free(struct qctl_dests *t)
{
	for (size_t i = 0; i < t->cap; i++) {
		free(t->d[i].name);
		free(t->d[i].last_error);
	}
	free(t->d);
	memset(t, 0, sizeof(*t));
}

static int dest_cmp(const void *a, const void *b)
{
	const struct qctl_dest *x = *(const struct qctl_dest *const *)a;
	const struct qctl_dest *y = *(const struct qctl_dest *const *)b;
	if (x->recipients != y->recipients)
		return x->recipients > y->recipients ? -1 : 1;
	return strcasecmp(x->name, y->name);
}

void qctl_dests_write(FILE *out, const struct qctl_dests *t, bool json, int64_t now)
{
	const struct qctl_dest **v = malloc((t->used ? t->used : 1) * sizeof(*v));
	size_t n = 0;
	for (size_t i = 0; v && i < t->cap; i++)
		if (t->d[i].name)
			v[n++] = &t->d[i];
	if (v)
		qsort(v, n, sizeof(*v), dest_cmp);
	if (json)
		fputs("{\"destinations\": [", out);
	else
		fprintf(out, "%-32s %9s %10s %8s %6s %-12s %-9s %s\n", "destination", "messages",
			"recipients", "oldest_s", "held", "next_attempt", "throttled", "last_error");
	for (size_t i = 0; i < n; i++) {
		const struct qctl_dest *d = v[i];
		int64_t next_s = d->next_ms == INT64_MAX ? -1 : d->next_ms / 1000;
		if (json) {
			fputs(i ? ", {\"destination\": " : "{\"destination\": ", out);
			json_write_string(out, d->name);
			fprintf(out, ", \"messages\": %llu, \"recipients\": %llu, \"held\": %llu, "
				"\"oldest_age_s\": %lld, \"next_attempt\": ",
				(unsigned long long)d->messages, (unsigned long long)d->recipients,
				(unsigned long long)d->held, (long long)(now - d->oldest));
			if (next_s < 0)
				fputs("null", out);
			else
				fprintf(out, "%lld, \"next_attempt_in_s\": %lld", (long long)next_s,
					(long long)(next_s > now ? next_s - now : 0));
			fprintf(out, ", \"throttled\": %s, \"last_error\": ",
				d->throttled ? "true" : "false");
			json_str_or_null(out, d->last_error);
			fputc('}', out);
			continue;
		}
		char next[32] = "-";
		if (next_s >= 0 && next_s > now)
			snprintf(next, sizeof(next), "in %llds", (long long)(next_s - now));
		else if (next_s >= 0)
			snprintf(next, sizeof(next), "now");
		fprintf(out, "%-32s %9llu %10llu %8lld %6llu %-12s %-9s %s\n", d->name,
			(unsigned long long)d->messages, (unsigned long long)d->recipients,
			(long long)(now - d->oldest), (unsigned long long)d->held, next,
			d->throttled ? "yes" : "no", d->last_error ? d->last_error : "-");
	}
	if (json)
		fprintf(out, "], \"count\": %zu}\n", n);
	else
		fprintf(out, "%zu destination%s\n", n, n == 1 ? "" : "s");
	free(v);
}

/* ---- requests ----------------------------------------------------------------- */

struct qctl_req *qctl_req_new(const struct qctl_cmd *c, unsigned nparts)
{
	struct qctl_req *r = calloc(1, sizeof(*r) + nparts * sizeof(r->part[0]));
	if (!r)
		return NULL;
	r->cmd = *c;
	r->now = (int64_t)time(NULL);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	r->left = nparts;
	r->refs = nparts + 1;
	r->nparts = nparts;
	for (unsigned i = 0; i < nparts; i++)
		r->part[i].req = r;
	return r;
}

static void req_free(struct qctl_req *r)
{
	for (unsigned i = 0; i < r->nparts; i++) {
		struct qctl_part *p = &r->part[i];
		for (size_t k = 0; k < p->nrows; k++)
			free(p->rows[k].text);
		free(p->rows);
		qctl_dests_free(&p->dests);
		free(p->segs);
	}
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r);
}

static void req_unref_locked(struct qctl_req *r)
{
	bool last = --r->refs == 0;
	pthread_mutex_unlock(&r->lock);
	if (last)
		req_free(r);
}

void qctl_part_done(struct qctl_part *p)
{
	struct qctl_req *r = p->req;
	pthread_mutex_lock(&r->lock);
	if (--r->left == 0)
		pthread_cond_broadcast(&r->cond);
	req_unref_locked(r);
}

bool qctl_req_wait(struct qctl_req *r, unsigned timeout_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&r->lock);
	while (r->left && pthread_cond_timedwait(&r->cond, &r->lock, &until) != ETIMEDOUT)
		;
	bool done = r->left == 0;
	pthread_mutex_unlock(&r->lock);
	return done;
}

void qctl_req_put(struct qctl_req *r)
{
	pthread_mutex_lock(&r->lock);
	req_unref_locked(r);
}

static int row_cmp(const void *a, const void *b)
{
	const struct qctl_row *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* Every part's rows, by id (malloc'd; the texts stay the parts'). */
static struct qctl_row *all_rows(struct qctl_req *r, size_t *np, uint64_t *total)
{
	size_t n = 0;
	*total = 0;
	for (unsigned i = 0; i < r->nparts; i++) {
		*total += r->part[i].matched;
		n += r->part[i].nrows;
	}
	struct qctl_row *all = malloc((n ? n : 1) * sizeof(*all));
	if (!all)
		return NULL;
	size_t k = 0;
	for (unsigned i = 0; i < r->nparts; i++)
		for (size_t j = 0; j < r->part[i].nrows; j++)
			all[k++] = r->part[i].rows[j];
	qsort(all, n, sizeof(*all), row_cmp);
	*np = n;
	return all;
}

bool qctl_page(struct qctl_req *r, uint64_t *lo, uint64_t *hi, uint64_t *total)
{
	size_t n = 0;
	struct qctl_row *all = all_rows(r, &n, total);
	bool any = all && r->cmd.offset < n;
	if (any) {
		size_t from = (size_t)r->cmd.offset;
		size_t to = from + r->cmd.limit < n ? from + r->cmd.limit : n;
		*lo = all[from].id;
		*hi = all[to - 1].id;
	}
	free(all);
	return any;
}

static int answer_show(FILE *out, struct qctl_req *r)
{
	const struct qctl_cmd *c = &r->cmd;
	uint64_t total = 0;
	size_t n = 0;
	struct qctl_row *all = all_rows(r, &n, &total);
	if (!all) {
		fprintf(out, "error: out of memory\n");
		return -1;
	}
	/* The second round holds the page alone (a message gone since the
	 * first is simply not in it). */
	size_t skip = r->render ? 0 : (size_t)c->offset;
	if (r->render)
		total = r->total;
	size_t from = skip < n ? skip : n;
	size_t to = from + c->limit < n ? from + c->limit : n;
	if (c->json)
		fputs("{\"messages\": [", out);
	else
		fprintf(out, "%-16s %-20s %8s %7s %8s %-12s %-8s %s\n", "id", "arrival", "size",
			"age_s", "attempts", "next_attempt", "state", "sender");
	for (size_t i = from; i < to; i++) {
		if (c->json && i > from)
			fputs(", ", out);
		fputs(all[i].text, out);
	}
	if (c->json)
		fprintf(out, "], \"count\": %zu, \"total\": %llu, \"offset\": %llu, \"limit\": %u}\n",
			to - from, (unsigned long long)total, (unsigned long long)c->offset, c->limit);
	else if (from == 0 && to - from == total)
		fprintf(out, "%llu message%s queued\n", (unsigned long long)total,
			total == 1 ? "" : "s");
	else
		fprintf(out, "%llu message%s queued, %zu shown from offset %llu (limit=%u)\n",
			(unsigned long long)total, total == 1 ? "" : "s", to - from,
			(unsigned long long)c->offset, c->limit);
	free(all);
	return 0;
}

int qctl_answer(FILE *out, struct qctl_req *r, bool complete)
{
	const struct qctl_cmd *c = &r->cmd;
	if (!complete) {
		fprintf(out, "error: the workers did not answer in time (%s); changes may still be made\n",
			qctl_op_name(c->op));
		return -1;
	}
	if (c->op == QCTL_SHOW)
		return answer_show(out, r);
	if (c->op == QCTL_DESTINATIONS) {
		struct qctl_dests all = {0};
		bool ok = true;
		for (unsigned i = 0; ok && i < r->nparts; i++)
			ok = qctl_dests_merge(&all, &r->part[i].dests);
		if (ok)
			qctl_dests_write(out, &all, c->json, r->now);
		else
			fprintf(out, "error: out of memory\n");
		qctl_dests_free(&all);
		return ok ? 0 : -1;
	}
	uint64_t matched = 0, touched = 0, busy = 0, skipped = 0;
	bool failed = false;
	for (unsigned i = 0; i < r->nparts; i++) {
		matched += r->part[i].matched;
		touched += r->part[i].touched;
		busy += r->part[i].busy;
		skipped += r->part[i].skipped;
		failed |= r->part[i].failed;
	}
	char id[24];
	snprintf(id, sizeof(id), "%016" PRIX64, c->f.id);
	if (c->f.by_id && !matched) {
		if (c->json)
			fprintf(out, "{\"error\": \"no message %s in the queue\"}\n", id);
		else
			fprintf(out, "error: no message %s in the queue\n", id);
		return -1;
	}
	if (failed) {
		if (c->json)
			fprintf(out, "{\"error\": \"could not store the change durably\", \"%s\": %llu}\n",
				qctl_op_done(c->op), (unsigned long long)touched);
		else
			fprintf(out, "error: could not store the change durably (%s: %llu)\n",
				qctl_op_done(c->op), (unsigned long long)touched);
		return -1;
	}
	if (c->f.by_id && busy) {
		if (c->json)
			fprintf(out, "{\"error\": \"message %s is being delivered or moved now; try again\"}\n", id);
		else
			fprintf(out, "error: message %s is being delivered or moved now; try again\n", id);
		return -1;
	}
	if (c->json) {
		fprintf(out, "{\"%s\": %llu, \"matched\": %llu, \"busy\": %llu, \"unchanged\": %llu}\n",
			qctl_op_done(c->op), (unsigned long long)touched,
			(unsigned long long)matched, (unsigned long long)busy,
			(unsigned long long)skipped);
		return 0;
	}
	fprintf(out, "%s: %llu", qctl_op_done(c->op), (unsigned long long)touched);
	if (skipped)
		fprintf(out, " (unchanged: %llu %s)", (unsigned long long)skipped,
			c->op == QCTL_HOLD ? "held already"
			: c->op == QCTL_RELEASE ? "not held" : "held: use release");
	if (busy)
		fprintf(out, " (busy: %llu in delivery or being moved; try again)",
			(unsigned long long)busy);
	fputc('\n', out);
	return 0;
}
