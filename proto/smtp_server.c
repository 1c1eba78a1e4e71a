/* SMTP server session state machine (see smtp_server.h). A command table
 * maps each verb to a handler; handlers append replies and may return an
 * event that stops the batch (DATA, QUIT). Sequencing follows RFC 5321 4.1.4. */
#include "smtp_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "ehlo.h"
#include "received.h"

/* A handler returns SMTP_EV_NEED_INPUT to go on with the next command. */
typedef enum smtp_ev (*cmd_handler)(struct smtp_server *s,
				    const struct smtp_cmd *c);

static void set_state(struct smtp_server *s, enum smtp_state st)
{
	s->state = st;
}

static void envelope_reset(struct smtp_envelope *e)
{
	free(e->from);
	free(e->envid);
	free(e->auth);
	free(e->held);
	free(e->route);
	free(e->headers);
	for (unsigned i = 0; i < e->nrcpt; i++) {
		free(e->rcpt[i].addr);
		free(e->rcpt[i].orcpt);
	}
	free(e->rcpt);
	memset(e, 0, sizeof(*e));
}

static void bdat_reset(struct smtp_server *s)
{
	s->bdat_open = false;
	s->bdat_left = 0;
	s->bdat_refusal = NULL;
	s->bdat_crlf_added = false;
}

static void reset_transaction(struct smtp_server *s)
{
	envelope_reset(&s->env);
	bdat_reset(s);
	s->msgid[0] = '\0';
	s->data_end_pending = false;
	if (s->state != SMTP_S_CLOSING)
		set_state(s, s->helo[0] ? SMTP_S_READY : SMTP_S_GREETED);
}

static void reply(struct smtp_server *s, const char *text)
{
	/* Room is reserved before each command; failure here is a bug. */
	bool ok = smtp_reply_add(&s->out, text);
	(void)ok;
}

static const char *const reject_names[SMTP_REJECT_COUNT] = {
	[SMTP_REJECT_RELAY] = "relay",
	[SMTP_REJECT_NO_ROUTE] = "no_route",
	[SMTP_REJECT_NOT_AUTHENTICATED] = "not_authenticated",
	[SMTP_REJECT_RECIPIENTS] = "too_many_recipients",
	[SMTP_REJECT_SIZE] = "size",
	[SMTP_REJECT_HEADER_SIZE] = "header_size",
	[SMTP_REJECT_HOP_COUNT] = "hop_count",
	[SMTP_REJECT_BARE_LF] = "bare_lf",
	[SMTP_REJECT_NUL] = "nul",
	[SMTP_REJECT_LINE_LENGTH] = "line_length",
	[SMTP_REJECT_STORAGE] = "storage",
	[SMTP_REJECT_PROTOCOL] = "protocol",
	[SMTP_REJECT_TOO_MANY_ERRORS] = "too_many_errors",
	[SMTP_REJECT_TLS_REQUIRED] = "tls_required",
	[SMTP_REJECT_CLIENT_CERT] = "client_certificate",
	[SMTP_REJECT_AUTH_TLS] = "auth_without_tls",
	[SMTP_REJECT_SENDER] = "sender_permission",
	[SMTP_REJECT_UNKNOWN_RECIPIENT] = "unknown_recipient",
	[SMTP_REJECT_CONTENT_RULE] = "content_rule",
};

const char *smtp_reject_name(enum smtp_reject r)
{
	return (unsigned)r < SMTP_REJECT_COUNT ? reject_names[r] : "unknown";
}

/* Queues a refusal and tells the observer. */
static void refuse(struct smtp_server *s, enum smtp_reject why, const char *text,
		   const char *rcpt)
{
	reply(s, text);
	s->rejects++;
	if (s->hooks.reject)
		s->hooks.reject(s->hooks.ctx, why, text, rcpt);
}

static enum smtp_ev close_with(struct smtp_server *s, const char *text)
{
	reply(s, text);
	set_state(s, SMTP_S_CLOSING);
	return SMTP_EV_CLOSE;
}

static bool errors_over(const struct smtp_server *s)
{
	return s->p->max_protocol_errors && s->errors > s->p->max_protocol_errors;
}

static bool logons_over(const struct smtp_server *s)
{
	return s->p->max_logon_failures && s->auth_failures >= s->p->max_logon_failures;
}

bool smtp_server_ended_for_errors(const struct smtp_server *s)
{
	return s->state == SMTP_S_CLOSING && (errors_over(s) || logons_over(s));
}

static enum smtp_ev too_many_errors(struct smtp_server *s)
{
	s->rejects++;
	if (s->hooks.reject)
		s->hooks.reject(s->hooks.ctx, SMTP_REJECT_TOO_MANY_ERRORS, R_TOO_MANY_ERRORS, NULL);
	return close_with(s, R_TOO_MANY_ERRORS);
}

/* Counts a protocol error; past the connector's limit the session ends. */
static enum smtp_ev proto_error(struct smtp_server *s, const char *text)
{
	s->errors++;
	if (errors_over(s))
		return too_many_errors(s);
	refuse(s, SMTP_REJECT_PROTOCOL, text, NULL);
	return SMTP_EV_NEED_INPUT;
}

/* NOOP, RSET, VRFY, EXPN and HELP move no mail. Past the connector's
 * max_junk_commands since the session's last accepted message (Postfix's
 * smtpd_junk_command_limit, 100 there too), each one also counts as a
 * protocol error: a client that only keeps a worker busy with them, reading
 * the replies or not, ends at max_protocol_errors instead of never. True
 * when the session must end now. */
