/* The relay decision at RCPT: may this connector's client send to this
 * recipient? Accepted domains are open to every connector that may submit;
 * anything else needs a relay right (DESIGN B.2). Never an open relay. */
#ifndef POSTERN_RELAY_H
#define POSTERN_RELAY_H

#include <stdbool.h>
#include <stddef.h>

#include "smtp_path.h"

struct conf;
struct rconn;

/* smtp_server_params.rcpt_policy; ctx is the struct rconn. NULL accepts.
 * authenticated: the session passed SMTP AUTH (the connector's
 * "authenticated" group then relays). */
const char *relay_rcpt_policy(void *ctx, const struct smtp_path *rcpt, bool authenticated);

/* True when domain (any case, len bytes) is one of the accepted domains. */
bool relay_domain_accepted(const struct conf *c, const char *domain, size_t len);

struct accepted_domain;
/* The accepted domain that covers domain: "domain" itself before the
 * longest "*.domain" that covers it. NULL when none does. */
const struct accepted_domain *relay_domain_find(const struct conf *c, const char *domain,
						size_t len);

/* smtp_server_params.mail_policy (B.9 sender policy); ctx is the struct
 * rconn. A session whose permission groups are only "anonymous" may not
 * use a sender in an authoritative domain (Exchange's
 * Accept-Authoritative-Domain-Sender right). NULL accepts. */
const char *relay_mail_policy(void *ctx, const struct smtp_path *from, bool authenticated);

/* True when a session of rc holds the "anonymous" group and nothing more
 * (before AUTH on a connector that also has "authenticated"). */
bool relay_anonymous_only(const struct rconn *rc, bool authenticated);

#endif
