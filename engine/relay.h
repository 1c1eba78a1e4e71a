/* The relay decision at RCPT: may this connector's client send to this
 * recipient? Accepted domains are open to every connector that may submit;
 * anything else needs a relay right (DESIGN B.2). Never an open relay. */
#ifndef POSTERN_RELAY_H
#define POSTERN_RELAY_H

#include <stdbool.h>
#include <stddef.h>

#include "smtp_path.h"

struct conf;

/* smtp_server_params.rcpt_policy; ctx is the struct rconn. NULL accepts.
 * authenticated: the session passed SMTP AUTH (the connector's
 * "authenticated" group then relays). */
const char *relay_rcpt_policy(void *ctx, const struct smtp_path *rcpt, bool authenticated);

/* True when domain (any case, len bytes) is one of the accepted domains. */
bool relay_domain_accepted(const struct conf *c, const char *domain, size_t len);

#endif