static bool junk_over(struct smtp_server *s)
{
	if (!s->p->max_junk_commands || ++s->junk <= s->p->max_junk_commands)
		return false;
	s->errors++;
	return errors_over(s);
}

static uint64_t size_limit(const struct smtp_server *s)
{
	return s->p->bypass_size_limit ? 0 : s->p->max_message_size;
}

static enum smtp_ev do_hello(struct smtp_server *s, const struct smtp_cmd *c,
			     bool esmtp)
{
	if (!smtp_helo_arg_valid(c->arg, c->arg_len))
		return proto_error(s, R_BAD_DOMAIN);
	/* HELO/EHLO also resets any transaction (RFC 5321 4.1.4); a BDAT
	 * message already begun is dropped. */
	enum smtp_ev ev = s->bdat_open ? SMTP_EV_DATA_REJECT : SMTP_EV_NEED_INPUT;
	envelope_reset(&s->env);
	bdat_reset(s);
	memcpy(s->helo, c->arg, c->arg_len);
	s->helo[c->arg_len] = '\0';
	s->esmtp = esmtp;
	set_state(s, SMTP_S_READY);
	if (!esmtp) {
		smtp_reply_addf(&s->out, "250 %s Hello [%s]", s->p->hostname,
				s->client_ip);
		return ev;
	}
	struct smtp_ehlo_caps caps = {.max_size = size_limit(s),
				      .starttls = s->p->starttls && !s->tls,
				      .auth_mechs = smtp_server_auth_offered(s) ? s->p->auth_mechs : 0};
	smtp_ehlo_reply(&s->out, s->p->hostname, s->client_ip, &caps);
	return ev;
}

static enum smtp_ev cmd_helo(struct smtp_server *s, const struct smtp_cmd *c)
{
	return do_hello(s, c, false);
}

static enum smtp_ev cmd_ehlo(struct smtp_server *s, const struct smtp_cmd *c)
{
	return do_hello(s, c, true);
}

static enum smtp_ev cmd_mail(struct smtp_server *s, const struct smtp_cmd *c)
{
	if (s->state != SMTP_S_READY)
		return proto_error(s, R_BAD_SEQUENCE);
	if ((s->p->require_tls || s->p->require_client_cert) && !s->tls) {
		refuse(s, SMTP_REJECT_TLS_REQUIRED, R_TLS_REQUIRED, NULL);
		return SMTP_EV_NEED_INPUT;
	}
	if (s->p->require_client_cert && !s->client_cert) {
		refuse(s, SMTP_REJECT_CLIENT_CERT, R_CLIENT_CERT_REQUIRED, NULL);
		return SMTP_EV_NEED_INPUT;
	}
	if (!s->p->may_submit && !s->authenticated) {
		refuse(s, SMTP_REJECT_NOT_AUTHENTICATED, R_NOT_AUTHENTICATED, NULL);
		return SMTP_EV_NEED_INPUT;
	}
	struct smtp_mail_arg m;
	size_t pos;
	switch (smtp_mail_arg_parse(c->arg, c->arg_len, &m, &pos)) {
	case SMTP_ARG_OK:
		break;
	case SMTP_ARG_SYNTAX:
		return proto_error(s, R_SYNTAX);
	case SMTP_ARG_BAD_PATH:
	case SMTP_ARG_PATH_TOO_LONG:
		return proto_error(s, R_BAD_SENDER);
	case SMTP_ARG_UNKNOWN_PARAM:
		return proto_error(s, R_UNKNOWN_PARAM);
	case SMTP_ARG_BAD_PARAM:
		return proto_error(s, R_BAD_PARAM);
	}
	bool has_params = m.has_size || m.body || m.ret || m.envid.p || m.smtputf8;
	if (has_params && !s->esmtp)
		return proto_error(s, R_UNKNOWN_PARAM);
	uint64_t lim = size_limit(s);
	if (m.has_size && lim && m.size > lim) {
		refuse(s, SMTP_REJECT_SIZE, R_TOO_BIG, NULL);
		return SMTP_EV_NEED_INPUT;
	}
	const char *denied = s->p->mail_policy && !m.path.is_null
		? s->p->mail_policy(s->p->policy_ctx, &m.path, s->authenticated) : NULL;
	if (denied) {
		refuse(s, SMTP_REJECT_SENDER, denied, NULL);
		return SMTP_EV_NEED_INPUT;
	}
	if (s->hooks.admit_message && !s->hooks.admit_message(s->hooks.ctx))
		return close_with(s, R_RATE_EXCEEDED);
	envelope_reset(&s->env);
	s->env.from = m.path.is_null ? strdup("") : strndup(m.path.mailbox.p, m.path.mailbox.len);
	s->env.envid = m.envid.p ? strndup(m.envid.p, m.envid.len) : NULL;
	s->env.auth = s->authenticated ? strdup(s->auth_user) : NULL;
	if (!s->env.from || (m.envid.p && !s->env.envid) || (s->authenticated && !s->env.auth)) {
		envelope_reset(&s->env);
		reply(s, R_LOCAL_ERROR);
		return SMTP_EV_NEED_INPUT;
	}
	s->env.size = m.has_size ? m.size : 0;
	s->env.body = m.body;
	s->env.ret = m.ret;
	s->env.smtputf8 = m.smtputf8;
	s->env.anonymous = s->p->anonymous_only && !s->authenticated;
	set_state(s, SMTP_S_MAIL);
	reply(s, R_MAIL_OK);
	return SMTP_EV_NEED_INPUT;
}

