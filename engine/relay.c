/* Relay decision (see relay.h). Decides on the domain delivery would use and
 * refuses the local-part tricks (%-hack, bang paths, embedded @) that turn a
 * downstream host into an open relay, unless the connector may relay anyway. */
#include "relay.h"

#include <string.h>
#include <strings.h>

#include "config.h"
#include "recipients.h"
#include "smtp_reply.h"

const struct accepted_domain *relay_domain_find(const struct conf *c, const char *domain,
						size_t len)
{
	const struct accepted_domain *best = NULL;
	size_t best_score = 0;
	for (unsigned i = 0; i < c->ndomains; i++) {
		const struct accepted_domain *ad = &c->domains[i];
		size_t n = strlen(ad->domain), score = 0;
		if (len == n && strncasecmp(domain, ad->domain, n) == 0)
			score = 2 * n + (ad->subdomains ? 1 : 2);
		/* "*.corp.example" also covers every subdomain. */
		else if (ad->subdomains && len > n + 1 && domain[len - n - 1] == '.' &&
			 strncasecmp(domain + len - n, ad->domain, n) == 0)
			score = 2 * n;
		if (score > best_score) {
			best = ad;
			best_score = score;
		}
	}
	return best;
}

bool relay_domain_accepted(const struct conf *c, const char *domain, size_t len)
{
	return relay_domain_find(c, domain, len) != NULL;
}

bool relay_anonymous_only(const struct rconn *rc, bool authenticated)
{
	if (authenticated && (rc->perms & PERM_AUTHENTICATED))
		return false;
	return (rc->perms & ~PERM_AUTHENTICATED) == PERM_ANONYMOUS;
}

const char *relay_mail_policy(void *ctx, const struct smtp_path *from, bool authenticated)
{
	const struct rconn *rc = ctx;
	if (from->is_null || from->domain.len == 0 || !relay_anonymous_only(rc, authenticated))
		return NULL;
	if (from->domain_kind != SMTP_DOMAIN_NAME)
		return NULL;
	const struct accepted_domain *ad = relay_domain_find(rc->conf, from->domain.p,
							     from->domain.len);
	return ad && ad->type == DOMAIN_AUTHORITATIVE ? R_SENDER_DENIED : NULL;
}

/* An authoritative domain with a recipients_file knows its recipients;
 * any other is not ours to check (relay domains skip it, B.9). */
static const char *known_recipient(const struct conf *c, const struct smtp_path *rcpt)
{
	if (rcpt->domain.len == 0 || rcpt->domain_kind != SMTP_DOMAIN_NAME)
		return NULL;
	const struct accepted_domain *ad = relay_domain_find(c, rcpt->domain.p, rcpt->domain.len);
	if (!ad || ad->type != DOMAIN_AUTHORITATIVE || !ad->recipients)
		return NULL;
	return recipients_known(ad->recipients, rcpt->local.p, rcpt->local.len, rcpt->domain.p,
				rcpt->domain.len)
		       ? NULL
		       : R_RECIPIENT_NOT_FOUND;
}

static bool local_part_routes(const struct smtp_span *local)
{
	for (size_t i = 0; i < local->len; i++) {
		char ch = local->p[i];
		if (ch == '%' || ch == '!' || ch == '@')
			return true;
	}
	return false;
}

/* A recipient is taken only when a send connector can carry it: never
 * accepted and bounced later for want of a route. */
static const char *routable(const struct rconn *rc, const struct smtp_path *rcpt)
{
	const struct conf *c = rc->conf;
	if (rcpt->domain.len == 0) /* <Postmaster>: ours, routed as our host */
		return conf_route(c, c->hostname, strlen(c->hostname)) ? NULL
									: R_UNABLE_TO_ROUTE;
	return conf_route(c, rcpt->domain.p, rcpt->domain.len) ? NULL : R_UNABLE_TO_ROUTE;
}

const char *relay_rcpt_policy(void *ctx, const struct smtp_path *rcpt, bool authenticated)
{
	const struct rconn *rc = ctx;
	/* Before the relay right: an address of ours that does not exist
	 * is refused for every client, never accepted and bounced. */
	const char *unknown = known_recipient(rc->conf, rcpt);
	if (unknown)
		return unknown;
	if (rc->perms & (PERM_ANONYMOUS_RELAY | PERM_EXTERNALLY_SECURED))
		return routable(rc, rcpt);
	if (authenticated && (rc->perms & PERM_AUTHENTICATED))
		return routable(rc, rcpt);
	if (rcpt->domain.len == 0)
		return routable(rc, rcpt); /* <Postmaster>: always ours (RFC 5321 4.5.1) */
	if (rcpt->domain_kind != SMTP_DOMAIN_NAME || local_part_routes(&rcpt->local))
		return R_UNABLE_TO_RELAY;
	if (relay_domain_accepted(rc->conf, rcpt->domain.p, rcpt->domain.len))
		return routable(rc, rcpt);
	return R_UNABLE_TO_RELAY;
}
