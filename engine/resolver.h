/* Mail exchanger resolution with c-ares on a thread of its own: a mail
 * domain becomes the ordered list of addresses delivery tries (MX by
 * preference, equal preferences shuffled, each host's AAAA and A; the
 * domain's own AAAA/A when it has no MX, RFC 5321 5.1; RFC 7505 null MX).
 * Workers never block on DNS: results come back through a callback. */
#ifndef POSTERN_RESOLVER_H
#define POSTERN_RESOLVER_H

#include <stdint.h>
#include <sys/socket.h>

enum resolver_status {
	RESOLVER_OK,
	RESOLVER_TEMPFAIL,   /* SERVFAIL, timeout, no answer: try again later */
	RESOLVER_NXDOMAIN,   /* the domain does not exist (5.1.2) */
	RESOLVER_NULL_MX,    /* "MX 0 ." (RFC 7505): accepts no mail (5.1.10) */
	RESOLVER_NO_ADDRESS, /* neither MX nor A/AAAA records (5.1.2) */
};

struct resolver_target {
	char host[256];                 /* MX host name, or the domain itself */
	unsigned pref;                  /* MX preference (0 for implicit MX) */
	struct sockaddr_storage addr;   /* port 0: the caller sets it */
	socklen_t addrlen;
};

struct resolver_result {
	enum resolver_status status;
	char error[160];                /* for logs and DSNs when not OK, e.g.
	                                 * "MX lookup for example.org: Timeout" */
	unsigned n;
	struct resolver_target *t;      /* in the order to try */
};

struct resolver;

/* servers: "127.0.0.1:5353,[::1]:53" (c-ares CSV form), or NULL/"" for the
 * system's /etc/resolv.conf. Starts the thread. NULL with err on failure. */
struct resolver *resolver_new(const char *servers, char *err, size_t errlen);
/* Stops the thread; pending lookups get no callback. */
void resolver_free(struct resolver *r);

typedef void (*resolver_cb)(void *arg, struct resolver_result *res);

/* Queues a lookup of the mail domain (a name, or an address literal
 * "[192.0.2.1]" / "[IPv6:2001:db8::1]", answered without DNS). cb runs on
 * the resolver thread (or on the caller's, for literals and cached
 * answers) and owns res: free it with resolver_result_free(). Answers are
 * cached for their TTL (at most one hour); NXDOMAIN for 60 s; temporary
 * failures not at all. Returns 0, or -1 when out of memory. */
int resolver_lookup(struct resolver *r, const char *domain, resolver_cb cb, void *arg);

void resolver_result_free(struct resolver_result *res);

/* FNV-1a over the string s, continuing from h (RESOLVER_HASH_INIT to
 * start): the resolver's cache and the delivery destinations use it. */
#define RESOLVER_HASH_INIT 2166136261u
static inline uint32_t resolver_hash_name(uint32_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

#endif
