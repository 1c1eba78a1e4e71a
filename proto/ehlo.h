/* EHLO reply: greeting line and the extensions this server offers. */
#ifndef POSTERN_EHLO_H
#define POSTERN_EHLO_H

#include <stdbool.h>
#include <stdint.h>

#include "smtp_reply.h"

struct smtp_ehlo_caps {
	uint64_t max_size; /* announced as "SIZE n"; 0 = no fixed limit ("SIZE") */
	bool starttls;
	unsigned auth_mechs; /* SMTP_AUTH_* bits (smtp_server.h): "AUTH PLAIN LOGIN" */
};

/* Appends the whole multi-line 250 reply; false when it does not fit. */
bool smtp_ehlo_reply(struct smtp_reply_buf *b, const char *hostname,
		     const char *client_ip, const struct smtp_ehlo_caps *caps);

#endif