static bool add_rcpt(struct smtp_envelope *e, const struct smtp_rcpt_arg *r)
{
	if (e->nrcpt == e->rcpt_cap) {
		unsigned cap = e->rcpt_cap ? e->rcpt_cap * 2 : 4;
		struct smtp_rcpt *n = realloc(e->rcpt, cap * sizeof(*n));
		if (!n)
			return false;
		e->rcpt = n;
		e->rcpt_cap = cap;
	}
	struct smtp_rcpt *x = &e->rcpt[e->nrcpt];
	x->addr = strndup(r->path.mailbox.p, r->path.mailbox.len);
	x->orcpt = r->orcpt.p ? strndup(r->orcpt.p, r->orcpt.len) : NULL;
	x->notify = r->notify;
	if (!x->addr || (r->orcpt.p && !x->orcpt)) {
		free(x->addr);
		free(x->orcpt);
		return false;
	}
	e->nrcpt++;
	return true;
}

static enum smtp_ev cmd_rcpt(struct smtp_server *s, const struct smtp_cmd *c)
{
	/* Not once BDAT chunks have begun: the envelope went before them. */
	if ((s->state != SMTP_S_MAIL && s->state != SMTP_S_RCPT) || s->bdat_open)
		return proto_error(s, R_BAD_SEQUENCE);
	struct smtp_rcpt_arg r;
	size_t pos;
	switch (smtp_rcpt_arg_parse(c->arg, c->arg_len, s->env.smtputf8, &r, &pos)) {
	case SMTP_ARG_OK:
		break;
	case SMTP_ARG_SYNTAX:
		return proto_error(s, R_SYNTAX);
	case SMTP_ARG_BAD_PATH:
	case SMTP_ARG_PATH_TOO_LONG:
		return proto_error(s, R_BAD_RCPT);
	case SMTP_ARG_UNKNOWN_PARAM:
		return proto_error(s, R_UNKNOWN_PARAM);
	case SMTP_ARG_BAD_PARAM:
		return proto_error(s, R_BAD_PARAM);
	}
	if ((r.notify || r.orcpt.p) && !s->esmtp)
		return proto_error(s, R_UNKNOWN_PARAM);
	if (s->p->max_recipients && s->env.nrcpt >= s->p->max_recipients) {
		refuse(s, SMTP_REJECT_RECIPIENTS, R_TOO_MANY_RCPTS, NULL);
		return SMTP_EV_NEED_INPUT;
	}
	const char *refusal = s->p->rcpt_policy
		? s->p->rcpt_policy(s->p->policy_ctx, &r.path, s->authenticated) : NULL;
	if (refusal) {
		char rcpt[SMTP_PATH_MAX + 1];
		size_t n = r.path.mailbox.len < SMTP_PATH_MAX ? r.path.mailbox.len : SMTP_PATH_MAX;
		memcpy(rcpt, r.path.mailbox.p, n);
		rcpt[n] = '\0';
		refuse(s, strcmp(refusal, R_UNABLE_TO_ROUTE) == 0 ? SMTP_REJECT_NO_ROUTE
			   : strcmp(refusal, R_RECIPIENT_NOT_FOUND) == 0 ? SMTP_REJECT_UNKNOWN_RECIPIENT
			   : SMTP_REJECT_RELAY, refusal, rcpt);
		return SMTP_EV_NEED_INPUT;
	}
	if (!add_rcpt(&s->env, &r)) {
		reply(s, R_LOCAL_ERROR);
		return SMTP_EV_NEED_INPUT;
	}
	set_state(s, SMTP_S_RCPT);
	reply(s, R_RCPT_OK);
	return SMTP_EV_NEED_INPUT;
}

static enum smtp_ev cmd_data(struct smtp_server *s, const struct smtp_cmd *c)
{
	if (c->arg_len)
		return proto_error(s, R_SYNTAX);
	if (s->state != SMTP_S_RCPT)
		return proto_error(s, R_BAD_SEQUENCE);
	if (s->bdat_open) {
		/* RFC 3030 2: DATA after BDAT is 503; the transaction is
		 * left in no state worth keeping, so it ends here. */
		reset_transaction(s);
		enum smtp_ev e = proto_error(s, R_BAD_SEQUENCE);
		return e == SMTP_EV_CLOSE ? e : SMTP_EV_DATA_REJECT;
	}
	struct smtp_data_limits lim = {
		.max_size = size_limit(s),
		.max_header_size = s->p->max_header_size,
		.max_hops = s->p->max_hop_count,
	};
	smtp_data_scan_init(&s->scan, &lim);
	set_state(s, SMTP_S_DATA);
	reply(s, R_START_DATA);
	return SMTP_EV_DATA_BEGIN;
}

/* RFC 3030. The chunk's octets follow the command line at once, so every
 * BDAT whose size parses has them read, even one that is refused: they are
 * never taken for commands. */
