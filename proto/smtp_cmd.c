/* SMTP command-line tokenizer (see smtp_cmd.h). Knows nothing about session
 * state; the session decides what a verb means in its current state. */
#include "smtp_cmd.h"

#include <string.h>
#include <strings.h>

static const char *const verb_names[SMTP_VERB_COUNT] = {
	[SMTP_VERB_UNKNOWN] = "", [SMTP_VERB_HELO] = "HELO",
	[SMTP_VERB_EHLO] = "EHLO", [SMTP_VERB_MAIL] = "MAIL",
	[SMTP_VERB_RCPT] = "RCPT", [SMTP_VERB_DATA] = "DATA",
	[SMTP_VERB_RSET] = "RSET", [SMTP_VERB_NOOP] = "NOOP",
	[SMTP_VERB_QUIT] = "QUIT", [SMTP_VERB_VRFY] = "VRFY",
	[SMTP_VERB_EXPN] = "EXPN", [SMTP_VERB_HELP] = "HELP",
	[SMTP_VERB_STARTTLS] = "STARTTLS", [SMTP_VERB_AUTH] = "AUTH",
	[SMTP_VERB_BDAT] = "BDAT",
};

void smtp_cmd_reader_init(struct smtp_cmd_reader *r)
{
	r->scanned = 0;
	r->discarding = false;
}

const char *smtp_verb_name(enum smtp_verb v)
{
	return (unsigned)v < SMTP_VERB_COUNT ? verb_names[v] : "";
}

enum smtp_verb smtp_cmd_verb(const char *line, size_t len, size_t *verb_len)
{
	size_t n = 0;
	while (n < len && line[n] != ' ')
		n++;
	*verb_len = n;
	/* Every verb has 4 to 8 letters. Fold the word to upper case once and
	 * compare first letters before whole names: this runs for every
	 * command line (a pipelined NOOP flood spent a third of its CPU in
	 * the strlen/strncasecmp of every table entry). */
	if (n < 4 || n > 8)
		return SMTP_VERB_UNKNOWN;
	char u[8];
	for (size_t i = 0; i < n; i++) {
		char ch = line[i];
		if (ch == '\0')  /* keeps the compare below within the names */
			return SMTP_VERB_UNKNOWN;
		u[i] = ch >= 'a' && ch <= 'z' ? (char)(ch - 'a' + 'A') : ch;
	}
	for (int v = 1; v < SMTP_VERB_COUNT; v++) {
		const char *name = verb_names[v];
		if (name[0] == u[0] && strncmp(name, u, n) == 0 && name[n] == '\0')
			return (enum smtp_verb)v;
	}
	return SMTP_VERB_UNKNOWN;
}

enum smtp_cmd_result smtp_cmd_next(struct smtp_cmd_reader *r, const char *buf,
				   size_t len, struct smtp_cmd *cmd,
				   size_t *consumed)
{
	*consumed = 0;
	if (len == 0)
		return SMTP_CMD_AGAIN;
	if (r->scanned > len)
		r->scanned = 0;
	const char *lf = memchr(buf + r->scanned, '\n', len - r->scanned);
	if (!lf) {
		if (r->discarding || len >= SMTP_CMD_LINE_MAX) {
			/* Keep memory bounded: throw the line away as it comes. */
			r->discarding = true;
			r->scanned = 0;
			*consumed = len;
		} else {
			r->scanned = len;
		}
		return SMTP_CMD_AGAIN;
	}
	size_t end = (size_t)(lf - buf);
	*consumed = end + 1;
	r->scanned = 0;
	if (r->discarding || end + 1 > SMTP_CMD_LINE_MAX) {
		r->discarding = false;
		return SMTP_CMD_TOO_LONG;
	}
	if (end > 0 && buf[end - 1] == '\r')
		end--;
	size_t vlen;
	cmd->line = buf;
	cmd->line_len = end;
	cmd->verb = smtp_cmd_verb(buf, end, &vlen);
	size_t a = vlen;
	while (a < end && buf[a] == ' ')
		a++;
	size_t e = end;
	while (e > a && (buf[e - 1] == ' ' || buf[e - 1] == '\t'))
		e--;
	cmd->arg = buf + a;
	cmd->arg_len = e - a;
	return SMTP_CMD_LINE;
}

bool smtp_bdat_arg_parse(const char *arg, size_t len, uint64_t *size, bool *last)
{
	size_t i = 0;
	uint64_t v = 0;
	while (i < len && arg[i] >= '0' && arg[i] <= '9') {
		if (i == 18)
			return false;
		v = v * 10 + (uint64_t)(arg[i] - '0');
		i++;
	}
	if (i == 0)
		return false;
	*size = v;
	*last = false;
	if (i == len)
		return true;
	if (len - i == 5 && arg[i] == ' ' && strncasecmp(arg + i + 1, "LAST", 4) == 0) {
		*last = true;
		return true;
	}
	return false;
}
