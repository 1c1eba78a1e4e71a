/* EHLO reply builder (see ehlo.h). The extension list is what the session
 * state machine actually implements; nothing is advertised ahead of its code. */
#include "ehlo.h"

#include <inttypes.h>
#include <stdio.h>

bool smtp_ehlo_reply(struct smtp_reply_buf *b, const char *hostname,
		     const char *client_ip, const struct smtp_ehlo_caps *caps)
{
	char size[32];
	if (caps->max_size)
		snprintf(size, sizeof(size), "250-SIZE %" PRIu64, caps->max_size);
	else
		snprintf(size, sizeof(size), "250-SIZE");
	char auth[40] = "";
	if (caps->auth_mechs)
		snprintf(auth, sizeof(auth), "250-AUTH%s%s", caps->auth_mechs & 1 ? " PLAIN" : "",
			 caps->auth_mechs & 2 ? " LOGIN" : "");
	size_t mark = b->len;
	bool ok = smtp_reply_addf(b, "250-%s Hello [%s]", hostname, client_ip) &&
		  smtp_reply_add(b, "250-PIPELINING") &&
		  smtp_reply_add(b, size) &&
		  smtp_reply_add(b, "250-8BITMIME") &&
		  smtp_reply_add(b, "250-ENHANCEDSTATUSCODES") &&
		  smtp_reply_add(b, "250-DSN") &&
		  (!caps->starttls || smtp_reply_add(b, "250-STARTTLS")) &&
		  (!auth[0] || smtp_reply_add(b, auth)) &&
		  smtp_reply_add(b, "250-CHUNKING") &&
		  smtp_reply_add(b, "250 SMTPUTF8");
	if (!ok)
		b->len = mark;
	return ok;
}