static enum smtp_ev cmd_bdat(struct smtp_server *s, const struct smtp_cmd *c)
{
	uint64_t size;
	bool last;
	if (!smtp_bdat_arg_parse(c->arg, c->arg_len, &size, &last)) {
		/* Without its size a chunk cannot be told from the commands
		 * after it: nothing more is read from this client. */
		s->errors++;
		refuse(s, SMTP_REJECT_PROTOCOL, R_SYNTAX, NULL);
		set_state(s, SMTP_S_CLOSING);
		return SMTP_EV_CLOSE;
	}
	s->bdat_left = s->bdat_size = size;
	s->bdat_last = last;
	s->bdat_refusal = NULL;
	s->bdat_proto = false;
	s->bdat_resume = s->state;
	uint64_t lim = size_limit(s);
	uint64_t had = s->bdat_open ? s->scan.size : 0;
	if (s->state != SMTP_S_RCPT || !s->esmtp) {
		s->bdat_refusal = R_BAD_SEQUENCE;
		s->bdat_proto = true;
	} else if (lim && (size > lim || had + size > lim)) {
		/* Known before a byte is read: none is stored. */
		s->bdat_refusal = R_TOO_BIG;
		s->bdat_why = SMTP_REJECT_SIZE;
	}
	set_state(s, SMTP_S_BDAT);
	if (s->bdat_refusal || s->bdat_open)
		return SMTP_EV_NEED_INPUT;
	struct smtp_data_limits dl = {
		.max_size = lim,
		.max_header_size = s->p->max_header_size,
		.max_hops = s->p->max_hop_count,
	};
	smtp_data_scan_init(&s->scan, &dl);
	s->bdat_open = true;
	s->bdat_line_start = true;
	s->bdat_crlf_added = false;
	return SMTP_EV_DATA_BEGIN;
}

static enum smtp_ev cmd_rset(struct smtp_server *s, const struct smtp_cmd *c)
{
	if (c->arg_len)
		return proto_error(s, R_SYNTAX);
	bool open = s->bdat_open;
	reset_transaction(s);
	reply(s, R_RESET);
	return open ? SMTP_EV_DATA_REJECT : SMTP_EV_NEED_INPUT;
}

static enum smtp_ev cmd_noop(struct smtp_server *s, const struct smtp_cmd *c)
{
	(void)c;
	reply(s, R_NOOP_OK);
	return SMTP_EV_NEED_INPUT;
}

static enum smtp_ev cmd_quit(struct smtp_server *s, const struct smtp_cmd *c)
{
	(void)c;
	return close_with(s, R_QUIT);
}

static enum smtp_ev cmd_vrfy(struct smtp_server *s, const struct smtp_cmd *c)
{
	if (!c->arg_len)
		return proto_error(s, R_SYNTAX);
	reply(s, R_VRFY);
	return SMTP_EV_NEED_INPUT;
}

static enum smtp_ev cmd_expn(struct smtp_server *s, const struct smtp_cmd *c)
{
	(void)c;
	reply(s, R_NOT_IMPLEMENTED);
	return SMTP_EV_NEED_INPUT;
}

static enum smtp_ev cmd_help(struct smtp_server *s, const struct smtp_cmd *c)
{
	(void)c;
	reply(s, R_HELP);
	return SMTP_EV_NEED_INPUT;
}

static enum smtp_ev cmd_unknown(struct smtp_server *s, const struct smtp_cmd *c)
{
	(void)c;
	return proto_error(s, R_UNRECOGNIZED);
}

/* RFC 3207. Not offered (no certificate): unrecognised, like any verb we
 * do not announce. */
static enum smtp_ev cmd_starttls(struct smtp_server *s, const struct smtp_cmd *c)
{
	if (!s->p->starttls)
		return cmd_unknown(s, c);
	if (c->arg_len)
		return proto_error(s, R_SYNTAX);
	if (s->tls || s->bdat_open)
		return proto_error(s, R_BAD_SEQUENCE);
	if (s->hooks.starttls && !s->hooks.starttls(s->hooks.ctx)) {
		reply(s, R_TLS_UNAVAILABLE);
		return SMTP_EV_NEED_INPUT;
	}
	reply(s, R_STARTTLS_READY);
	set_state(s, SMTP_S_STARTTLS);
	return SMTP_EV_STARTTLS;
}

/* ---- AUTH (RFC 4954: PLAIN RFC 4616, LOGIN) ---------------------------- */

enum { AUTH_STEP_PLAIN, AUTH_STEP_LOGIN_USER, AUTH_STEP_LOGIN_PASS };

static void auth_wipe(struct smtp_server *s)
{
	/* volatile: the wipe must not be optimised away */
	volatile char *p = s->auth_pass;
	for (size_t i = 0; i < sizeof(s->auth_pass); i++)
		p[i] = 0;
}

static enum smtp_ev auth_fail_reply(struct smtp_server *s, const char *text)
{
	auth_wipe(s);
	s->auth_user[0] = '\0';
	set_state(s, SMTP_S_READY);
	reply(s, text);
	return SMTP_EV_NEED_INPUT;
}

/* Decodes one base64 response ("=" is an empty one) into out. */
static bool auth_decode(const char *p, size_t n, unsigned char *out, size_t cap, size_t *len)
{
	if (n == 1 && p[0] == '=') {
		*len = 0;
		return true;
	}
	return base64_decode(p, n, out, cap, len);
}

static bool copy_name(char *dst, const unsigned char *p, size_t n)
{
	if (n > SMTP_AUTH_NAME_MAX || memchr(p, '\0', n))
		return false;
	memcpy(dst, p, n);
	dst[n] = '\0';
	return true;
}

