/* Envelope block (see envelope.h). */
#include "envelope.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Values come from the parser (no CR/LF possible) or the configuration;
 * still, never let one break the line structure. */
static void field(FILE *out, const char *s)
{
	for (size_t n; *s; s += n) {
		n = strcspn(s, "\r\n");
		fwrite(s, 1, n, out);
		if (s[n]) {
			fputc(' ', out);
			n++;
		}
	}
}

void envelope_write(FILE *out, const char *id, const struct smtp_envelope *env,
		    const char *connector, const char *client, const char *helo,
		    int64_t arrival)
{
	static const char *const body[] = {"", " BODY=7BIT", " BODY=8BITMIME"};
	static const char *const ret[] = {"", " RET=FULL", " RET=HDRS"};
	static const char *const notify[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
	fprintf(out, "POSTERN/1\r\nid: %s\r\narrival: %lld\r\nconnector: ", id,
		(long long)arrival);
	field(out, connector);
	fputs("\r\nclient: ", out);
	field(out, client);
	fputs("\r\nhelo: ", out);
	field(out, helo);
	if (env->auth) {
		fputs("\r\nauth: ", out);
		field(out, env->auth);
	}
	if (env->held) {
		fputs("\r\nheld: ", out);
		field(out, env->held);
	}
	fputs("\r\nfrom: <", out);
	field(out, env->from);
	fprintf(out, ">%s%s", body[env->body], ret[env->ret]);
	if (env->envid) {
		fputs(" ENVID=", out);
		field(out, env->envid);
	}
	fputs(env->smtputf8 ? " SMTPUTF8\r\n" : "\r\n", out);
	for (unsigned i = 0; i < env->nrcpt; i++) {
		const struct smtp_rcpt *r = &env->rcpt[i];
		fputs("rcpt: <", out);
		field(out, r->addr);
		fputc('>', out);
		const char *sep = " NOTIFY=";
		for (int b = 0; b < 4; b++)
			if (r->notify & (1u << b)) {
				fprintf(out, "%s%s", sep, notify[b]);
				sep = ",";
			}
		if (r->orcpt) {
			fputs(" ORCPT=", out);
			field(out, r->orcpt);
		}
		fputs("\r\n", out);
	}
	fputs("\r\n", out);
}

/* A decimal number within p[0..n): the line, never past it. */
static int64_t number(const char *p, size_t n)
{
	int64_t v = 0;
	bool neg = n && *p == '-';
	for (size_t i = neg; i < n && p[i] >= '0' && p[i] <= '9' && v < INT64_MAX / 10 - 9; i++)
		v = v * 10 + (p[i] - '0');
	return neg ? -v : v;
}

/* "<path>" at p: the mailbox, through the path parser so quoted local
 * parts holding '>' or spaces come back whole. */
static char *read_path(const char *p, size_t n, size_t *used, bool allow_null)
{
	struct smtp_path path;
	unsigned flags = SMTP_PATH_ALLOW_POSTMASTER | SMTP_PATH_ALLOW_UTF8 |
			 (allow_null ? SMTP_PATH_ALLOW_NULL : 0);
	if (smtp_path_parse(p, n, flags, &path, used) != SMTP_ARG_OK)
		return NULL;
	return path.is_null ? strdup("") : strndup(path.mailbox.p, path.mailbox.len);
}

static bool param(const char *tok, size_t n, const char *key, const char **val,
		  size_t *vlen)
{
	size_t k = strlen(key);
	if (n < k || strncasecmp(tok, key, k) != 0)
		return false;
	*val = tok + k;
	*vlen = n - k;
	return true;
}

/* The next space-separated word in [*t, end); false at the end. */
static bool next_word(const char **t, const char *end, const char **w, size_t *wn)
{
	while (*t < end && **t == ' ')
		(*t)++;
	if (*t >= end)
		return false;
	const char *we = memchr(*t, ' ', (size_t)(end - *t));
	if (!we)
		we = end;
	*w = *t;
	*wn = (size_t)(we - *t);
	*t = we;
	return true;
}

/* BODY= RET= ENVID= SMTPUTF8 after the sender. */
static void read_mail_params(struct smtp_envelope *env, const char *t, const char *end)
{
	const char *w, *pv;
	size_t wn, pl;
	while (next_word(&t, end, &w, &wn)) {
		if (param(w, wn, "BODY=", &pv, &pl))
			env->body = pl == 4 && !strncasecmp(pv, "7BIT", 4) ? SMTP_BODY_7BIT
									    : SMTP_BODY_8BITMIME;
		else if (param(w, wn, "RET=", &pv, &pl))
			env->ret = pl == 4 && !strncasecmp(pv, "FULL", 4) ? SMTP_RET_FULL
									   : SMTP_RET_HDRS;
		else if (param(w, wn, "ENVID=", &pv, &pl)) {
			free(env->envid);
			env->envid = strndup(pv, pl);
		} else if (wn == 8 && !strncasecmp(w, "SMTPUTF8", 8))
			env->smtputf8 = true;
	}
}

/* NOTIFY= ORCPT= after a recipient. */
static void read_rcpt_params(struct smtp_rcpt *r, const char *t, const char *end)
{
	static const char *const names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
	const char *w, *pv;
	size_t wn, pl;
	while (next_word(&t, end, &w, &wn)) {
		if (param(w, wn, "NOTIFY=", &pv, &pl)) {
			for (int b = 0; b < 4; b++)
				if (memmem(pv, pl, names[b], strlen(names[b])))
					r->notify |= 1u << b;
		} else if (param(w, wn, "ORCPT=", &pv, &pl)) {
			free(r->orcpt);
			r->orcpt = strndup(pv, pl);
		}
	}
}

int envelope_read(const char *p, size_t len, struct envelope_full *e)
{
	memset(e, 0, sizeof(*e));
	if (len < 11 || memcmp(p, "POSTERN/1\r\n", 11) != 0)
		return -1;
	/* envelope_write() never leaves a bare LF: one means corruption. */
	for (size_t i = 0; i < len; i++)
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			return -1;
	unsigned cap = 0;
	const char *end = p + len;
	for (const char *line = p + 11; line < end;) {
		const char *eol = memchr(line, '\r', (size_t)(end - line));
		/* Every line ends in CRLF: a bare CR, or a block cut after the
		 * CR, is not an envelope. */
		if (!eol || eol + 1 >= end || eol[1] != '\n')
			break;
		size_t n = (size_t)(eol - line);
		if (n == 0)
			return e->env.from ? 0 : -1;
		const char *v;
		size_t vl, used;
		if (param(line, n, "id: ", &v, &vl))
			snprintf(e->id, sizeof(e->id), "%.*s", (int)vl, v);
		else if (param(line, n, "arrival: ", &v, &vl))
			e->arrival = number(v, vl);
		else if (param(line, n, "connector: ", &v, &vl))
			snprintf(e->connector, sizeof(e->connector), "%.*s", (int)vl, v);
		else if (param(line, n, "client: ", &v, &vl))
			snprintf(e->client, sizeof(e->client), "%.*s", (int)vl, v);
		else if (param(line, n, "auth: ", &v, &vl) && !e->env.auth) {
			if (!(e->env.auth = strndup(v, vl)))
				return -1;
		}
		else if (param(line, n, "held: ", &v, &vl) && !e->env.held) {
			if (!(e->env.held = strndup(v, vl)))
				return -1;
		}
		else if (param(line, n, "from: ", &v, &vl) && !e->env.from) {
			if (!(e->env.from = read_path(v, vl, &used, true)))
				return -1;
			read_mail_params(&e->env, v + used, v + vl);
		} else if (param(line, n, "rcpt: ", &v, &vl)) {
			if (e->env.nrcpt == cap) {
				cap = cap ? cap * 2 : 8;
				struct smtp_rcpt *nr = realloc(e->env.rcpt, cap * sizeof(*nr));
				if (!nr)
					return -1;
				e->env.rcpt = nr;
			}
			struct smtp_rcpt *r = &e->env.rcpt[e->env.nrcpt];
			memset(r, 0, sizeof(*r));
			if (!(r->addr = read_path(v, vl, &used, false)))
				return -1;
			e->env.nrcpt++;
			read_rcpt_params(r, v + used, v + vl);
		}
		line = eol + 2;
	}
	return -1;
}

void envelope_full_free(struct envelope_full *e)
{
	free(e->env.from);
	free(e->env.envid);
	free(e->env.auth);
	free(e->env.held);
	for (unsigned i = 0; i < e->env.nrcpt; i++) {
		free(e->env.rcpt[i].addr);
		free(e->env.rcpt[i].orcpt);
	}
	free(e->env.rcpt);
	memset(e, 0, sizeof(*e));
}
