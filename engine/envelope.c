/* Envelope block (see envelope.h). */
#include "envelope.h"

#include <stdlib.h>
#include <string.h>

/* Values come from the parser (no CR/LF possible) or the configuration;
 * still, never let one break the line structure. */
static void field(FILE *out, const char *s)
{
	for (; *s; s++)
		fputc(*s == '\r' || *s == '\n' ? ' ' : *s, out);
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

/* Copies the value of a "key: value" line up to the first space when
 * first_word is set. */
static void value(char *dst, size_t cap, const char *p, size_t n, bool first_word)
{
	if (first_word) {
		const char *sp = memchr(p, ' ', n);
		if (sp)
			n = (size_t)(sp - p);
	}
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, p, n);
	dst[n] = '\0';
}

int envelope_parse(const char *p, size_t len, struct envelope_info *e)
{
	memset(e, 0, sizeof(*e));
	if (len < 11 || memcmp(p, "POSTERN/1\r\n", 11) != 0)
		return -1;
	const char *end = p + len;
	for (const char *line = p + 11; line < end;) {
		const char *eol = memchr(line, '\r', (size_t)(end - line));
		if (!eol)
			break;
		size_t n = (size_t)(eol - line);
		if (n == 0)
			return 0;
		if (n > 4 && memcmp(line, "id: ", 4) == 0)
			value(e->id, sizeof(e->id), line + 4, n - 4, false);
		else if (n > 9 && memcmp(line, "arrival: ", 9) == 0)
			e->arrival = strtoll(line + 9, NULL, 10);
		else if (n > 11 && memcmp(line, "connector: ", 11) == 0)
			value(e->connector, sizeof(e->connector), line + 11, n - 11, false);
		else if (n > 8 && memcmp(line, "client: ", 8) == 0)
			value(e->client, sizeof(e->client), line + 8, n - 8, false);
		else if (n > 6 && memcmp(line, "from: ", 6) == 0)
			value(e->from, sizeof(e->from), line + 6, n - 6, true);
		else if (n > 6 && memcmp(line, "rcpt: ", 6) == 0) {
			if (e->nrcpt < 256)
				value(e->rcpt[e->nrcpt], sizeof(e->rcpt[0]), line + 6, n - 6, true);
			e->nrcpt++;
		}
		line = eol + 2;
	}
	return -1;
}