/* One response (the initial one or a continuation line). */
static enum smtp_ev auth_response(struct smtp_server *s, const char *p, size_t n)
{
	if (n == 1 && p[0] == '*')
		return auth_fail_reply(s, R_AUTH_CANCELLED);
	unsigned char buf[3 * SMTP_AUTH_NAME_MAX + 3];
	size_t len;
	if (!auth_decode(p, n, buf, sizeof(buf), &len))
		return auth_fail_reply(s, R_AUTH_BAD_RESPONSE);
	switch (s->auth_step) {
	case AUTH_STEP_PLAIN: {
		/* authzid NUL authcid NUL passwd; an authzid other than the
		 * authcid (acting for someone else) is not allowed. */
		const unsigned char *z = memchr(buf, '\0', len);
		const unsigned char *c = z ? memchr(z + 1, '\0', len - (size_t)(z + 1 - buf)) : NULL;
		if (!c)
			return auth_fail_reply(s, R_AUTH_BAD_RESPONSE);
		size_t zl = (size_t)(z - buf), cl = (size_t)(c - z - 1);
		size_t pl = len - (size_t)(c + 1 - buf);
		if (!copy_name(s->auth_user, z + 1, cl) || !copy_name(s->auth_pass, c + 1, pl) ||
		    (zl && (zl != cl || memcmp(buf, z + 1, zl) != 0))) {
			/* not credentials we can check: a failure like a wrong one */
			auth_wipe(s);
			s->auth_pass[0] = '\0';
			s->auth_user[0] = '\0';
			set_state(s, SMTP_S_AUTH_CHECK);
			smtp_server_auth_result(s, false, false);
			return s->state == SMTP_S_CLOSING ? SMTP_EV_CLOSE : SMTP_EV_NEED_INPUT;
		}
		break;
	}
	case AUTH_STEP_LOGIN_USER:
		if (!copy_name(s->auth_user, buf, len))
			return auth_fail_reply(s, R_AUTH_BAD_RESPONSE);
		s->auth_step = AUTH_STEP_LOGIN_PASS;
		set_state(s, SMTP_S_AUTH);
		reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
		return SMTP_EV_NEED_INPUT;
	case AUTH_STEP_LOGIN_PASS:
		if (!copy_name(s->auth_pass, buf, len))
			return auth_fail_reply(s, R_AUTH_BAD_RESPONSE);
		break;
	}
	set_state(s, SMTP_S_AUTH_CHECK);
	return SMTP_EV_AUTH;
}

static enum smtp_ev cmd_auth(struct smtp_server *s, const struct smtp_cmd *c)
{
	if (!s->p->auth_mechs)
		return cmd_unknown(s, c);
	if (s->authenticated || s->state != SMTP_S_READY)
		return proto_error(s, R_BAD_SEQUENCE);
	if (!s->tls && !s->p->auth_without_tls) {
		refuse(s, SMTP_REJECT_AUTH_TLS, R_AUTH_NEED_TLS, NULL);
		return SMTP_EV_NEED_INPUT;
	}
	const char *a = c->arg, *end = c->arg + c->arg_len;
	const char *sp = memchr(a, ' ', c->arg_len);
	size_t ml = (size_t)((sp ? sp : end) - a);
	const char *ir = sp ? sp + 1 : NULL;
	while (ir && ir < end && *ir == ' ')
		ir++;
	unsigned mech = 0;
	if (ml == 5 && strncasecmp(a, "PLAIN", 5) == 0)
		mech = SMTP_AUTH_PLAIN;
	else if (ml == 5 && strncasecmp(a, "LOGIN", 5) == 0)
		mech = SMTP_AUTH_LOGIN;
	if (!ml)
		return proto_error(s, R_SYNTAX);
	if (!(mech & s->p->auth_mechs)) {
		reply(s, R_AUTH_MECHANISM);
		return SMTP_EV_NEED_INPUT;
	}
	s->auth_user[0] = '\0';
	s->auth_step = mech == SMTP_AUTH_PLAIN ? AUTH_STEP_PLAIN : AUTH_STEP_LOGIN_USER;
	if (ir && ir < end)
		return auth_response(s, ir, (size_t)(end - ir));
	set_state(s, SMTP_S_AUTH);
	/* PLAIN: an empty challenge; LOGIN: "Username:" */
	reply(s, mech == SMTP_AUTH_PLAIN ? "334 " : "334 VXNlcm5hbWU6");
	return SMTP_EV_NEED_INPUT;
}

void smtp_server_auth_result(struct smtp_server *s, bool ok, bool temp)
{
	if (s->state != SMTP_S_AUTH_CHECK)
		return;
	auth_wipe(s);
	set_state(s, SMTP_S_READY);
	if (ok) {
		s->authenticated = true;
		reply(s, R_AUTH_OK);
		return;
	}
	s->auth_user[0] = '\0';
	if (temp) {
		reply(s, R_AUTH_TEMPORARY);
		return;
	}
	s->auth_failures++;
	s->rejects++;
	if (logons_over(s)) {
		if (s->hooks.reject)
			s->hooks.reject(s->hooks.ctx, SMTP_REJECT_TOO_MANY_ERRORS, R_TOO_MANY_ERRORS,
					NULL);
		close_with(s, R_TOO_MANY_ERRORS);
		return;
	}
	reply(s, R_AUTH_INVALID);
}

enum cmd_flags {
	CMD_NEEDS_HELLO = 1 << 0, /* refused with 503 before HELO/EHLO */
	CMD_ENDS_IDLE = 1 << 1,   /* a draining session closes before it */
	CMD_JUNK = 1 << 2,        /* moves no mail: counted by junk_over() */
};

