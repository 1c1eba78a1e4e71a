/* Relay decision (see relay.h). Decides on the domain delivery would use and
 * refuses the local-part tricks (%-hack, bang paths, embedded @) that turn a
 * downstream host into an open relay, unless the connector may relay anyway. */
#include "relay.h"

#include <string.h>
#include <strings.h>

#include "config.h"
#include "smtp_reply.h"

bool relay_domain_accepted(const struct conf *c, const char *domain, size_t len)
{
	for (unsigned i = 0; i < c->ndomains; i++) {
		const struct accepted_domain *ad = &c->domains[i];
		size_t n = strlen(ad->domain);
		if (len == n && strncasecmp(domain, ad->domain, n) == 0)
			return true;
		/* "*.corp.example" also covers every subdomain. */
		if (ad->subdomains && len > n + 1 && domain[len - n - 1] == '.' &&
		    strncasecmp(domain + len - n, ad->domain, n) == 0)
			return true;
	}
	return false;
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
