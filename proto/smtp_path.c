/* RFC 5321 path and ESMTP parameter parser (see smtp_path.h). Strict on the
 * grammar so that the relay decision later works on exactly the domain that
 * delivery would use. */
#include "smtp_path.h"

#include <string.h>
#include <strings.h>

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_atext(unsigned char c, bool utf8)
{
	if (is_alpha(c) || is_digit(c))
		return true;
	if (c >= 0x80)
		return utf8;
	return c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* sub-domain *("." sub-domain), each Let-dig [Ldh-str]; returns length. */
static size_t scan_domain_name(const char *s, size_t len, bool utf8)
{
	size_t i = 0;
	for (;;) {
		size_t label = i;
		while (i < len) {
			unsigned char c = (unsigned char)s[i];
			if (is_alpha(c) || is_digit(c) || c == '-' ||
			    (utf8 && c >= 0x80))
				i++;
			else
				break;
		}
		size_t llen = i - label;
		if (llen == 0 || llen > 63 || s[label] == '-' || s[i - 1] == '-')
			return 0;
		if (i < len && s[i] == '.' && i + 1 < len &&
		    (is_alpha((unsigned char)s[i + 1]) ||
		     is_digit((unsigned char)s[i + 1]) ||
		     (utf8 && (unsigned char)s[i + 1] >= 0x80))) {
			i++;
			continue;
		}
		return i;
	}
}

static bool ipv4_valid(const char *s, size_t len)
{
	int parts = 0;
	size_t i = 0;
	while (i < len) {
		unsigned v = 0;
		size_t start = i;
		while (i < len && is_digit((unsigned char)s[i]) && i - start < 4)
			v = v * 10 + (unsigned)(s[i++] - '0');
		size_t n = i - start;
		if (n == 0 || n > 3 || v > 255 || (n > 1 && s[start] == '0'))
			return false;
		parts++;
		if (i == len)
			break;
		if (s[i] != '.' || parts == 4)
			return false;
		i++;
		if (i == len)
			return false;
	}
	return parts == 4;
}

int smtp_hexval(int c)
{
	if (is_digit((unsigned char)c))
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* RFC 5321 IPv6-addr: full, compressed, and the IPv4-embedded forms. */
static bool ipv6_valid(const char *s, size_t len)
{
	int groups = 0;
	bool compressed = false;
	size_t i = 0;
	if (len >= 2 && s[0] == ':' && s[1] == ':') {
		compressed = true;
		i = 2;
		if (i == len)
			return true;
	} else if (len && s[0] == ':') {
		return false;
	}
	while (i < len) {
		size_t start = i;
		while (i < len && smtp_hexval((unsigned char)s[i]) >= 0 && i - start < 5)
			i++;
		if (i < len && s[i] == '.') {
			/* trailing dotted IPv4 counts for two groups */
			if (!ipv4_valid(s + start, len - start))
				return false;
			groups += 2;
			i = len;
			break;
		}
		size_t n = i - start;
		if (n == 0 || n > 4)
			return false;
		groups++;
		if (i == len)
			break;
		if (s[i] != ':')
			return false;
		i++;
		if (i < len && s[i] == ':') {
			if (compressed)
				return false;
			compressed = true;
			i++;
			if (i == len)
				break;
		} else if (i == len) {
			return false;
		}
	}
	return compressed ? groups <= 7 : groups == 8;
}

/* address-literal "[...]" starting at s[0] == '['; returns length or 0. */
static size_t scan_address_literal(const char *s, size_t len,
				   enum smtp_domain_kind *kind)
{
	const char *close = memchr(s, ']', len);
	if (!close)
		return 0;
	size_t n = (size_t)(close - s) - 1;
	const char *in = s + 1;
	if (n >= 5 && strncasecmp(in, "IPv6:", 5) == 0) {
		if (!ipv6_valid(in + 5, n - 5))
			return 0;
		*kind = SMTP_DOMAIN_IPV6;
	} else if (ipv4_valid(in, n)) {
		*kind = SMTP_DOMAIN_IPV4;
	} else {
		/* General-address-literal: Standardized-tag ":" 1*dcontent */
		size_t t = 0;
		while (t < n && (is_alpha((unsigned char)in[t]) ||
				 is_digit((unsigned char)in[t]) || in[t] == '-'))
			t++;
		if (t == 0 || t >= n || in[t] != ':' || in[t - 1] == '-' ||
		    t + 1 == n)
			return 0;
		for (size_t k = t + 1; k < n; k++) {
			unsigned char c = (unsigned char)in[k];
			if (c < 33 || c > 126 || c == '[' || c == ']' || c == '\\')
				return 0;
		}
		*kind = SMTP_DOMAIN_GENERAL_LITERAL;
	}
	return n + 2;
}

static size_t scan_domain(const char *s, size_t len, bool utf8,
			  enum smtp_domain_kind *kind)
{
	if (len && s[0] == '[')
		return scan_address_literal(s, len, kind);
	*kind = SMTP_DOMAIN_NAME;
	return scan_domain_name(s, len, utf8);
}

/* Dot-string or Quoted-string; returns length or 0. */
static size_t scan_local(const char *s, size_t len, bool utf8, bool *quoted)
{
	size_t i = 0;
	*quoted = false;
	if (len && s[0] == '"') {
		*quoted = true;
		i = 1;
		while (i < len && s[i] != '"') {
			unsigned char c = (unsigned char)s[i];
			if (c == '\\') {
				if (i + 1 >= len)
					return 0;
				unsigned char q = (unsigned char)s[i + 1];
				if (q < 32 || q > 126)
					return 0;
				i += 2;
				continue;
			}
			if (!((c >= 32 && c <= 126) || (utf8 && c >= 0x80)))
				return 0;
			i++;
		}
		return i < len ? i + 1 : 0;
	}
	for (;;) {
		size_t atom = i;
		while (i < len && is_atext((unsigned char)s[i], utf8))
			i++;
		if (i == atom)
			return 0;
		if (i < len && s[i] == '.') {
			i++;
			continue;
		}
		return i;
	}
}

enum smtp_arg_err smtp_path_parse(const char *s, size_t len, unsigned flags,
				  struct smtp_path *out, size_t *consumed)
{
	bool utf8 = flags & SMTP_PATH_ALLOW_UTF8;
	size_t i = 0;
	memset(out, 0, sizeof(*out));
	*consumed = 0;
	if (len < 2 || s[0] != '<')
		return SMTP_ARG_BAD_PATH;
	i = 1;
	if (s[1] == '>') {
		*consumed = 2;
		if (!(flags & SMTP_PATH_ALLOW_NULL))
			return SMTP_ARG_BAD_PATH;
		out->is_null = true;
		out->mailbox.p = s + 1;
		return SMTP_ARG_OK;
	}
	if (s[i] == '@') {
		/* A-d-l: "@" domain *( "," "@" domain ) ":" -- obsolete, ignored */
		for (;;) {
			enum smtp_domain_kind k;
			i++;
			size_t d = scan_domain(s + i, len - i, utf8, &k);
			if (d == 0) {
				*consumed = i;
				return SMTP_ARG_BAD_PATH;
			}
			i += d;
			if (i < len && s[i] == ',' && i + 1 < len && s[i + 1] == '@') {
				i++;
				continue;
			}
			if (i < len && s[i] == ':') {
				i++;
				break;
			}
			*consumed = i;
			return SMTP_ARG_BAD_PATH;
		}
	}
	size_t mb = i;
	size_t l = scan_local(s + i, len - i, utf8, &out->quoted_local);
	if (l == 0) {
		*consumed = i;
		return SMTP_ARG_BAD_PATH;
	}
	out->local.p = s + i;
	out->local.len = l;
	i += l;
	if (i < len && s[i] == '>' && (flags & SMTP_PATH_ALLOW_POSTMASTER) &&
	    !out->quoted_local && l == 10 &&
	    strncasecmp(out->local.p, "postmaster", 10) == 0) {
		out->mailbox.p = s + mb;
		out->mailbox.len = l;
		*consumed = i + 1;
		return SMTP_ARG_OK;
	}
	if (i >= len || s[i] != '@') {
		*consumed = i;
		return SMTP_ARG_BAD_PATH;
	}
	i++;
	size_t d = scan_domain(s + i, len - i, utf8, &out->domain_kind);
	if (d == 0) {
		*consumed = i;
		return SMTP_ARG_BAD_PATH;
	}
	out->domain.p = s + i;
	out->domain.len = d;
	i += d;
	if (i >= len || s[i] != '>') {
		*consumed = i;
		return SMTP_ARG_BAD_PATH;
	}
	out->mailbox.p = s + mb;
	out->mailbox.len = i - mb;
	*consumed = i + 1;
	if (l > SMTP_LOCAL_MAX || d > SMTP_DOMAIN_MAX ||
	    out->mailbox.len + 2 > SMTP_PATH_MAX)
		return SMTP_ARG_PATH_TOO_LONG;
	return SMTP_ARG_OK;
}

int smtp_xtext_char(const char *s, size_t len, size_t *i)
{
	unsigned char c = (unsigned char)s[*i];
	if (c == '+') {
		/* RFC 3461 4: "+" and two upper-case hex digits */
		if (*i + 2 >= len || s[*i + 1] >= 'a' || s[*i + 2] >= 'a')
			return -1;
		int hi = smtp_hexval(s[*i + 1]), lo = smtp_hexval(s[*i + 2]);
		if (hi < 0 || lo < 0)
			return -1;
		*i += 3;
		return hi * 16 + lo;
	}
	if (c < 33 || c > 126 || c == '=')
		return -1;
	*i += 1;
	return c;
}

bool smtp_xtext_valid(const char *s, size_t len)
{
	for (size_t i = 0; i < len;)
		if (smtp_xtext_char(s, len, &i) < 0)
			return false;
	return true;
}

bool smtp_helo_arg_valid(const char *s, size_t len)
{
	enum smtp_domain_kind k;
	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return false;
	size_t n = scan_domain(s, len, false, &k);
	/* A trailing dot is common in the wild (FQDN form) and harmless here. */
	if (n > 0 && n + 1 == len && s[n] == '.' && k == SMTP_DOMAIN_NAME)
		return true;
	return n == len;
}

struct param {
	struct smtp_span key;
	struct smtp_span value;
	bool has_value;
};

/* Splits the next " keyword[=value]" off s; returns bytes used, 0 at end. */
static enum smtp_arg_err next_param(const char *s, size_t len, size_t *pos,
				    struct param *p, bool *done)
{
	size_t i = *pos;
	*done = false;
	if (i == len) {
		*done = true;
		return SMTP_ARG_OK;
	}
	if (s[i] != ' ')
		return SMTP_ARG_SYNTAX;
	while (i < len && s[i] == ' ')
		i++;
	if (i == len) {
		*pos = i;
		*done = true;
		return SMTP_ARG_OK;
	}
	size_t k = i;
	while (i < len && (is_alpha((unsigned char)s[i]) ||
			   is_digit((unsigned char)s[i]) || s[i] == '-'))
		i++;
	if (i == k || !(is_alpha((unsigned char)s[k]) || is_digit((unsigned char)s[k]))) {
		*pos = k;
		return SMTP_ARG_SYNTAX;
	}
	p->key.p = s + k;
	p->key.len = i - k;
	p->has_value = false;
	p->value.p = s + i;
	p->value.len = 0;
	if (i < len && s[i] == '=') {
		i++;
		size_t v = i;
		while (i < len && s[i] != ' ') {
			unsigned char c = (unsigned char)s[i];
			if (c < 33 || c == 127 || c == '=') {
				*pos = i;
				return SMTP_ARG_BAD_PARAM;
			}
			i++;
		}
		p->has_value = true;
		p->value.p = s + v;
		p->value.len = i - v;
		if (p->value.len == 0) {
			*pos = v;
			return SMTP_ARG_BAD_PARAM;
		}
	} else if (i < len && s[i] != ' ') {
		*pos = i;
		return SMTP_ARG_SYNTAX;
	}
	*pos = i;
	return SMTP_ARG_OK;
}

static bool key_is(const struct param *p, const char *name)
{
	return strlen(name) == p->key.len &&
	       strncasecmp(p->key.p, name, p->key.len) == 0;
}

static bool value_is(const struct param *p, const char *name)
{
	return strlen(name) == p->value.len &&
	       strncasecmp(p->value.p, name, p->value.len) == 0;
}

/* "FROM:" / "TO:" then optional spaces (tolerated, as most servers do). */
static bool skip_prefix(const char *s, size_t len, const char *prefix,
			size_t *pos)
{
	size_t n = strlen(prefix);
	if (len < n || strncasecmp(s, prefix, n) != 0)
		return false;
	while (n < len && s[n] == ' ')
		n++;
	*pos = n;
	return true;
}

enum smtp_arg_err smtp_mail_arg_parse(const char *s, size_t len,
				      struct smtp_mail_arg *out,
				      size_t *err_pos)
{
	size_t i, used;
	memset(out, 0, sizeof(*out));
	*err_pos = 0;
	if (!skip_prefix(s, len, "FROM:", &i))
		return SMTP_ARG_SYNTAX;
	/* SMTPUTF8 is a parameter after the path, yet it changes how the path
	 * is read: look for it first. */
	bool utf8 = false;
	for (size_t k = i + 1; k + 8 <= len; k++) {
		if (s[k - 1] == ' ' && strncasecmp(s + k, "SMTPUTF8", 8) == 0 &&
		    (k + 8 == len || s[k + 8] == ' '))
			utf8 = true;
	}
	enum smtp_arg_err e = smtp_path_parse(s + i, len - i,
					      SMTP_PATH_ALLOW_NULL |
						      (utf8 ? SMTP_PATH_ALLOW_UTF8 : 0),
					      &out->path, &used);
	if (e != SMTP_ARG_OK) {
		*err_pos = i + used;
		return e;
	}
	size_t path_at = i;
	i += used;
	for (;;) {
		struct param p;
		bool done;
		e = next_param(s, len, &i, &p, &done);
		if (e != SMTP_ARG_OK) {
			*err_pos = i;
			return e;
		}
		if (done) {
			/* The look-ahead can match inside a quoted local part;
			 * without the real parameter, 8-bit paths are refused. */
			for (size_t k = path_at; utf8 && !out->smtputf8 &&
						 k < path_at + used; k++) {
				if ((unsigned char)s[k] >= 0x80) {
					*err_pos = k;
					return SMTP_ARG_BAD_PATH;
				}
			}
			return SMTP_ARG_OK;
		}
		*err_pos = (size_t)(p.key.p - s);
		if (key_is(&p, "SIZE")) {
			if (out->has_size || !p.has_value || p.value.len > 19)
				return SMTP_ARG_BAD_PARAM;
			uint64_t v = 0;
			for (size_t k = 0; k < p.value.len; k++) {
				if (!is_digit((unsigned char)p.value.p[k]))
					return SMTP_ARG_BAD_PARAM;
				v = v * 10 + (uint64_t)(p.value.p[k] - '0');
			}
			out->has_size = true;
			out->size = v;
		} else if (key_is(&p, "BODY")) {
			if (out->body != SMTP_BODY_NONE || !p.has_value)
				return SMTP_ARG_BAD_PARAM;
			if (value_is(&p, "7BIT"))
				out->body = SMTP_BODY_7BIT;
			else if (value_is(&p, "8BITMIME"))
				out->body = SMTP_BODY_8BITMIME;
			else
				return SMTP_ARG_BAD_PARAM;
		} else if (key_is(&p, "RET")) {
			if (out->ret != SMTP_RET_NONE || !p.has_value)
				return SMTP_ARG_BAD_PARAM;
			if (value_is(&p, "FULL"))
				out->ret = SMTP_RET_FULL;
			else if (value_is(&p, "HDRS"))
				out->ret = SMTP_RET_HDRS;
			else
				return SMTP_ARG_BAD_PARAM;
		} else if (key_is(&p, "ENVID")) {
			if (out->envid.p || !p.has_value ||
			    p.value.len > SMTP_ENVID_MAX ||
			    !smtp_xtext_valid(p.value.p, p.value.len))
				return SMTP_ARG_BAD_PARAM;
			out->envid = p.value;
		} else if (key_is(&p, "SMTPUTF8")) {
			if (out->smtputf8 || p.has_value)
				return SMTP_ARG_BAD_PARAM;
			out->smtputf8 = true;
		} else {
			return SMTP_ARG_UNKNOWN_PARAM;
		}
	}
}

static bool parse_notify(const struct param *p, unsigned *notify)
{
	const char *v = p->value.p;
	size_t n = p->value.len, i = 0;
	unsigned bits = 0;
	while (i < n) {
		size_t k = i;
		while (i < n && v[i] != ',')
			i++;
		size_t w = i - k;
		unsigned bit;
		if (w == 5 && strncasecmp(v + k, "NEVER", 5) == 0)
			bit = SMTP_NOTIFY_NEVER;
		else if (w == 7 && strncasecmp(v + k, "SUCCESS", 7) == 0)
			bit = SMTP_NOTIFY_SUCCESS;
		else if (w == 7 && strncasecmp(v + k, "FAILURE", 7) == 0)
			bit = SMTP_NOTIFY_FAILURE;
		else if (w == 5 && strncasecmp(v + k, "DELAY", 5) == 0)
			bit = SMTP_NOTIFY_DELAY;
		else
			return false;
		if (bits & bit)
			return false;
		bits |= bit;
		if (i < n && ++i == n)
			return false; /* trailing comma */
	}
	/* NEVER must stand alone (RFC 3461 4.1). */
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return false;
	*notify = bits;
	return bits != 0;
}

enum smtp_arg_err smtp_rcpt_arg_parse(const char *s, size_t len,
				      bool allow_utf8,
				      struct smtp_rcpt_arg *out,
				      size_t *err_pos)
{
	size_t i, used;
	memset(out, 0, sizeof(*out));
	*err_pos = 0;
	if (!skip_prefix(s, len, "TO:", &i))
		return SMTP_ARG_SYNTAX;
	enum smtp_arg_err e = smtp_path_parse(
		s + i, len - i,
		SMTP_PATH_ALLOW_POSTMASTER | (allow_utf8 ? SMTP_PATH_ALLOW_UTF8 : 0),
		&out->path, &used);
	if (e != SMTP_ARG_OK) {
		*err_pos = i + used;
		return e;
	}
	i += used;
	for (;;) {
		struct param p;
		bool done;
		e = next_param(s, len, &i, &p, &done);
		if (e != SMTP_ARG_OK) {
			*err_pos = i;
			return e;
		}
		if (done)
			return SMTP_ARG_OK;
		*err_pos = (size_t)(p.key.p - s);
		if (key_is(&p, "NOTIFY")) {
			if (out->notify || !p.has_value ||
			    !parse_notify(&p, &out->notify))
				return SMTP_ARG_BAD_PARAM;
		} else if (key_is(&p, "ORCPT")) {
			const char *semi = p.has_value
				? memchr(p.value.p, ';', p.value.len) : NULL;
			if (out->orcpt.p || !semi || semi == p.value.p ||
			    p.value.len > SMTP_ORCPT_MAX ||
			    !smtp_xtext_valid(semi + 1,
					      p.value.len - (size_t)(semi + 1 - p.value.p)))
				return SMTP_ARG_BAD_PARAM;
			out->orcpt = p.value;
		} else {
			return SMTP_ARG_UNKNOWN_PARAM;
		}
	}
}