static const struct {
	cmd_handler fn;
	unsigned flags;
} commands[SMTP_VERB_COUNT] = {
	[SMTP_VERB_UNKNOWN] = {cmd_unknown, 0},
	[SMTP_VERB_HELO] = {cmd_helo, CMD_ENDS_IDLE},
	[SMTP_VERB_EHLO] = {cmd_ehlo, CMD_ENDS_IDLE},
	[SMTP_VERB_MAIL] = {cmd_mail, CMD_NEEDS_HELLO | CMD_ENDS_IDLE},
	[SMTP_VERB_RCPT] = {cmd_rcpt, CMD_NEEDS_HELLO},
	[SMTP_VERB_DATA] = {cmd_data, CMD_NEEDS_HELLO},
	[SMTP_VERB_RSET] = {cmd_rset, CMD_JUNK},
	[SMTP_VERB_NOOP] = {cmd_noop, CMD_JUNK},
	[SMTP_VERB_QUIT] = {cmd_quit, 0},
	[SMTP_VERB_VRFY] = {cmd_vrfy, CMD_ENDS_IDLE | CMD_JUNK},
	[SMTP_VERB_EXPN] = {cmd_expn, CMD_ENDS_IDLE | CMD_JUNK},
	[SMTP_VERB_HELP] = {cmd_help, CMD_JUNK},
	[SMTP_VERB_STARTTLS] = {cmd_starttls, CMD_ENDS_IDLE},
	[SMTP_VERB_AUTH] = {cmd_auth, CMD_ENDS_IDLE},
	[SMTP_VERB_BDAT] = {cmd_bdat, 0},
};

void smtp_server_init(struct smtp_server *s, const struct smtp_server_params *p,
		      const char *client_ip, char *out, size_t outcap)
{
	memset(s, 0, sizeof(*s));
	s->p = p;
	s->state = SMTP_S_GREETED;
	smtp_cmd_reader_init(&s->rd);
	size_t n = strlen(client_ip);
	if (n >= sizeof(s->client_ip))
		n = sizeof(s->client_ip) - 1;
	memcpy(s->client_ip, client_ip, n);
	s->out.p = out;
	s->out.cap = outcap;
	smtp_reply_addf(&s->out, "220 %s Postern ESMTP service ready", p->hostname);
}

void smtp_server_free(struct smtp_server *s)
{
	auth_wipe(s);
	envelope_reset(&s->env);
}

static size_t feed_commands(struct smtp_server *s, const char *in, size_t len,
			    struct smtp_event *ev)
{
	size_t used = 0;
	for (;;) {
		if (smtp_reply_room(&s->out) < SMTP_REPLY_LINE_MAX * 2) {
			ev->type = SMTP_EV_FLUSH;
			return used;
		}
		struct smtp_cmd c;
		size_t n;
		enum smtp_cmd_result r = smtp_cmd_next(&s->rd, in + used,
						       len - used, &c, &n);
		used += n;
		if (r == SMTP_CMD_AGAIN) {
			ev->type = SMTP_EV_NEED_INPUT;
			return used;
		}
		enum smtp_ev e;
		bool auth_line = s->state == SMTP_S_AUTH;
		if (r == SMTP_CMD_LINE && s->hooks.command) {
			/* Credentials are never shown: an AUTH response at all,
			 * the initial response of an AUTH command. */
			char masked[64];
			const char *shown = c.line;
			size_t shown_len = c.line_len;
			if (auth_line) {
				shown = "****";
				shown_len = 4;
			} else if (c.verb == SMTP_VERB_AUTH) {
				const char *sp = memchr(c.arg, ' ', c.arg_len);
				size_t keep = (size_t)((sp ? sp : c.arg + c.arg_len) - c.line);
				int k = snprintf(masked, sizeof(masked), "%.*s%s",
						 (int)(keep < 40 ? keep : 40), c.line, sp ? " ****" : "");
				shown = masked;
				shown_len = (size_t)k;
			}
			s->hooks.command(s->hooks.ctx, shown, shown_len);
		}
		if (auth_line && r == SMTP_CMD_TOO_LONG) {
			e = auth_fail_reply(s, R_AUTH_BAD_RESPONSE);
		} else if (auth_line) {
			e = auth_response(s, c.line, c.line_len);
		} else if (r == SMTP_CMD_TOO_LONG) {
			e = proto_error(s, R_LINE_TOO_LONG);
		} else {
			unsigned f = commands[c.verb].flags;
			if (s->draining && (f & CMD_ENDS_IDLE) &&
			    !smtp_server_in_transaction(s))
				e = close_with(s, R_SHUTTING_DOWN);
			else if ((f & CMD_NEEDS_HELLO) && s->state == SMTP_S_GREETED)
				e = proto_error(s, R_BAD_SEQUENCE);
			else if ((f & CMD_JUNK) && junk_over(s))
				e = too_many_errors(s);
			else
				e = commands[c.verb].fn(s, &c);
		}
		if (e != SMTP_EV_NEED_INPUT || s->state == SMTP_S_BDAT) {
			ev->type = e;
			return used;
		}
	}
}

static const char *data_error_reply(unsigned errors, enum smtp_reject *why)
{
	/* The smuggling defences come first: they are the ones that matter most. */
	static const struct {
		unsigned bit;
		enum smtp_reject why;
		const char *text;
	} order[] = {
		{SMTP_DATA_BARE_CR_LF, SMTP_REJECT_BARE_LF, R_BARE_LF},
		{SMTP_DATA_NUL, SMTP_REJECT_NUL, R_NUL},
		{SMTP_DATA_TOO_BIG, SMTP_REJECT_SIZE, R_TOO_BIG},
		{SMTP_DATA_HEADER_TOO_BIG, SMTP_REJECT_HEADER_SIZE, R_HEADER_TOO_BIG},
		{SMTP_DATA_TOO_MANY_HOPS, SMTP_REJECT_HOP_COUNT, R_HOPS},
	};
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		if (errors & order[i].bit) {
			*why = order[i].why;
			return order[i].text;
		}
	}
	*why = SMTP_REJECT_LINE_LENGTH;
	return R_DATA_LINE_TOO_LONG;
}

