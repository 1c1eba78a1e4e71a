/* RFC 5321 path and ESMTP parameter parser for MAIL FROM and RCPT TO.
 * Returns spans into the caller's buffer; never allocates, never logs.
 * Source routes are accepted and stripped (RFC 5321 C. / 4.1.2). */
#ifndef POSTERN_SMTP_PATH_H
#define POSTERN_SMTP_PATH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_LOCAL_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256
#define SMTP_ENVID_MAX 100
#define SMTP_ORCPT_MAX 500

enum smtp_path_flags {
	SMTP_PATH_ALLOW_NULL = 1 << 0,       /* "<>" (MAIL FROM) */
	SMTP_PATH_ALLOW_POSTMASTER = 1 << 1, /* "<Postmaster>" (RCPT TO) */
	SMTP_PATH_ALLOW_UTF8 = 1 << 2,       /* RFC 6531 SMTPUTF8 */
};

enum smtp_arg_err {
	SMTP_ARG_OK = 0,
	SMTP_ARG_SYNTAX,        /* no "FROM:" / "TO:" or junk between parameters */
	SMTP_ARG_BAD_PATH,      /* the path itself is malformed */
	SMTP_ARG_PATH_TOO_LONG, /* local part, domain or path over RFC limits */
	SMTP_ARG_UNKNOWN_PARAM, /* parameter we do not implement: 555 */
	SMTP_ARG_BAD_PARAM,     /* known parameter with a bad or repeated value */
};

enum smtp_domain_kind { SMTP_DOMAIN_NONE, SMTP_DOMAIN_NAME, SMTP_DOMAIN_IPV4,
			SMTP_DOMAIN_IPV6, SMTP_DOMAIN_GENERAL_LITERAL };

struct smtp_span {
	const char *p;
	size_t len;
};

struct smtp_path {
	bool is_null;                 /* "<>" */
	struct smtp_span mailbox;     /* local@domain, source route removed */
	struct smtp_span local;       /* as written, quotes included */
	struct smtp_span domain;      /* empty for <Postmaster> */
	enum smtp_domain_kind domain_kind;
	bool quoted_local;
};

enum smtp_body { SMTP_BODY_NONE, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };
enum smtp_ret { SMTP_RET_NONE, SMTP_RET_FULL, SMTP_RET_HDRS };
enum smtp_notify {
	SMTP_NOTIFY_NEVER = 1 << 0,
	SMTP_NOTIFY_SUCCESS = 1 << 1,
	SMTP_NOTIFY_FAILURE = 1 << 2,
	SMTP_NOTIFY_DELAY = 1 << 3,
};

struct smtp_mail_arg {
	struct smtp_path path;
	bool has_size;
	uint64_t size;
	enum smtp_body body;
	enum smtp_ret ret;
	struct smtp_span envid;       /* xtext as given */
	bool smtputf8;
};

struct smtp_rcpt_arg {
	struct smtp_path path;
	unsigned notify;              /* SMTP_NOTIFY_* or 0 when absent */
	struct smtp_span orcpt;       /* "addr-type;xtext" as given */
};

/* Parses "<...>" at the start of s. *consumed covers the closing '>'. */
enum smtp_arg_err smtp_path_parse(const char *s, size_t len, unsigned flags,
				  struct smtp_path *out, size_t *consumed);

/* Parses the argument of MAIL ("FROM:<path> params"). *err_pos is where the
 * parse stopped on error. */
enum smtp_arg_err smtp_mail_arg_parse(const char *s, size_t len,
				      struct smtp_mail_arg *out,
				      size_t *err_pos);

/* Parses the argument of RCPT ("TO:<path> params"); allow_utf8 when the
 * transaction's MAIL carried SMTPUTF8. */
enum smtp_arg_err smtp_rcpt_arg_parse(const char *s, size_t len,
				      bool allow_utf8,
				      struct smtp_rcpt_arg *out,
				      size_t *err_pos);

/* True for a valid EHLO/HELO argument: a domain name or an address literal. */
bool smtp_helo_arg_valid(const char *s, size_t len);

/* True when s is a valid xtext (RFC 3461 4). */
bool smtp_xtext_valid(const char *s, size_t len);

/* The xtext character at s[*i] decoded, *i moved past it; -1 when it is
 * not valid xtext (*i unchanged). */
int smtp_xtext_char(const char *s, size_t len, size_t *i);

/* The value of a hex digit of either case, or -1. */
int smtp_hexval(int c);

#endif
