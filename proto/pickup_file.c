/* Pickup files (see pickup_file.h): the envelope lines are read with the
 * SMTP path parser, so an address the pickup takes is one RCPT TO would
 * have taken; the message is checked as DATA checks it (NUL, bare CR, line
 * length), LF endings being the usual ones in a file. */
#include "pickup_file.h"

#include <string.h>
#include <strings.h>

#define LINE_MAX_OCTETS 998   /* RFC 5321 4.5.3.1.6, without the CRLF */

static const char *const names[] = {
	[PICKUP_FILE_OK] = "ok",
	[PICKUP_FILE_NO_SENDER] = "no_sender",
	[PICKUP_FILE_NO_RECEIVER] = "no_receiver",
	[PICKUP_FILE_TWO_SENDERS] = "two_senders",
	[PICKUP_FILE_BAD_SENDER] = "bad_sender",
	[PICKUP_FILE_BAD_RECEIVER] = "bad_receiver",
	[PICKUP_FILE_TOO_MANY_RECEIVERS] = "too_many_recipients",
	[PICKUP_FILE_NUL] = "nul",
	[PICKUP_FILE_BARE_CR] = "bare_cr",
	[PICKUP_FILE_LINE_TOO_LONG] = "line_too_long",
	[PICKUP_FILE_NO_MESSAGE] = "no_message",
};

const char *pickup_file_error_name(enum pickup_file_error e)
{
	return (unsigned)e < sizeof(names) / sizeof(names[0]) ? names[e] : "unknown";
}

/* "<addr>", "addr" or "<>" (when null_ok): the mailbox span, in buf. */
static bool address(const char *v, size_t n, bool null_ok, struct smtp_span *out)
{
	char tmp[SMTP_PATH_MAX + 8];
	const char *p = v;
	size_t len = n, shift = 0;
	if (!n)
		return false;
	if (v[0] != '<') {
		if (n + 2 >= sizeof(tmp))
			return false;
		tmp[0] = '<';
		memcpy(tmp + 1, v, n);
		tmp[n + 1] = '>';
		p = tmp;
		len = n + 2;
		shift = 1;
	}
	struct smtp_path path;
	size_t used = 0;
	unsigned flags = (null_ok ? SMTP_PATH_ALLOW_NULL : SMTP_PATH_ALLOW_POSTMASTER) |
			 SMTP_PATH_ALLOW_UTF8;
	if (smtp_path_parse(p, len, flags, &path, &used) != SMTP_ARG_OK || used != len)
		return false;
	if (path.is_null) {
		out->p = v + (v[0] == '<' ? 1 : 0);
		out->len = 0;
		return true;
	}
	/* Back from the copy to the caller's bytes. */
	out->p = p == tmp ? v + (size_t)(path.mailbox.p - tmp) - shift : path.mailbox.p;
	out->len = path.mailbox.len;
	return true;
}

/* An envelope line "Name: value": which one, and its value trimmed. */
static int envelope_line(const char *l, size_t n, const char **v, size_t *vn)
{
	static const char *const keys[] = {"X-Sender", "X-Receiver"};
	for (int k = 0; k < 2; k++) {
		size_t kl = strlen(keys[k]);
		if (n > kl && strncasecmp(l, keys[k], kl) == 0 && l[kl] == ':') {
			const char *p = l + kl + 1, *e = l + n;
			while (p < e && (*p == ' ' || *p == '\t'))
				p++;
			while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
				e--;
			*v = p;
			*vn = (size_t)(e - p);
			return k;
		}
	}
	return -1;
}

enum pickup_file_error pickup_file_parse(const char *buf, size_t len, struct pickup_file *f)
{
	f->nrcpt = 0;
	f->eightbit = false;
	f->wire_len = 0;
	f->err_at = 0;
	bool have_sender = false;
	size_t i = 0;
	/* The envelope lines. */
	while (i < len) {
		const char *nl = memchr(buf + i, '\n', len - i);
		size_t end = nl ? (size_t)(nl - buf) : len;
		size_t n = end - i;
		if (n && buf[i + n - 1] == '\r')
			n--;
		const char *v;
		size_t vn;
		int k = envelope_line(buf + i, n, &v, &vn);
		if (k < 0)
			break;
		f->err_at = i;
		if (memchr(buf + i, '\0', n))
			return PICKUP_FILE_NUL;
		if (k == 0) {
			if (have_sender)
				return PICKUP_FILE_TWO_SENDERS;
			if (!address(v, vn, true, &f->sender))
				return PICKUP_FILE_BAD_SENDER;
			have_sender = true;
		} else {
			if (f->nrcpt >= f->max_rcpt)
				return PICKUP_FILE_TOO_MANY_RECEIVERS;
			if (!address(v, vn, false, &f->rcpt[f->nrcpt]))
				return PICKUP_FILE_BAD_RECEIVER;
			f->nrcpt++;
		}
		i = nl ? end + 1 : len;
	}
	f->err_at = i;
	if (!have_sender)
		return PICKUP_FILE_NO_SENDER;
	if (!f->nrcpt)
		return PICKUP_FILE_NO_RECEIVER;
	if (i >= len)
		return PICKUP_FILE_NO_MESSAGE;
	f->body = i;
	/* The message, as DATA would check it. */
	size_t wire = 0, line = 0;
	bool bol = true;
	for (; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];
		if (bol && c == '.') {
			wire++;
			line++;
		}
		bol = false;
		if (c == '\0') {
			f->err_at = i;
			return PICKUP_FILE_NUL;
		}
		if (c == '\r') {
			if (i + 1 >= len || buf[i + 1] != '\n') {
				f->err_at = i;
				return PICKUP_FILE_BARE_CR;
			}
			continue; /* counted with its LF */
		}
		if (c == '\n') {
			wire += 2;
			line = 0;
			bol = true;
			continue;
		}
		if (c >= 0x80)
			f->eightbit = true;
		if (++line > LINE_MAX_OCTETS) {
			f->err_at = i;
			return PICKUP_FILE_LINE_TOO_LONG;
		}
		wire++;
	}
	if (!bol)
		wire += 2; /* the last line's CRLF */
	f->wire_len = wire;
	return PICKUP_FILE_OK;
}

void pickup_file_wire(const char *buf, size_t len, const struct pickup_file *f, char *out)
{
	size_t o = 0;
	bool bol = true;
	for (size_t i = f->body; i < len; i++) {
		char c = buf[i];
		if (bol && c == '.')
			out[o++] = '.';
		bol = false;
		if (c == '\r')
			continue; /* parse saw its LF */
		if (c == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			bol = true;
			continue;
		}
		out[o++] = c;
	}
	if (!bol) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
}