/* The end of a message the DATA scanner found fault with (DATA or the
 * last BDAT chunk): refused, the transaction reset. */
static size_t refuse_scanned(struct smtp_server *s, struct smtp_event *ev)
{
	enum smtp_reject why;
	const char *text = data_error_reply(s->scan.errors, &why);
	refuse(s, why, text, NULL);
	reset_transaction(s);
	ev->type = SMTP_EV_DATA_REJECT;
	return 0;
}

static size_t finish_data(struct smtp_server *s, struct smtp_event *ev)
{
	if (smtp_reply_room(&s->out) < SMTP_REPLY_LINE_MAX) {
		ev->type = SMTP_EV_FLUSH;
		return 0;
	}
	s->data_end_pending = false;
	if (s->scan.errors)
		return refuse_scanned(s, ev);
	s->env.dotless = s->scan.dot_lines == 0;
	set_state(s, SMTP_S_STORING);
	ev->type = SMTP_EV_DATA_END;
	return 0;
}

static size_t feed_data(struct smtp_server *s, const char *in, size_t len,
			struct smtp_event *ev)
{
	if (s->data_end_pending)
		return finish_data(s, ev);
	size_t body;
	bool end;
	size_t n = smtp_data_scan(&s->scan, in, len, &body, &end);
	if (end)
		s->data_end_pending = true;
	if (body && !s->scan.errors) {
		ev->type = SMTP_EV_DATA_CHUNK;
		ev->data = in;
		ev->len = body;
		return n;
	}
	if (end)
		return n + finish_data(s, ev);
	ev->type = SMTP_EV_NEED_INPUT;
	return n;
}

static void chunk_event(struct smtp_event *ev, const char *p, size_t n,
			enum smtp_chunk_form form)
{
	ev->type = SMTP_EV_DATA_CHUNK;
	ev->data = p;
	ev->len = n;
	ev->form = form;
}

/* The current chunk's octets are all in: its reply, or the message's end. */
static size_t finish_bdat(struct smtp_server *s, struct smtp_event *ev)
{
	if (smtp_reply_room(&s->out) < SMTP_REPLY_LINE_MAX) {
		ev->type = SMTP_EV_FLUSH;
		return 0;
	}
	if (s->bdat_refusal) {
		const char *text = s->bdat_refusal;
		s->bdat_refusal = NULL;
		if (s->bdat_proto) {
			/* out of sequence: whatever was before goes on */
			set_state(s, s->bdat_resume);
			ev->type = proto_error(s, text);
			return 0;
		}
		/* a 5xx to a chunk ends the transaction, not the session */
		bool open = s->bdat_open;
		refuse(s, s->bdat_why, text, NULL);
		reset_transaction(s);
		ev->type = open ? SMTP_EV_DATA_REJECT : SMTP_EV_NEED_INPUT;
		return 0;
	}
	if (s->bdat_last && !s->bdat_crlf_added) {
		s->bdat_crlf_added = true;
		if (smtp_data_scan_octets_end(&s->scan) && !s->scan.errors) {
			/* the stored form is CRLF lines (RFC 3030 4.1: a message
			 * relayed with DATA gets the CR LF it lacks) */
			chunk_event(ev, "\r\n", 2, SMTP_CHUNK_STUFFING);
			return 0;
		}
	}
	if (s->scan.errors)
		return refuse_scanned(s, ev);
	if (s->bdat_last) {
		s->env.dotless = s->scan.dot_lines == 0;
		set_state(s, SMTP_S_STORING);
		ev->type = SMTP_EV_DATA_END;
		return 0;
	}
	smtp_reply_addf(&s->out, R_BDAT_OK_FMT, (unsigned long long)s->bdat_size);
	set_state(s, SMTP_S_RCPT);
	ev->type = SMTP_EV_NEED_INPUT;
	return 0;
}

/* Octets of a BDAT chunk: handed out as RAW spans that end before each
 * line-start ".", with the stuffing "." given between them, so the stored
 * form is the one DATA makes and most octets are never copied. */
static size_t feed_bdat(struct smtp_server *s, const char *in, size_t len,
			struct smtp_event *ev)
{
	size_t used = 0;
	for (;;) {
		if (s->bdat_left == 0)
			return used + finish_bdat(s, ev);
		size_t n = len - used < s->bdat_left ? len - used : (size_t)s->bdat_left;
		if (n == 0) {
			ev->type = SMTP_EV_NEED_INPUT;
			return used;
		}
		const char *p = in + used;
		if (s->bdat_refusal || s->scan.errors) {
			/* read and dropped */
			s->bdat_left -= n;
			used += n;
			continue;
		}
		if (s->bdat_line_start && p[0] == '.') {
			s->bdat_line_start = false;
			s->scan.dot_lines++;
			chunk_event(ev, ".", 1, SMTP_CHUNK_STUFFING);
			return used;
		}
		size_t k = n;
		for (const char *q = p; (q = memchr(q, '\n', (size_t)(p + n - q))) != NULL; q++) {
			if (q + 1 < p + n && q[1] == '.') {
				k = (size_t)(q + 1 - p);
				break;
			}
		}
		smtp_data_scan_octets(&s->scan, p, k);
		s->bdat_left -= k;
		s->bdat_line_start = p[k - 1] == '\n';
		used += k;
		if (s->scan.errors)
			continue; /* the message is refused at the chunk's end */
		chunk_event(ev, p, k, SMTP_CHUNK_RAW);
		return used;
	}
}

