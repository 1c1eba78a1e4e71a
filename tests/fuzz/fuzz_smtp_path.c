/* libFuzzer target for the path and ESMTP parameter parser
 * (proto/smtp_path.c). The input is copied to an exact-size heap buffer so
 * any read past len is caught; results are checked for internal
 * consistency (spans in bounds, limits, UTF-8 only when allowed). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_path.h"

static void in_bounds(const char *s, size_t len, struct smtp_span sp)
{
	if (sp.p && (sp.p < s || sp.p + sp.len > s + len))
		abort();
}

static bool has_8bit(struct smtp_span sp)
{
	for (size_t i = 0; i < sp.len; i++)
		if ((unsigned char)sp.p[i] >= 0x80)
			return true;
	return false;
}

static void check_path(const char *s, size_t len, const struct smtp_path *p,
		       unsigned flags)
{
	in_bounds(s, len, p->mailbox);
	in_bounds(s, len, p->local);
	in_bounds(s, len, p->domain);
	if (p->is_null) {
		if (!(flags & SMTP_PATH_ALLOW_NULL) || p->mailbox.len)
			abort();
		return;
	}
	if (!(flags & SMTP_PATH_ALLOW_UTF8) && has_8bit(p->mailbox))
		abort();
	if (p->domain.len == 0) {
		/* only <Postmaster> has no domain */
		if (!(flags & SMTP_PATH_ALLOW_POSTMASTER) || p->mailbox.len != 10)
			abort();
		return;
	}
	if (p->local.len > SMTP_LOCAL_MAX || p->domain.len > SMTP_DOMAIN_MAX ||
	    p->mailbox.len + 2 > SMTP_PATH_MAX)
		abort();
	if (p->mailbox.p != p->local.p ||
	    p->mailbox.len != p->local.len + 1 + p->domain.len ||
	    p->local.p[p->local.len] != '@')
		abort();
	/* a name never ends in a dot */
	if (p->domain_kind == SMTP_DOMAIN_NAME && p->domain.p[p->domain.len - 1] == '.')
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size ? size : 1);
	if (!s)
		abort();
	if (size)
		memcpy(s, data, size);

	for (unsigned flags = 0; flags < 8; flags++) {
		struct smtp_path p;
		size_t used;
		enum smtp_arg_err e = smtp_path_parse(s, size, flags, &p, &used);
		if (used > size)
			abort();
		if (e == SMTP_ARG_OK) {
			check_path(s, size, &p, flags);
			/* UTF-8 allowance only widens the grammar. */
			struct smtp_path q;
			size_t used2;
			if (smtp_path_parse(s, size, flags | SMTP_PATH_ALLOW_UTF8, &q,
					    &used2) != SMTP_ARG_OK || used2 != used)
				abort();
		}
	}

	struct smtp_mail_arg m;
	size_t pos;
	if (smtp_mail_arg_parse(s, size, &m, &pos) == SMTP_ARG_OK) {
		check_path(s, size, &m.path,
			   SMTP_PATH_ALLOW_NULL | (m.smtputf8 ? SMTP_PATH_ALLOW_UTF8 : 0));
		in_bounds(s, size, m.envid);
		if (m.envid.p && !smtp_xtext_valid(m.envid.p, m.envid.len))
			abort();
	} else if (pos > size) {
		abort();
	}

	for (int utf8 = 0; utf8 < 2; utf8++) {
		struct smtp_rcpt_arg r;
		if (smtp_rcpt_arg_parse(s, size, utf8, &r, &pos) == SMTP_ARG_OK) {
			check_path(s, size, &r.path,
				   SMTP_PATH_ALLOW_POSTMASTER |
					   (utf8 ? SMTP_PATH_ALLOW_UTF8 : 0));
			in_bounds(s, size, r.orcpt);
			if ((r.notify & SMTP_NOTIFY_NEVER) && r.notify != SMTP_NOTIFY_NEVER)
				abort();
		} else if (pos > size) {
			abort();
		}
	}

	if (smtp_helo_arg_valid(s, size)) {
		if (size == 0 || size > SMTP_DOMAIN_MAX)
			abort();
		for (size_t i = 0; i < size; i++)
			if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
				abort();
	}
	smtp_xtext_valid(s, size);
	free(s);
	return 0;
}