size_t smtp_server_feed(struct smtp_server *s, const char *in, size_t len,
			struct smtp_event *ev)
{
	ev->data = NULL;
	ev->len = 0;
	ev->form = SMTP_CHUNK_WIRE;
	switch (s->state) {
	case SMTP_S_CLOSING:
		ev->type = SMTP_EV_CLOSE;
		return 0;
	case SMTP_S_STORING:
		ev->type = SMTP_EV_WAIT;
		return 0;
	case SMTP_S_STARTTLS:
		/* Plaintext after STARTTLS is never executed. */
		ev->type = SMTP_EV_NEED_INPUT;
		return len;
	case SMTP_S_AUTH_CHECK:
		ev->type = SMTP_EV_WAIT;
		return 0;
	case SMTP_S_DATA:
		return feed_data(s, in, len, ev);
	default:
		break;
	}
	/* Commands and BDAT chunks: one batch may go from one to the other
	 * many times (RFC 3030 with PIPELINING). */
	size_t used = 0;
	for (;;) {
		if (s->state == SMTP_S_BDAT) {
			used += feed_bdat(s, in + used, len - used, ev);
			if (ev->type != SMTP_EV_NEED_INPUT || s->state == SMTP_S_BDAT || used == len)
				return used;
		} else {
			used += feed_commands(s, in + used, len - used, ev);
			if (ev->type != SMTP_EV_NEED_INPUT || s->state != SMTP_S_BDAT)
				return used;
		}
	}
}

/* RFC 3848 / RFC 6531: ESMTP plus S for TLS, A for AUTH. */
static const char *received_protocol(const struct smtp_server *s)
{
	static const char *const names[3][4] = {
		{"SMTP", "SMTPS", "SMTPA", "SMTPSA"},
		{"ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA"},
		{"UTF8SMTP", "UTF8SMTPS", "UTF8SMTPA", "UTF8SMTPSA"},
	};
	int kind = s->env.smtputf8 ? 2 : s->esmtp ? 1 : 0;
	return names[kind][(s->tls ? 1 : 0) + (s->authenticated ? 2 : 0)];
}

size_t smtp_server_begin_message(struct smtp_server *s, const char *msgid,
				 int64_t now, char *hdr, size_t cap)
{
	size_t n = strlen(msgid);
	if (n > SMTP_MSGID_MAX)
		n = SMTP_MSGID_MAX;
	memcpy(s->msgid, msgid, n);
	s->msgid[n] = '\0';
	struct smtp_received r = {
		.helo = s->helo,
		.client_ip = s->client_ip,
		.hostname = s->p->hostname,
		.connector = s->p->connector,
		/* RFC 3848 / RFC 6531 protocol types. */
		.protocol = received_protocol(s),
		.tls = s->tls ? s->tls_info : NULL,
		.id = s->msgid,
		.for_rcpt = s->env.nrcpt == 1 ? s->env.rcpt[0].addr : NULL,
		.time = now,
	};
	return smtp_received_format(hdr, cap, &r);
}

void smtp_server_stored(struct smtp_server *s, bool ok, bool full)
{
	if (s->state != SMTP_S_STORING)
		return;
	if (ok) {
		smtp_reply_addf(&s->out, "250 2.6.0 <%s> Queued mail for delivery",
				s->msgid);
		s->messages++;
		s->junk = 0;
	} else {
		refuse(s, SMTP_REJECT_STORAGE, full ? R_STORAGE_FULL : R_LOCAL_ERROR, NULL);
	}
	reset_transaction(s);
}

void smtp_server_refuse_message(struct smtp_server *s, const char *text)
{
	if (s->state != SMTP_S_STORING)
		return;
	refuse(s, SMTP_REJECT_CONTENT_RULE, text, NULL);
	reset_transaction(s);
}

bool smtp_server_drain(struct smtp_server *s)
{
	s->draining = true;
	if (smtp_server_in_transaction(s) || s->state == SMTP_S_CLOSING)
		return false;
	if (smtp_reply_room(&s->out) >= SMTP_REPLY_LINE_MAX)
		close_with(s, R_SHUTTING_DOWN);
	else
		set_state(s, SMTP_S_CLOSING);
	return true;
}

void smtp_server_abort(struct smtp_server *s, const char *text)
{
	if (s->state == SMTP_S_CLOSING)
		return;
	if (smtp_reply_room(&s->out) >= strlen(text) + 2)
		reply(s, text);
	set_state(s, SMTP_S_CLOSING);
}

void smtp_server_tls_started(struct smtp_server *s, const char *version, const char *cipher,
			     bool client_cert)
{
	envelope_reset(&s->env);
	s->msgid[0] = '\0';
	s->data_end_pending = false;
	bdat_reset(s);
	s->helo[0] = '\0';
	s->esmtp = false;
	smtp_cmd_reader_init(&s->rd);
	s->tls = true;
	s->client_cert = client_cert;
	s->authenticated = false; /* RFC 3207 4.2: nothing from before counts */
	s->auth_user[0] = '\0';
	snprintf(s->tls_info, sizeof(s->tls_info), "%s with cipher %s", version, cipher);
	if (s->state != SMTP_S_CLOSING)
		set_state(s, SMTP_S_GREETED);
}

void smtp_server_sent(struct smtp_server *s)
{
	s->out.len = 0;
}
