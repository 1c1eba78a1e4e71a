/* Configuration reader (see config.h). One declarative table per section
 * drives parsing, defaults, bounds and the --check dump, so a setting is
 * described once. Defaults follow Exchange's Receive connector defaults. */
#include "config.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "connectors.h"
#include "lpm.h"
#include "recipients.h"
#include "relay.h"
#include "auth.h"
#include "tls.h"

enum setting_kind { K_SIZE, K_COUNT, K_DURATION, K_BOOL, K_RATE_SOURCE };

struct setting {
	const char *name;
	enum setting_kind kind;
	size_t offset;
	const char *def;   /* default, written as in the file */
	uint64_t max;      /* 0 = no bound */
};

#define RC(f) offsetof(struct rconn, f)
static const struct setting rconn_settings[] = {
	{"max_message_size", K_SIZE, RC(max_message_size), "36MB", 0},
	{"max_header_size", K_SIZE, RC(max_header_size), "256KB", 0},
	{"max_recipients_per_message", K_COUNT, RC(max_recipients), "200", 1000000},
	{"max_hop_count", K_COUNT, RC(max_hop_count), "60", 500},
	{"max_protocol_errors", K_COUNT, RC(max_protocol_errors), "5", 1000000},
	{"max_junk_commands", K_COUNT, RC(max_junk_commands), "100", 1000000},
	{"message_rate_limit", K_COUNT, RC(message_rate_limit), "unlimited", 60000},
	{"message_rate_source", K_RATE_SOURCE, RC(message_rate_source), "ip", 0},
	{"max_inbound_connection", K_COUNT, RC(max_inbound_connection), "5000", 0},
	{"max_inbound_connection_per_source", K_COUNT,
	 RC(max_inbound_connection_per_source), "20", 0},
	{"max_inbound_connection_percentage_per_source", K_COUNT,
	 RC(max_inbound_connection_percentage_per_source), "2", 100},
	{"connection_timeout", K_DURATION, RC(connection_timeout_ms), "10m", 0},
	{"connection_inactivity_timeout", K_DURATION,
	 RC(connection_inactivity_timeout_ms), "5m", 0},
	{"tarpit_interval", K_DURATION, RC(tarpit_interval_ms), "5s", 600000},
	{"require_tls", K_BOOL, RC(require_tls), "false", 0},
	{"require_client_certificate", K_BOOL, RC(require_client_certificate), "false", 0},
	{"allow_auth_without_tls", K_BOOL, RC(allow_auth_without_tls), "false", 0},
	{"max_logon_failures", K_COUNT, RC(max_logon_failures), "3", 1000},
	{"protocol_log", K_BOOL, RC(protocol_log), "false", 0},
};
#undef RC

#define SC(f) offsetof(struct sconn, f)
static const struct setting sconn_settings[] = {
	{"port", K_COUNT, SC(port), "25", 65535},
	{"max_connections", K_COUNT, SC(max_connections), "20", 100000},
	{"max_connections_per_domain", K_COUNT, SC(max_connections_per_domain), "20", 100000},
	{"max_message_rate", K_COUNT, SC(max_message_rate), "unlimited", 60000},
	{"max_messages_per_connection", K_COUNT, SC(max_messages_per_connection), "20", 1000000},
	{"max_recipients_per_message", K_COUNT, SC(max_recipients_per_message), "100", 1000000},
	{"connect_timeout", K_DURATION, SC(connect_timeout_ms), "30s", 0},
	{"idle_timeout", K_DURATION, SC(idle_timeout_ms), "5s", 0},
	{"command_timeout", K_DURATION, SC(command_timeout_ms), "5m", 0},
	{"data_timeout", K_DURATION, SC(data_timeout_ms), "10m", 0},
	{"min_data_rate", K_SIZE, SC(min_data_rate), "4KB", 0},
};
#undef SC

#define QC(f) offsetof(struct queue_conf, f)
static const struct setting queue_settings[] = {
	{"retry_interval", K_DURATION, QC(retry_interval_ms), "15m", 0},
	{"max_retry_interval", K_DURATION, QC(max_retry_interval_ms), "1h", 0},
	{"message_expiration", K_DURATION, QC(message_expiration_ms), "2d", 0},
	{"delay_notification", K_DURATION, QC(delay_notification_ms), "4h", 0},
	{"max_return_size", K_SIZE, QC(max_return_size), "10MB", 0},
	{"hold", K_BOOL, QC(hold), "false", 0},
};
#undef QC

static const char *const rate_source_names[] = {"ip", "user", "all", "none"};

struct loader {
	const char *path;
	char *err;
	size_t errlen;
	bool failed;
	const config_setting_t *proxy_bindings; /* server.proxy_protocol.bindings */
};

static bool fail(struct loader *ld, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static bool fail(struct loader *ld, int line, const char *fmt, ...)
{
	if (ld->failed)
		return false;
	ld->failed = true;
	int n = snprintf(ld->err, ld->errlen, "%s:%d: ", ld->path, line);
	if (n < 0 || (size_t)n >= ld->errlen)
		return false;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return false;
}

static int line_of(const config_setting_t *s)
{
	int l = (int)config_setting_source_line(s);
	return l > 0 ? l : 1;
}

/* libconfig numbers a list element by its parser's look-ahead, which is
 * the next line for the last element of a multi-line list. For errors, find
 * the element's own line: the first line from the list's start on which the
 * quoted value appears. */
static int element_line(const struct loader *ld, const config_setting_t *list,
			unsigned idx)
{
	const config_setting_t *e = config_setting_get_elem(list, idx);
	int fallback = line_of(e ? e : list);
	const char *val = e ? config_setting_get_string(e) : NULL;
	FILE *f = val ? fopen(ld->path, "r") : NULL;
	if (!f)
		return fallback;
	char quoted[300], buf[4096];
	snprintf(quoted, sizeof(quoted), "\"%s\"", val);
	int line = 0, found = fallback;
	while (fgets(buf, sizeof(buf), f)) {
		line++;
		if (line >= line_of(list) && line <= fallback && strstr(buf, quoted)) {
			found = line;
			break;
		}
	}
	fclose(f);
	return found;
}

/* ---- value parsers ---------------------------------------------------- */

bool conf_parse_size(const char *s, uint64_t *out)
{
	if (strcasecmp(s, "unlimited") == 0) {
		*out = 0;
		return true;
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s || errno || *s == '-')
		return false;
	while (*end == ' ')
		end++;
	uint64_t mul = 1;
	if (*end == '\0' || strcasecmp(end, "B") == 0)
		mul = 1;
	else if (strcasecmp(end, "KB") == 0)
		mul = 1024;
	else if (strcasecmp(end, "MB") == 0)
		mul = 1024 * 1024;
	else if (strcasecmp(end, "GB") == 0)
		mul = 1024ULL * 1024 * 1024;
	else
		return false;
	if (v > UINT64_MAX / mul)
		return false;
	*out = v * mul;
	return true;
}

bool conf_parse_duration_ms(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s || errno || *s == '-')
		return false;
	uint64_t mul;
	if (*end == '\0' || strcmp(end, "s") == 0)
		mul = 1000;
	else if (strcmp(end, "ms") == 0)
		mul = 1;
	else if (strcmp(end, "m") == 0)
		mul = 60 * 1000;
	else if (strcmp(end, "h") == 0)
		mul = 3600 * 1000;
	else if (strcmp(end, "d") == 0)
		mul = 86400 * 1000;
	else
		return false;
	if (v > UINT64_MAX / mul)
		return false;
	*out = v * mul;
	return true;
}

/* An IPv6 address as a value; an IPv4-mapped one (::ffff:a.b.c.d) is the
 * IPv4 address, so a dual-stack listener matches IPv4 clients as IPv4. */


static bool parse_addr(const char *s, int *family, u128 *v)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, s, &a4) == 1) {
		*family = 4;
		*v = ntohl(a4.s_addr);
		return true;
	}
	if (inet_pton(AF_INET6, s, &a6) == 1) {
		conf_addr6_value(a6.s6_addr, family, v);
		return true;
	}
	return false;
}

bool conf_parse_range(const char *s, struct ip_range *r)
{
	char buf[96];
	size_t n = strlen(s);
	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, s, n + 1);
	snprintf(r->text, sizeof(r->text), "%s", s);
	char *slash = strchr(buf, '/');
	char *dash = strchr(buf, '-');
	if (slash) {
		*slash = '\0';
		char *end;
		errno = 0;
		long bits = strtol(slash + 1, &end, 10);
		if (end == slash + 1 || *end || errno)
			return false;
		u128 v;
		if (!parse_addr(buf, &r->family, &v))
			return false;
		int width = r->family == 4 ? 32 : 128;
		if (bits < 0 || bits > width)
			return false;
		if (strchr(buf, ':') && r->family == 4)
			return false; /* "::ffff:a.b.c.d/n": ambiguous width */
		u128 host = bits == width ? 0
			    : bits == 0 ? (width == 128 ? ~(u128)0 : 0xffffffffu)
					: (((u128)1 << (width - bits)) - 1);
		r->lo = v & ~host;
		r->hi = r->lo | host;
		if (width == 32) {
			r->lo &= 0xffffffffu;
			r->hi &= 0xffffffffu;
		}
		return true;
	}
	if (dash) {
		*dash = '\0';
		int f2;
		u128 hi;
		if (!parse_addr(buf, &r->family, &r->lo) ||
		    !parse_addr(dash + 1, &f2, &hi) || f2 != r->family || hi < r->lo)
			return false;
		r->hi = hi;
		return true;
	}
	if (!parse_addr(buf, &r->family, &r->lo))
		return false;
	r->hi = r->lo;
	return true;
}

bool conf_parse_binding(const char *s, struct binding *b)
{
	char host[64];
	const char *port;
	memset(b, 0, sizeof(*b));
	snprintf(b->text, sizeof(b->text), "%s", s);
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host))
			return false;
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		port = close + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (!colon || (size_t)(colon - s) >= sizeof(host) ||
		    memchr(s, ':', (size_t)(colon - s)))
			return false;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port = colon + 1;
	}
	char *end;
	long p = strtol(port, &end, 10);
	if (end == port || *end || p < 1 || p > 65535)
		return false;
	struct sockaddr_in *in4 = (struct sockaddr_in *)&b->addr;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&b->addr;
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)p);
		b->addrlen = sizeof(*in4);
		return true;
	}
	if (s[0] == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		b->addrlen = sizeof(*in6);
		return true;
	}
	return false;
}


/* ---- sections --------------------------------------------------------- */

static bool setting_value(struct loader *ld, const struct setting *st,
			  const config_setting_t *v, const char *text,
			  uint64_t *out)
{
	int line = v ? line_of(v) : 0;
	char num[32];
	if (v && (config_setting_type(v) == CONFIG_TYPE_INT ||
		  config_setting_type(v) == CONFIG_TYPE_INT64)) {
		long long x = config_setting_get_int64(v);
		if (x < 0)
			return fail(ld, line, "%s: must not be negative", st->name);
		snprintf(num, sizeof(num), "%lld", x);
		text = num;
	} else if (v && config_setting_type(v) == CONFIG_TYPE_BOOL) {
		if (st->kind != K_BOOL)
			return fail(ld, line, "%s: expected a %s", st->name,
				    st->kind == K_DURATION ? "duration" : "number");
		*out = (uint64_t)config_setting_get_bool(v);
		return true;
	} else if (v && config_setting_type(v) == CONFIG_TYPE_STRING) {
		text = config_setting_get_string(v);
	} else if (v) {
		return fail(ld, line, "%s: unexpected value type", st->name);
	}
	bool ok = false;
	switch (st->kind) {
	case K_SIZE:
		ok = conf_parse_size(text, out);
		break;
	case K_COUNT:
		if (strcasecmp(text, "unlimited") == 0) {
			*out = 0;
			ok = true;
		} else {
			char *end;
			errno = 0;
			unsigned long long x = strtoull(text, &end, 10);
			ok = end != text && !*end && !errno && *text != '-';
			*out = x;
		}
		break;
	case K_DURATION:
		ok = conf_parse_duration_ms(text, out);
		break;
	case K_BOOL:
		ok = strcmp(text, "true") == 0 || strcmp(text, "false") == 0;
		*out = strcmp(text, "true") == 0;
		break;
	case K_RATE_SOURCE:
		for (unsigned i = 0; i < 4; i++) {
			if (strcasecmp(text, rate_source_names[i]) == 0) {
				*out = i;
				ok = true;
			}
		}
		break;
	}
	if (!ok)
		return fail(ld, line, "%s: invalid value \"%s\"", st->name, text);
	if (st->max && *out > st->max)
		return fail(ld, line, "%s: %s is above the maximum %llu", st->name,
			    text, (unsigned long long)st->max);
	return true;
}

static const char *get_string(struct loader *ld, const config_setting_t *grp,
			      const char *name, bool required)
{
	config_setting_t *v = config_setting_get_member(grp, name);
	if (!v) {
		if (required)
			fail(ld, line_of(grp), "missing setting \"%s\"", name);
		return NULL;
	}
	if (config_setting_type(v) != CONFIG_TYPE_STRING) {
		fail(ld, line_of(v), "%s: expected a string", name);
		return NULL;
	}
	return config_setting_get_string(v);
}

static bool check_members(struct loader *ld, const config_setting_t *grp,
			  const char *const *known, const struct setting *tab,
			  size_t ntab)
{
	for (int i = 0; i < config_setting_length(grp); i++) {
		const config_setting_t *m = config_setting_get_elem(grp, (unsigned)i);
		const char *name = config_setting_name(m);
		bool ok = false;
		for (const char *const *k = known; *k; k++)
			ok |= strcmp(*k, name) == 0;
		for (size_t k = 0; k < ntab; k++)
			ok |= strcmp(tab[k].name, name) == 0;
		if (!ok)
			return fail(ld, line_of(m), "unknown setting \"%s\"", name);
	}
	return true;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);
	if (!d) {
		fputs("postern: out of memory\n", stderr);
		exit(1);
	}
	return d;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p) {
		fputs("postern: out of memory\n", stderr);
		exit(1);
	}
	return p;
}

/* dns_servers = [ "127.0.0.1:5353", "[::1]:53" ]: kept as the CSV c-ares
 * takes. */
static bool load_dns_servers(struct loader *ld, struct conf *c, config_setting_t *v)
{
	if (!config_setting_is_array(v) && !config_setting_is_list(v))
		return fail(ld, line_of(v), "dns_servers: expected a list [ \"ip[:port]\", ... ]");
	size_t cap = 1;
	for (int i = 0; i < config_setting_length(v); i++) {
		const char *s = config_setting_get_string_elem(v, i);
		if (!s)
			return fail(ld, line_of(v), "dns_servers: expected strings");
		/* ip, ip:port, ipv6, [ipv6]:port */
		struct binding b;
		char probe[80];
		bool ok = conf_parse_binding(s, &b);
		if (!ok && snprintf(probe, sizeof(probe), "%s:53", s) < (int)sizeof(probe))
			ok = conf_parse_binding(probe, &b);
		if (!ok && snprintf(probe, sizeof(probe), "[%s]:53", s) < (int)sizeof(probe))
			ok = conf_parse_binding(probe, &b);
		if (!ok)
			return fail(ld, element_line(ld, v, (unsigned)i),
				    "dns_servers: \"%s\" is not ip, ip:port or [ipv6]:port", s);
		cap += strlen(s) + 1;
	}
	if (config_setting_length(v) == 0)
		return true;
	c->dns_servers = xcalloc(1, cap);
	for (int i = 0; i < config_setting_length(v); i++) {
		if (i)
			strcat(c->dns_servers, ",");
		strcat(c->dns_servers, config_setting_get_string_elem(v, i));
	}
	return true;
}

static const config_setting_t *string_list(struct loader *ld,
					   const config_setting_t *g,
					   const char *name, bool required);

/* server.proxy_protocol = { bindings = [...]; trusted_proxies = [...]; }.
 * The bindings are checked against the connectors' once those are read
 * (resolve_proxy_bindings). */
static bool load_proxy_protocol(struct loader *ld, struct conf *c, config_setting_t *pp)
{
	static const char *const known[] = {"bindings", "trusted_proxies", NULL};
	if (!config_setting_is_group(pp))
		return fail(ld, line_of(pp),
			    "proxy_protocol: expected { bindings = [ ... ]; trusted_proxies = [ ... ]; }");
	if (!check_members(ld, pp, known, NULL, 0))
		return false;
	const config_setting_t *b = string_list(ld, pp, "bindings", true);
	if (!b)
		return false;
	const config_setting_t *t = string_list(ld, pp, "trusted_proxies", true);
	if (!t)
		return false;
	if (config_setting_length(b) == 0)
		return fail(ld, line_of(b), "proxy_protocol: bindings: at least one ip:port");
	if (config_setting_length(t) == 0)
		return fail(ld, line_of(t),
			    "proxy_protocol: trusted_proxies: at least one address or range (nobody else may send the header)");
	ld->proxy_bindings = b;
	c->ntrusted_proxies = (unsigned)config_setting_length(t);
	c->trusted_proxies = xcalloc(c->ntrusted_proxies, sizeof(*c->trusted_proxies));
	for (unsigned i = 0; i < c->ntrusted_proxies; i++) {
		const char *s = config_setting_get_string_elem(t, (int)i);
		if (!conf_parse_range(s, &c->trusted_proxies[i]))
			return fail(ld, element_line(ld, t, i),
				    "proxy_protocol: trusted_proxies: \"%s\" is not an address, a-b range or CIDR", s);
		c->trusted_proxies[i].line = element_line(ld, t, i);
	}
	return true;
}

/* Every proxy_protocol binding must be one a receive connector listens on:
 * a typo would otherwise leave the real binding taking the balancer's
 * address as the client's. */
static bool resolve_proxy_bindings(struct loader *ld, struct conf *c)
{
	const config_setting_t *v = ld->proxy_bindings;
	for (int i = 0; v && i < config_setting_length(v); i++) {
		const char *s = config_setting_get_string_elem(v, i);
		struct binding b;
		if (!conf_parse_binding(s, &b))
			return fail(ld, element_line(ld, v, (unsigned)i),
				    "proxy_protocol: bindings: \"%s\" is not ip:port ([ipv6]:port)", s);
		unsigned k = 0;
		while (k < c->nbindings && !(c->bindings[k].addrlen == b.addrlen &&
					     memcmp(&c->bindings[k].addr, &b.addr, b.addrlen) == 0))
			k++;
		if (k == c->nbindings)
			return fail(ld, element_line(ld, v, (unsigned)i),
				    "proxy_protocol: bindings: \"%s\" is not a binding of any receive connector", s);
		c->bindings[k].proxy = true;
	}
	return true;
}

static const struct ip_range *range_find(const struct ip_range *r, unsigned n,
					 const struct sockaddr *sa)
{
	int family;
	u128 v;
	if (!conf_sockaddr_value(sa, &family, &v))
		return NULL;
	for (unsigned i = 0; i < n; i++)
		if (r[i].family == family && v >= r[i].lo && v <= r[i].hi)
			return &r[i];
	return NULL;
}

bool conf_trusted_proxy(const struct conf *c, const struct sockaddr *sa,
			const struct ip_range **why)
{
	const struct ip_range *r = range_find(c->trusted_proxies, c->ntrusted_proxies, sa);
	if (r && why)
		*why = r;
	return r != NULL;
}

bool conf_metrics_allowed(const struct conf *c, const struct sockaddr *sa)
{
	int family;
	u128 v;
	if (!conf_sockaddr_value(sa, &family, &v))
		return false;
	if (!c->nmetrics_allow) /* by default the node itself only */
		return (family == 4 && v >> 24 == 127) || (family == 6 && v == 1);
	return range_find(c->metrics_allow, c->nmetrics_allow, sa) != NULL;
}

/* server.pickup = { directory; max_parallel; max_message_size;
 * max_recipients_per_message; } and its shorthand server.pickup_directory. */
static bool load_pickup(struct loader *ld, struct conf *c, config_setting_t *srv)
{
	static const char *const known[] = {"directory", "max_parallel", "max_message_size",
					    "max_recipients_per_message", NULL};
	c->pickup_max_parallel = 4;
	c->pickup_max_message_size = 36ull << 20;
	c->pickup_max_recipients = 200;
	const char *dir = get_string(ld, srv, "pickup_directory", false);
	config_setting_t *pk = config_setting_get_member(srv, "pickup");
	if (ld->failed)
		return false;
	if (pk) {
		if (!config_setting_is_group(pk))
			return fail(ld, line_of(pk), "pickup: expected { directory = \"...\"; ... }");
		if (!check_members(ld, pk, known, NULL, 0))
			return false;
		const char *d = get_string(ld, pk, "directory", true);
		if (!d)
			return false;
		if (dir && strcmp(dir, d) != 0)
			return fail(ld, line_of(pk),
				    "pickup: directory \"%s\" and pickup_directory \"%s\" differ: set one", d, dir);
		dir = d;
		config_setting_t *mp = config_setting_get_member(pk, "max_parallel");
		if (mp && (config_setting_type(mp) != CONFIG_TYPE_INT ||
			   config_setting_get_int(mp) < 1 || config_setting_get_int(mp) > 256))
			return fail(ld, line_of(mp), "pickup: max_parallel: a number from 1 to 256");
		if (mp)
			c->pickup_max_parallel = (unsigned)config_setting_get_int(mp);
		const char *sz = get_string(ld, pk, "max_message_size", false);
		if (ld->failed)
			return false;
		if (sz && (!conf_parse_size(sz, &c->pickup_max_message_size) ||
			   c->pickup_max_message_size < 1024))
			return fail(ld, line_of(config_setting_get_member(pk, "max_message_size")),
				    "pickup: max_message_size: \"%s\" is not a size of at least 1KB", sz);
		config_setting_t *mr = config_setting_get_member(pk, "max_recipients_per_message");
		if (mr && (config_setting_type(mr) != CONFIG_TYPE_INT ||
			   config_setting_get_int(mr) < 1 || config_setting_get_int(mr) > 100000))
			return fail(ld, line_of(mr),
				    "pickup: max_recipients_per_message: a number from 1 to 100000");
		if (mr)
			c->pickup_max_recipients = (unsigned)config_setting_get_int(mr);
	}
	if (dir && !*dir)
		return fail(ld, line_of(config_setting_get_member(pk ? pk : srv,
								 pk ? "directory" : "pickup_directory")),
			    "pickup_directory: empty");
	if (dir)
		c->pickup_dir = xstrdup(dir);
	return true;
}

static bool load_server(struct loader *ld, struct conf *c, config_t *cf)
{
	static const char *const known[] = {
		"hostname", "workers", "spool_dir", "stats_socket",
		"metrics_listen", "shutdown_grace", "log_level", "log_file",
		"spool_segment_size", "dns_servers", "io_backend", "max_open_files", "user",
		"proxy_protocol", "drain_timeout", "metrics_allow", "throttle_table_size",
		"pickup_directory", "pickup", NULL};
	config_setting_t *srv = config_lookup(cf, "server");
	char host[256] = "localhost";
	gethostname(host, sizeof(host) - 1);
	c->shutdown_grace_ms = 30000;
	c->drain_timeout_ms = 600000;
	c->max_open_files = 65536;
	c->throttle_table_size = 262144;
	c->log_level = LOG_INFO;
	if (!srv) {
		c->hostname = xstrdup(host);
		c->spool_dir = xstrdup("/var/spool/postern");
		return true;
	}
	if (!config_setting_is_group(srv))
		return fail(ld, line_of(srv), "server: expected a group { ... }");
	if (!check_members(ld, srv, known, NULL, 0))
		return false;
	const char *s = get_string(ld, srv, "hostname", false);
	if (s && !smtp_helo_arg_valid(s, strlen(s)))
		return fail(ld, line_of(config_setting_get_member(srv, "hostname")),
			    "hostname: \"%s\" is not a valid domain name", s);
	c->hostname = xstrdup(s ? s : host);
	s = get_string(ld, srv, "spool_dir", false);
	c->spool_dir = xstrdup(s ? s : "/var/spool/postern");
	if ((s = get_string(ld, srv, "stats_socket", false)))
		c->stats_socket = xstrdup(s);
	if ((s = get_string(ld, srv, "metrics_listen", false))) {
		struct binding b;
		if (!conf_parse_binding(s, &b))
			return fail(ld, line_of(config_setting_get_member(srv, "metrics_listen")),
				    "metrics_listen: \"%s\" is not ip:port ([ipv6]:port)", s);
		c->metrics_listen = xstrdup(s);
	}
	const config_setting_t *ma = string_list(ld, srv, "metrics_allow", false);
	if (ld->failed)
		return false;
	for (int i = 0; ma && i < config_setting_length(ma); i++) {
		if (i == 0) {
			c->nmetrics_allow = (unsigned)config_setting_length(ma);
			c->metrics_allow = xcalloc(c->nmetrics_allow, sizeof(*c->metrics_allow));
		}
		const char *r = config_setting_get_string_elem(ma, i);
		if (!conf_parse_range(r, &c->metrics_allow[i]))
			return fail(ld, element_line(ld, ma, (unsigned)i),
				    "metrics_allow: \"%s\" is not an address, a-b range or CIDR", r);
	}
	if ((s = get_string(ld, srv, "log_file", false)))
		c->log_file = xstrdup(s);
	if (!load_pickup(ld, c, srv))
		return false;
	c->spool_segment_bytes = 64ull << 20;
	if ((s = get_string(ld, srv, "spool_segment_size", false)) &&
	    (!conf_parse_size(s, &c->spool_segment_bytes) || c->spool_segment_bytes < (1 << 20)))
		return fail(ld, line_of(config_setting_get_member(srv, "spool_segment_size")),
			    "spool_segment_size: \"%s\" is not a size of at least 1MB", s);
	config_setting_t *ds = config_setting_get_member(srv, "dns_servers");
	if (ds && !load_dns_servers(ld, c, ds))
		return false;
	config_setting_t *w = config_setting_get_member(srv, "workers");
	if (w) {
		if (config_setting_type(w) != CONFIG_TYPE_INT ||
		    config_setting_get_int(w) < 0 || config_setting_get_int(w) > 1024)
			return fail(ld, line_of(w), "workers: expected 0..1024");
		c->workers = (unsigned)config_setting_get_int(w);
	}
	if ((s = get_string(ld, srv, "shutdown_grace", false)) &&
	    !conf_parse_duration_ms(s, &c->shutdown_grace_ms))
		return fail(ld, line_of(config_setting_get_member(srv, "shutdown_grace")),
			    "shutdown_grace: invalid duration \"%s\"", s);
	if ((s = get_string(ld, srv, "drain_timeout", false)) &&
	    !conf_parse_duration_ms(s, &c->drain_timeout_ms))
		return fail(ld, line_of(config_setting_get_member(srv, "drain_timeout")),
			    "drain_timeout: invalid duration \"%s\"", s);
	if ((s = get_string(ld, srv, "user", false))) {
		/* Resolved again at start; here so --check names a typo. */
		if (!*s || !getpwnam(s))
			return fail(ld, line_of(config_setting_get_member(srv, "user")),
				    "user: no such user \"%s\"", s);
		c->user = xstrdup(s);
	}
	config_setting_t *pp = config_setting_get_member(srv, "proxy_protocol");
	if (pp && !load_proxy_protocol(ld, c, pp))
		return false;
	config_setting_t *mof = config_setting_get_member(srv, "max_open_files");
	if (mof) {
		long long v = config_setting_type(mof) == CONFIG_TYPE_INT ||
				      config_setting_type(mof) == CONFIG_TYPE_INT64
			? config_setting_get_int64(mof) : -1;
		if (v < 64 || v > 16777216)
			return fail(ld, line_of(mof), "max_open_files: a number from 64 to 16777216");
		c->max_open_files = (uint64_t)v;
	}
	config_setting_t *tts = config_setting_get_member(srv, "throttle_table_size");
	if (tts) {
		long long v = config_setting_type(tts) == CONFIG_TYPE_INT ||
				      config_setting_type(tts) == CONFIG_TYPE_INT64
			? config_setting_get_int64(tts) : -1;
		if (v < 16 || v > 16777216)
			return fail(ld, line_of(tts), "throttle_table_size: a number from 16 to 16777216");
		c->throttle_table_size = (uint32_t)v;
	}
	if ((s = get_string(ld, srv, "io_backend", false))) {
		static const char *const kinds[] = {"auto", "io_uring", "epoll"};
		int found = -1;
		for (int i = 0; i < 3; i++)
			if (strcmp(s, kinds[i]) == 0)
				found = i;
		if (found < 0)
			return fail(ld, line_of(config_setting_get_member(srv, "io_backend")),
				    "io_backend: expected auto, io_uring or epoll");
		c->io_backend = (unsigned)found; /* the order of enum io_backend */
	}
	if ((s = get_string(ld, srv, "log_level", false))) {
		static const char *const lv[] = {"error", "warn", "info", "debug"};
		int found = -1;
		for (int i = 0; i < 4; i++)
			if (strcmp(s, lv[i]) == 0)
				found = i;
		if (found < 0)
			return fail(ld, line_of(config_setting_get_member(srv, "log_level")),
				    "log_level: expected error, warn, info or debug");
		c->log_level = found;
	}
	return !ld->failed;
}

static bool load_domains(struct loader *ld, struct conf *c, config_t *cf)
{
	static const char *const known[] = {"domain", "type", "recipients_file", NULL};
	config_setting_t *list = config_lookup(cf, "accepted_domains");
	if (!list)
		return true;
	if (!config_setting_is_list(list) && !config_setting_is_array(list))
		return fail(ld, line_of(list), "accepted_domains: expected a list ( ... )");
	unsigned n = (unsigned)config_setting_length(list);
	c->domains = xcalloc(n, sizeof(*c->domains));
	for (unsigned i = 0; i < n; i++) {
		config_setting_t *g = config_setting_get_elem(list, i);
		if (!config_setting_is_group(g))
			return fail(ld, line_of(g), "accepted_domains: expected { domain = ...; }");
		if (!check_members(ld, g, known, NULL, 0))
			return false;
		const char *d = get_string(ld, g, "domain", true);
		if (!d)
			return false;
		struct accepted_domain *ad = &c->domains[c->ndomains];
		ad->line = line_of(g);
		ad->subdomains = strncmp(d, "*.", 2) == 0;
		const char *name = ad->subdomains ? d + 2 : d;
		if (!smtp_helo_arg_valid(name, strlen(name)) || name[0] == '[' ||
		    name[strlen(name) - 1] == '.')
			return fail(ld, ad->line, "domain: \"%s\" is not a domain name", d);
		ad->domain = xstrdup(name);
		c->ndomains++; /* counted now: conf_free frees it if what follows fails */
		for (char *p = ad->domain; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		const char *t = get_string(ld, g, "type", false);
		if (ld->failed)
			return false;
		if (!t || strcmp(t, "authoritative") == 0)
			ad->type = DOMAIN_AUTHORITATIVE;
		else if (strcmp(t, "internal_relay") == 0)
			ad->type = DOMAIN_INTERNAL_RELAY;
		else if (strcmp(t, "external_relay") == 0)
			ad->type = DOMAIN_EXTERNAL_RELAY;
		else
			return fail(ld, ad->line,
				    "type: expected authoritative, internal_relay or external_relay");
		for (unsigned k = 0; k + 1 < c->ndomains; k++)
			if (strcmp(c->domains[k].domain, ad->domain) == 0 &&
			    c->domains[k].subdomains == ad->subdomains)
				return fail(ld, ad->line, "domain \"%s\" is listed twice", d);
		const char *rf = get_string(ld, g, "recipients_file", false);
		if (ld->failed)
			return false;
		if (rf) {
			int rl = line_of(config_setting_get_member(g, "recipients_file"));
			/* A relay domain's recipients live elsewhere (B.9): a
			 * list here would be silently ignored. */
			if (ad->type != DOMAIN_AUTHORITATIVE)
				return fail(ld, rl,
					    "recipients_file: only for authoritative domains (\"%s\" is %s)",
					    d, t);
			char why[600];
			ad->recipients_file = xstrdup(rf);
			ad->recipients = recipients_load(rf, why, sizeof(why));
			if (!ad->recipients)
				return fail(ld, rl, "recipients_file: %s", why);
		}
	}
	return true;
}

/* internal_relay and external_relay domains are relayed to their send
 * connector (B.9): one must cover them. */
static bool check_relay_domains(struct loader *ld, struct conf *c)
{
	for (unsigned i = 0; i < c->ndomains; i++) {
		const struct accepted_domain *ad = &c->domains[i];
		if (ad->type == DOMAIN_AUTHORITATIVE)
			continue;
		if (!conf_route(c, ad->domain, strlen(ad->domain)))
			return fail(ld, ad->line,
				    "domain \"%s%s\" is %s: no send connector covers it",
				    ad->subdomains ? "*." : "", ad->domain,
				    ad->type == DOMAIN_INTERNAL_RELAY ? "internal_relay"
								      : "external_relay");
	}
	return true;
}

static unsigned add_binding(struct conf *c, const struct binding *b)
{
	for (unsigned i = 0; i < c->nbindings; i++) {
		if (c->bindings[i].addrlen == b->addrlen &&
		    memcmp(&c->bindings[i].addr, &b->addr, b->addrlen) == 0)
			return i;
	}
	struct binding *n = realloc(c->bindings, (c->nbindings + 1) * sizeof(*n));
	if (!n) {
		fputs("postern: out of memory\n", stderr);
		exit(1);
	}
	c->bindings = n;
	c->bindings[c->nbindings] = *b;
	return c->nbindings++;
}

static const config_setting_t *string_list(struct loader *ld,
					   const config_setting_t *g,
					   const char *name, bool required)
{
	config_setting_t *v = config_setting_get_member(g, name);
	if (!v) {
		if (required)
			fail(ld, line_of(g), "missing setting \"%s\"", name);
		return NULL;
	}
	if (!config_setting_is_array(v) && !config_setting_is_list(v)) {
		fail(ld, line_of(v), "%s: expected a list [ \"...\", ... ]", name);
		return NULL;
	}
	for (int i = 0; i < config_setting_length(v); i++) {
		if (config_setting_type(config_setting_get_elem(v, (unsigned)i)) !=
		    CONFIG_TYPE_STRING) {
			fail(ld, line_of(v), "%s: expected strings", name);
			return NULL;
		}
	}
	return v;
}

/* A string or a list of strings (tls_certificate = "a.pem" or [ ... ]):
 * the values, a malloc'd array of n copies. */
static bool strings_of(struct loader *ld, const config_setting_t *g, const char *name,
		       char ***out, unsigned *n)
{
	config_setting_t *v = config_setting_get_member(g, name);
	*out = NULL;
	*n = 0;
	if (!v)
		return true;
	if (config_setting_type(v) == CONFIG_TYPE_STRING) {
		*out = xcalloc(1, sizeof(char *));
		(*out)[0] = xstrdup(config_setting_get_string(v));
		*n = 1;
	} else if (string_list(ld, g, name, true)) {
		*n = (unsigned)config_setting_length(v);
		*out = xcalloc(*n ? *n : 1, sizeof(char *));
		for (unsigned i = 0; i < *n; i++)
			(*out)[i] = xstrdup(config_setting_get_string_elem(v, (int)i));
	} else {
		return false;
	}
	for (unsigned i = 0; i < *n; i++)
		if (!*(*out)[i])
			return fail(ld, line_of(v), "%s: empty path", name);
	return true;
}

static void tls_warn(void *ctx, const char *text)
{
	char q[700];
	(void)ctx;
	log_msg(LOG_WARN, "event=config_warning warning=%s", log_quote(q, sizeof(q), text));
}

static int member_line(const config_setting_t *g, const char *name)
{
	const config_setting_t *v = config_setting_get_member(g, name);
	return line_of(v ? v : g);
}

/* Receive connector TLS: certificates, keys, versions, client CA; the
 * context is built here, so a bad file fails the load (or the reload,
 * which keeps the running configuration). */
static bool load_rconn_tls(struct loader *ld, struct rconn *rc, const config_setting_t *g)
{
	if (!strings_of(ld, g, "tls_certificate", &rc->tls_certs, &rc->ntls) ||
	    !strings_of(ld, g, "tls_key", &rc->tls_keys, &rc->ntls_keys))
		return false;
	unsigned nkeys = rc->ntls_keys;
	if (nkeys != rc->ntls)
		return fail(ld, member_line(g, rc->ntls ? "tls_certificate" : "tls_key"),
			    "tls_certificate and tls_key: %u certificate(s) but %u key(s)",
			    rc->ntls, nkeys);
	const char *mv = get_string(ld, g, "tls_min_version", false);
	if (ld->failed)
		return false;
	rc->tls_min_version = 12;
	if (mv && strcmp(mv, "1.3") == 0)
		rc->tls_min_version = 13;
	else if (mv && strcmp(mv, "1.2") != 0)
		return fail(ld, member_line(g, "tls_min_version"),
			    "tls_min_version: expected \"1.2\" or \"1.3\"");
	const char *ca = get_string(ld, g, "tls_client_ca_file", false);
	if (ld->failed)
		return false;
	if (!rc->ntls) {
		static const char *const need[] = {"tls_min_version", "tls_client_ca_file",
						   "require_tls", "require_client_certificate"};
		for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
			if (config_setting_get_member(g, need[i]))
				return fail(ld, member_line(g, need[i]),
					    "%s: needs tls_certificate (STARTTLS is not offered without one)",
					    need[i]);
		return true;
	}
	if (ca && !*ca)
		return fail(ld, member_line(g, "tls_client_ca_file"), "tls_client_ca_file: empty path");
	if (rc->require_client_certificate && !ca)
		return fail(ld, member_line(g, "require_client_certificate"),
			    "require_client_certificate: needs tls_client_ca_file");
	rc->tls_client_ca_file = ca ? xstrdup(ca) : NULL;
	struct tls_server_conf tc = {
		.certs = (const char *const *)rc->tls_certs,
		.keys = (const char *const *)rc->tls_keys,
		.ncerts = rc->ntls,
		.min_version = (int)rc->tls_min_version,
		.client_ca_file = rc->tls_client_ca_file,
		.id = rc->name,
	};
	char why[600];
	rc->tls = tls_server_new(&tc, why, sizeof(why), tls_warn, NULL);
	if (!rc->tls)
		return fail(ld, member_line(g, "tls_certificate"), "%s", why);
	return true;
}

/* Send connector TLS: the mode and the client context. */
static bool load_sconn_tls(struct loader *ld, struct sconn *sc, const config_setting_t *g)
{
	const char *mode = get_string(ld, g, "tls", false);
	const char *ca = get_string(ld, g, "tls_ca_file", false);
	const char *sn = get_string(ld, g, "tls_server_name", false);
	const char *cert = get_string(ld, g, "tls_certificate", false);
	const char *key = get_string(ld, g, "tls_key", false);
	if (ld->failed)
		return false;
	sc->tls_mode = TLS_MODE_OPPORTUNISTIC;
	if (mode) {
		unsigned m = 0;
		while (m < 4 && strcmp(mode, tls_mode_names[m]) != 0)
			m++;
		if (m == 4)
			return fail(ld, member_line(g, "tls"),
				    "tls: expected none, opportunistic, required or verify");
		sc->tls_mode = m;
	}
	static const char *const keys[] = {"tls", "tls_ca_file", "tls_server_name",
					   "tls_certificate", "tls_key"};
	if (sc->drop_dir) {
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (config_setting_get_member(g, keys[i]))
				return fail(ld, member_line(g, keys[i]),
					    "%s: does not apply to a drop_directory connector", keys[i]);
		sc->tls_mode = TLS_MODE_NONE;
		return true;
	}
	if (sc->tls_mode == TLS_MODE_NONE) {
		for (size_t i = 1; i < sizeof(keys) / sizeof(keys[0]); i++)
			if (config_setting_get_member(g, keys[i]))
				return fail(ld, member_line(g, keys[i]),
					    "%s: does nothing with tls = \"none\"", keys[i]);
		return true;
	}
	if (ca && sc->tls_mode != TLS_MODE_VERIFY)
		return fail(ld, member_line(g, "tls_ca_file"),
			    "tls_ca_file: only used with tls = \"verify\"");
	if (!cert != !key)
		return fail(ld, member_line(g, cert ? "tls_certificate" : "tls_key"),
			    "tls_certificate and tls_key go together");
	if ((ca && !*ca) || (sn && !*sn) || (cert && !*cert) || (key && !*key))
		return fail(ld, sc->line, "tls_*: empty value");
	if (sc->tls_mode == TLS_MODE_VERIFY && !ca)
		ca = "/etc/ssl/certs/ca-certificates.crt";
	sc->tls_ca_file = ca ? xstrdup(ca) : NULL;
	sc->tls_server_name = sn ? xstrdup(sn) : NULL;
	sc->tls_cert = cert ? xstrdup(cert) : NULL;
	sc->tls_key = key ? xstrdup(key) : NULL;
	struct tls_client_conf tc = {
		.mode = (enum tls_mode)sc->tls_mode,
		.ca_file = sc->tls_ca_file,
		.cert = sc->tls_cert,
		.key = sc->tls_key,
	};
	char why[600];
	sc->tls = tls_client_new(&tc, why, sizeof(why), tls_warn, NULL);
	if (!sc->tls)
		return fail(ld, member_line(g, cert ? "tls_certificate" : "tls"), "%s", why);
	return true;
}

/* Receive connector AUTH: mechanisms and the users file (read here, so a
 * bad file fails the load or the reload). */
static bool load_rconn_auth(struct loader *ld, struct rconn *rc, const config_setting_t *g)
{
	const char *file = get_string(ld, g, "auth_users_file", false);
	const config_setting_t *mv = string_list(ld, g, "auth_mechanisms", false);
	if (ld->failed)
		return false;
	if (!file) {
		static const char *const need[] = {"auth_mechanisms", "allow_auth_without_tls",
						   "max_logon_failures"};
		for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++)
			if (config_setting_get_member(g, need[i]))
				return fail(ld, member_line(g, need[i]),
					    "%s: needs auth_users_file (AUTH is not offered without one)",
					    need[i]);
		return true;
	}
	int fl = member_line(g, "auth_users_file");
	if (!*file)
		return fail(ld, fl, "auth_users_file: empty path");
	if (!(rc->perms & PERM_AUTHENTICATED))
		return fail(ld, fl, "auth_users_file: the connector has no \"authenticated\" permission group, so AUTH would grant nothing");
	if (!rc->tls && !rc->allow_auth_without_tls)
		return fail(ld, fl, "auth_users_file: AUTH is offered only after STARTTLS: set tls_certificate, or allow_auth_without_tls = true");
	rc->auth_mechs = SMTP_AUTH_PLAIN | SMTP_AUTH_LOGIN;
	if (mv) {
		rc->auth_mechs = 0;
		for (int i = 0; i < config_setting_length(mv); i++) {
			const char *m = config_setting_get_string_elem(mv, i);
			if (strcasecmp(m, "PLAIN") == 0)
				rc->auth_mechs |= SMTP_AUTH_PLAIN;
			else if (strcasecmp(m, "LOGIN") == 0)
				rc->auth_mechs |= SMTP_AUTH_LOGIN;
			else
				return fail(ld, element_line(ld, mv, (unsigned)i),
					    "auth_mechanisms: \"%s\" is not PLAIN or LOGIN", m);
		}
		if (!rc->auth_mechs)
			return fail(ld, line_of(mv), "auth_mechanisms: at least one (PLAIN, LOGIN)");
	}
	rc->auth_users_file = xstrdup(file);
	char why[600];
	rc->users = auth_users_load(file, why, sizeof(why));
	if (!rc->users)
		return fail(ld, fl, "auth_users_file: %s", why);
	return true;
}

const char *const sconn_auth_names[4] = {"none", "plain", "login", "xoauth2"};

/* Send connector AUTH: auth = { mechanism; username; password_file | token_file; }. */
static bool load_sconn_auth(struct loader *ld, struct sconn *sc, const config_setting_t *g)
{
	config_setting_t *a = config_setting_get_member(g, "auth");
	if (!a)
		return true;
	int al = line_of(a);
	if (!config_setting_is_group(a))
		return fail(ld, al, "auth: expected { mechanism = ...; username = ...; password_file = ...; }");
	static const char *const known[] = {"mechanism", "username", "password_file", "token_file",
					    NULL};
	if (!check_members(ld, a, known, NULL, 0))
		return false;
	if (sc->drop_dir)
		return fail(ld, al, "auth: does not apply to a drop_directory connector");
	const char *mech = get_string(ld, a, "mechanism", true);
	const char *user = get_string(ld, a, "username", true);
	const char *pw = get_string(ld, a, "password_file", false);
	const char *tok = get_string(ld, a, "token_file", false);
	if (ld->failed)
		return false;
	unsigned m = 1;
	while (m < 4 && strcasecmp(mech, sconn_auth_names[m]) != 0)
		m++;
	if (m == 4)
		return fail(ld, member_line(a, "mechanism"),
			    "auth.mechanism: expected plain, login or xoauth2");
	if (!*user || strlen(user) > 255)
		return fail(ld, member_line(a, "username"), "auth.username: 1 to 255 characters");
	if (m == SCONN_AUTH_XOAUTH2 ? (!tok || pw) : (!pw || tok))
		return fail(ld, al, m == SCONN_AUTH_XOAUTH2
				    ? "auth: xoauth2 takes token_file (and no password_file)"
				    : "auth: %s takes password_file (and no token_file)",
			    sconn_auth_names[m]);
	const char *file = pw ? pw : tok;
	FILE *f = fopen(file, "r");
	if (!f)
		return fail(ld, member_line(a, pw ? "password_file" : "token_file"), "auth.%s: %s: %s",
			    pw ? "password_file" : "token_file", file, strerror(errno));
	fclose(f);
	sc->auth_mech = m;
	sc->auth_username = xstrdup(user);
	sc->auth_password_file = pw ? xstrdup(pw) : NULL;
	sc->auth_token_file = tok ? xstrdup(tok) : NULL;
	return true;
}

static bool load_connector(struct loader *ld, struct conf *c, struct rconn *rc,
			   const config_setting_t *g)
{
	static const char *const known[] = {"name", "bindings", "remote_ip_ranges",
					    "permission_groups", "tls_certificate", "tls_key",
					    "tls_min_version", "tls_client_ca_file", "auth_mechanisms",
					    "auth_users_file", NULL};
	rc->conf = c;
	rc->line = line_of(g);
	if (!config_setting_is_group(g))
		return fail(ld, rc->line, "receive_connectors: expected { name = ...; }");
	if (!check_members(ld, g, known, rconn_settings,
			   sizeof(rconn_settings) / sizeof(rconn_settings[0])))
		return false;
	const char *name = get_string(ld, g, "name", true);
	if (!name)
		return false;
	if (!*name || strlen(name) > 64)
		return fail(ld, rc->line, "name: 1 to 64 characters");
	rc->name = xstrdup(name);

	const config_setting_t *v = string_list(ld, g, "bindings", true);
	if (!v)
		return false;
	rc->nbindings = (unsigned)config_setting_length(v);
	if (!rc->nbindings)
		return fail(ld, line_of(v), "bindings: at least one ip:port");
	rc->bindings = xcalloc(rc->nbindings, sizeof(*rc->bindings));
	for (unsigned i = 0; i < rc->nbindings; i++) {
		const char *s = config_setting_get_string_elem(v, (int)i);
		struct binding b;
		if (!conf_parse_binding(s, &b))
			return fail(ld, element_line(ld, v, i),
				    "bindings: \"%s\" is not ip:port ([ipv6]:port)", s);
		rc->bindings[i] = add_binding(c, &b);
	}

	v = string_list(ld, g, "remote_ip_ranges", false);
	if (ld->failed)
		return false;
	if (v) {
		rc->nranges = (unsigned)config_setting_length(v);
		rc->ranges = xcalloc(rc->nranges, sizeof(*rc->ranges));
		for (unsigned i = 0; i < rc->nranges; i++) {
			const char *s = config_setting_get_string_elem(v, (int)i);
			if (!conf_parse_range(s, &rc->ranges[i]))
				return fail(ld, element_line(ld, v, i),
					    "remote_ip_ranges: \"%s\" is not an address, a-b range or CIDR", s);
			rc->ranges[i].line = line_of(config_setting_get_elem(v, i));
		}
	} else {
		/* Exchange's default: every address. */
		rc->nranges = 2;
		rc->ranges = xcalloc(2, sizeof(*rc->ranges));
		conf_parse_range("0.0.0.0/0", &rc->ranges[0]);
		conf_parse_range("::/0", &rc->ranges[1]);
	}

	v = string_list(ld, g, "permission_groups", false);
	if (ld->failed)
		return false;
	for (int i = 0; v && i < config_setting_length(v); i++) {
		const char *s = config_setting_get_string_elem(v, i);
		if (strcmp(s, "anonymous") == 0)
			rc->perms |= PERM_ANONYMOUS;
		else if (strcmp(s, "anonymous_relay") == 0)
			rc->perms |= PERM_ANONYMOUS_RELAY;
		else if (strcmp(s, "externally_secured") == 0)
			rc->perms |= PERM_EXTERNALLY_SECURED;
		else if (strcmp(s, "authenticated") == 0)
			rc->perms |= PERM_AUTHENTICATED;
		else
			return fail(ld, element_line(ld, v, (unsigned)i),
				    "permission_groups: unknown group \"%s\" (anonymous, anonymous_relay, externally_secured, authenticated)", s);
	}

	for (size_t i = 0; i < sizeof(rconn_settings) / sizeof(rconn_settings[0]); i++) {
		const struct setting *st = &rconn_settings[i];
		config_setting_t *m = config_setting_get_member(g, st->name);
		if (!setting_value(ld, st, m, st->def,
				   (uint64_t *)((char *)rc + st->offset)))
			return false;
	}
	if (rc->max_hop_count == 0)
		return fail(ld, rc->line, "max_hop_count: must be at least 1");
	if (!load_rconn_tls(ld, rc, g) || !load_rconn_auth(ld, rc, g))
		return false;

	rc->smtp = (struct smtp_server_params){
		.hostname = c->hostname,
		.connector = rc->name,
		.max_message_size = rc->max_message_size,
		.max_header_size = rc->max_header_size,
		.max_recipients = (unsigned)rc->max_recipients,
		.max_hop_count = (unsigned)rc->max_hop_count,
		.max_protocol_errors = (unsigned)rc->max_protocol_errors,
		.max_junk_commands = (unsigned)rc->max_junk_commands,
		/* "authenticated" alone admits a client once AUTH succeeded
		 * (smtp_server: authenticated). */
		.may_submit = (rc->perms & ~PERM_AUTHENTICATED) != 0,
		.bypass_size_limit = (rc->perms & PERM_EXTERNALLY_SECURED) != 0,
		.starttls = rc->tls != NULL,
		.require_tls = rc->require_tls != 0,
		.require_client_cert = rc->require_client_certificate != 0,
		.auth_mechs = rc->auth_mechs,
		.auth_without_tls = rc->allow_auth_without_tls != 0,
		.max_logon_failures = (unsigned)rc->max_logon_failures,
		.rcpt_policy = relay_rcpt_policy,
		.mail_policy = relay_mail_policy,
		.policy_ctx = rc,
		/* "authenticated" on top counts until AUTH succeeds */
		.anonymous_only = (rc->perms & ~PERM_AUTHENTICATED) == PERM_ANONYMOUS,
	};
	return true;
}

static bool load_connectors(struct loader *ld, struct conf *c, config_t *cf)
{
	config_setting_t *list = config_lookup(cf, "receive_connectors");
	if (!list)
		return fail(ld, 1, "no receive_connectors: nothing to listen on");
	if (!config_setting_is_list(list))
		return fail(ld, line_of(list), "receive_connectors: expected a list ( ... )");
	c->nrc = (unsigned)config_setting_length(list);
	if (!c->nrc)
		return fail(ld, line_of(list), "receive_connectors: empty");
	c->rc = xcalloc(c->nrc, sizeof(*c->rc));
	for (unsigned i = 0; i < c->nrc; i++) {
		config_setting_t *g = config_setting_get_elem(list, i);
		if (!load_connector(ld, c, &c->rc[i], g))
			return false;
		for (unsigned k = 0; k < i; k++)
			if (strcasecmp(c->rc[k].name, c->rc[i].name) == 0)
				return fail(ld, c->rc[i].line,
					    "connector name \"%s\" is used twice", c->rc[i].name);
	}
	/* Which connector a client gets must never be arbitrary: connectors
	 * sharing a binding may nest ranges but not cross or repeat them. */
	char why[512];
	int line;
	if (connectors_build(c, why, sizeof(why), &line) < 0)
		return fail(ld, line, "%s", why);
	return true;
}

static bool load_settings(struct loader *ld, const config_setting_t *g,
			  const struct setting *tab, size_t n, void *base)
{
	for (size_t i = 0; i < n; i++) {
		config_setting_t *m = g ? config_setting_get_member(g, tab[i].name) : NULL;
		if (!setting_value(ld, &tab[i], m, tab[i].def,
				   (uint64_t *)((char *)base + tab[i].offset)))
			return false;
	}
	return true;
}

static bool load_queue(struct loader *ld, struct conf *c, config_t *cf)
{
	config_setting_t *g = config_lookup(cf, "queue");
	size_t n = sizeof(queue_settings) / sizeof(queue_settings[0]);
	if (g && !config_setting_is_group(g))
		return fail(ld, line_of(g), "queue: expected a group { ... }");
	if (g && !check_members(ld, g, (const char *const[]){NULL}, queue_settings, n))
		return false;
	if (!load_settings(ld, g, queue_settings, n, &c->queue))
		return false;
	struct queue_conf *q = &c->queue;
	int line = g ? line_of(g) : 1;
	if (q->retry_interval_ms < 1000)
		return fail(ld, line, "retry_interval: at least 1s");
	if (q->max_retry_interval_ms < q->retry_interval_ms)
		q->max_retry_interval_ms = q->retry_interval_ms;
	if (q->message_expiration_ms < 1000)
		return fail(ld, line, "message_expiration: at least 1s");
	return true;
}

static bool parse_address_space(const char *s, struct address_space *a)
{
	if (strcmp(s, "*") == 0) {
		a->domain = xstrdup("");
		return true;
	}
	if (strncmp(s, "*.", 2) == 0) {
		a->subdomains = true;
		s += 2;
	}
	size_t n = strlen(s);
	if (!n || n > 253 || !smtp_helo_arg_valid(s, n) || *s == '[')
		return false;
	a->domain = xstrdup(s);
	for (char *p = a->domain; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return true;
}

/* "host:port" or "[v6]:port"; port defaults to 25. A name is resolved
 * now: delivery then never waits on DNS for its smart hosts. */
static bool parse_smart_host(const char *s, struct smart_host *h, char *why, size_t cap)
{
	char host[300], port[16] = "25";
	const char *colon;
	if (*s == '[') {
		const char *close = strchr(s, ']');
		if (!close || (size_t)(close - s - 1) >= sizeof(host))
			{
			snprintf(why, cap, "missing ]");
			return false;
		}
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		colon = close[1] == ':' ? close + 1 : NULL;
		if (close[1] && !colon)
			{
			snprintf(why, cap, "junk after ]");
			return false;
		}
	} else {
		colon = strrchr(s, ':');
		size_t n = colon ? (size_t)(colon - s) : strlen(s);
		if (n == 0 || n >= sizeof(host))
			{
			snprintf(why, cap, "no host");
			return false;
		}
		memcpy(host, s, n);
		host[n] = '\0';
	}
	if (colon) {
		char *end;
		unsigned long p = strtoul(colon + 1, &end, 10);
		if (!colon[1] || *end || p == 0 || p > 65535)
			{
			snprintf(why, cap, "bad port");
			return false;
		}
		snprintf(port, sizeof(port), "%lu", p);
	}
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	int r = getaddrinfo(host, port, &hints, &ai);
	if (r != 0 || !ai) {
		snprintf(why, cap, "cannot resolve %.100s: %s", host, gai_strerror(r));
		return false;
	}
	memcpy(&h->addr, ai->ai_addr, ai->ai_addrlen);
	h->addrlen = ai->ai_addrlen;
	freeaddrinfo(ai);
	h->text = xstrdup(s);
	return true;
}

static bool load_send_connector(struct loader *ld, struct conf *c, struct sconn *sc,
				const config_setting_t *g)
{
	static const char *const known[] = {"name", "address_spaces", "smart_hosts",
					    "drop_directory", "tls", "tls_ca_file",
					    "tls_server_name", "tls_certificate", "tls_key", "auth",
					    NULL};
	size_t nset = sizeof(sconn_settings) / sizeof(sconn_settings[0]);
	sc->line = line_of(g);
	if (!config_setting_is_group(g))
		return fail(ld, sc->line, "send_connectors: expected { name = ...; }");
	if (!check_members(ld, g, known, sconn_settings, nset))
		return false;
	const char *name = get_string(ld, g, "name", true);
	if (!name)
		return false;
	if (!*name || strlen(name) > 64)
		return fail(ld, sc->line, "name: 1 to 64 characters");
	sc->name = xstrdup(name);
	/* Without address_spaces only content rules route to it: checked
	 * once they are read (check_route_only). */
	const config_setting_t *v = string_list(ld, g, "address_spaces", false);
	if (ld->failed)
		return false;
	sc->nspaces = v ? (unsigned)config_setting_length(v) : 0;
	if (v && !sc->nspaces)
		return fail(ld, line_of(v), "address_spaces: at least one (\"*\", \"domain\" or \"*.domain\")");
	sc->spaces = xcalloc(sc->nspaces, sizeof(*sc->spaces));
	for (unsigned i = 0; i < sc->nspaces; i++) {
		const char *s = config_setting_get_string_elem(v, (int)i);
		sc->spaces[i].line = element_line(ld, v, i);
		if (!parse_address_space(s, &sc->spaces[i]))
			return fail(ld, sc->spaces[i].line,
				    "address_spaces: \"%s\" is not \"*\", a domain or \"*.domain\"", s);
	}
	v = string_list(ld, g, "smart_hosts", false);
	if (ld->failed)
		return false;
	if (v) {
		sc->nhosts = (unsigned)config_setting_length(v);
		if (!sc->nhosts)
			return fail(ld, line_of(v), "smart_hosts: empty (leave it out for MX delivery)");
		sc->hosts = xcalloc(sc->nhosts, sizeof(*sc->hosts));
		for (unsigned i = 0; i < sc->nhosts; i++) {
			const char *s = config_setting_get_string_elem(v, (int)i);
			char why[200];
			if (!parse_smart_host(s, &sc->hosts[i], why, sizeof(why)))
				return fail(ld, element_line(ld, v, i),
					    "smart_hosts: \"%s\": %s (host:port or [ipv6]:port)", s, why);
		}
	}
	const char *d = get_string(ld, g, "drop_directory", false);
	if (ld->failed)
		return false;
	if (d) {
		if (!*d)
			return fail(ld, line_of(config_setting_get_member(g, "drop_directory")),
				    "drop_directory: empty path");
		if (sc->nhosts)
			return fail(ld, line_of(config_setting_get_member(g, "drop_directory")),
				    "drop_directory and smart_hosts exclude each other");
		sc->drop_dir = xstrdup(d);
	}
	if (!load_settings(ld, g, sconn_settings, nset, sc) || !load_sconn_tls(ld, sc, g) ||
	    !load_sconn_auth(ld, sc, g))
		return false;
	if (sc->port == 0)
		return fail(ld, sc->line, "port: 1..65535");
	if (sc->max_messages_per_connection == 0)
		sc->max_messages_per_connection = UINT32_MAX;
	static const char *const at_least_1s[] = {"command_timeout", "data_timeout"};
	for (size_t i = 0; i < 2; i++) {
		const config_setting_t *m = config_setting_get_member(g, at_least_1s[i]);
		uint64_t ms = i ? sc->data_timeout_ms : sc->command_timeout_ms;
		if (ms < 1000)
			return fail(ld, m ? line_of(m) : sc->line, "%s: at least 1s", at_least_1s[i]);
	}
	if (sc->min_data_rate == 0) {
		const config_setting_t *m = config_setting_get_member(g, "min_data_rate");
		return fail(ld, m ? line_of(m) : sc->line,
			    "min_data_rate: at least 1 (octets per second, e.g. \"4KB\")");
	}
	if (!sc->drop_dir) {
		sc->ndomain_slots = 4096;
		sc->domain_conns = xcalloc(sc->ndomain_slots, sizeof(*sc->domain_conns));
	}
	return true;
}

static bool load_send_connectors(struct loader *ld, struct conf *c, config_t *cf)
{
	config_setting_t *list = config_lookup(cf, "send_connectors");
	if (!list)
		return true; /* accepts nothing: every recipient is unroutable */
	if (!config_setting_is_list(list))
		return fail(ld, line_of(list), "send_connectors: expected a list ( ... )");
	c->nsc = (unsigned)config_setting_length(list);
	c->sc = xcalloc(c->nsc, sizeof(*c->sc));
	for (unsigned i = 0; i < c->nsc; i++) {
		if (!load_send_connector(ld, c, &c->sc[i], config_setting_get_elem(list, i)))
			return false;
		for (unsigned k = 0; k < i; k++) {
			if (strcasecmp(c->sc[k].name, c->sc[i].name) == 0)
				return fail(ld, c->sc[i].line,
					    "send connector name \"%s\" is used twice", c->sc[i].name);
			/* The same address space twice would make routing
			 * depend on the order of the file. */
			for (unsigned a = 0; a < c->sc[i].nspaces; a++)
				for (unsigned b = 0; b < c->sc[k].nspaces; b++)
					if (c->sc[i].spaces[a].subdomains == c->sc[k].spaces[b].subdomains &&
					    strcmp(c->sc[i].spaces[a].domain, c->sc[k].spaces[b].domain) == 0)
						return fail(ld, c->sc[i].spaces[a].line,
							    "address space \"%s%s\" is also on send connector \"%s\" (line %d)",
							    c->sc[i].spaces[a].subdomains ? "*." : "",
							    *c->sc[i].spaces[a].domain ? c->sc[i].spaces[a].domain : "*",
							    c->sc[k].name, c->sc[k].spaces[b].line);
		}
	}
	return true;
}

static unsigned space_score(const struct address_space *a, const char *d, size_t len)
{
	size_t n = strlen(a->domain);
	if (n == 0)
		return 1; /* "*" */
	if (len == n && strncasecmp(d, a->domain, n) == 0)
		return a->subdomains ? 2 * (unsigned)n + 2 : 2 * (unsigned)n + 3;
	if (a->subdomains && len > n + 1 && d[len - n - 1] == '.' &&
	    strncasecmp(d + len - n, a->domain, n) == 0)
		return 2 * (unsigned)n + 2;
	return 0;
}

const struct sconn *conf_route(const struct conf *c, const char *domain, size_t len)
{
	const struct sconn *best = NULL;
	unsigned best_score = 0;
	bool literal = len && domain[0] == '[';
	for (unsigned i = 0; i < c->nsc; i++)
		for (unsigned k = 0; k < c->sc[i].nspaces; k++) {
			const struct address_space *a = &c->sc[i].spaces[k];
			unsigned sc = literal ? (*a->domain ? 0 : 1) : space_score(a, domain, len);
			if (sc > best_score) {
				best_score = sc;
				best = &c->sc[i];
			}
		}
	return best;
}

const struct sconn *conf_sconn_named(const struct conf *c, const char *name)
{
	for (unsigned i = 0; i < c->nsc; i++)
		if (strcasecmp(c->sc[i].name, name) == 0)
			return &c->sc[i];
	return NULL;
}

/* A header field to add: "Name: value", printable name (RFC 5322 2.2),
 * no line break, within a line's 998 octets. */
static bool valid_added_header(const char *h)
{
	size_t n = strlen(h);
	const char *colon = strchr(h, ':');
	if (!colon || colon == h || n > 998)
		return false;
	for (const char *p = h; p < colon; p++)
		if (*p <= 32 || *p >= 127)
			return false;
	for (const char *p = colon; *p; p++)
		if (*p == '\r' || *p == '\n' || *p == '\0')
			return false;
	return true;
}

static bool load_content_rule(struct loader *ld, struct conf *c, struct content_rule *r,
			      const config_setting_t *g)
{
	static const char *const known[] = {"name", "where", "pattern", "action", "header",
					    "send_connector", NULL};
	r->line = line_of(g);
	if (!config_setting_is_group(g))
		return fail(ld, r->line, "content_rules: expected { name = ...; where = ...; pattern = ...; action = ...; }");
	if (!check_members(ld, g, known, NULL, 0))
		return false;
	const char *name = get_string(ld, g, "name", true);
	if (!name)
		return false;
	if (!*name || strlen(name) > 64)
		return fail(ld, r->line, "name: 1 to 64 characters");
	for (const char *p = name; *p; p++)
		if ((unsigned char)*p < 32 || *p == 127)
			return fail(ld, r->line, "name: no control characters");
	r->name = xstrdup(name);
	const char *where = get_string(ld, g, "where", true);
	if (!where)
		return false;
	int wl = line_of(config_setting_get_member(g, "where"));
	if (strncasecmp(where, "header:", 7) == 0) {
		const char *f = where + 7;
		if (!*f || strlen(f) > 76)
			return fail(ld, wl, "rule %s: where: \"header:\" needs a field name (\"header:Subject\")", name);
		for (const char *p = f; *p; p++)
			if (*p <= 32 || *p >= 127 || *p == ':')
				return fail(ld, wl, "rule %s: where: \"%s\" is not a header field name", name, f);
		r->where = CONTENT_HEADER;
		r->field = xstrdup(f);
	} else {
		static const struct { const char *n; enum content_where w; } wh[] = {
			{"body", CONTENT_BODY}, {"headers", CONTENT_HEADERS},
			{"sender", CONTENT_SENDER}, {"recipient", CONTENT_RECIPIENT}};
		size_t k = 0;
		while (k < 4 && strcasecmp(where, wh[k].n) != 0)
			k++;
		if (k == 4)
			return fail(ld, wl, "rule %s: where: \"%s\" is not body, headers, header:<Name>, sender or recipient", name, where);
		r->where = wh[k].w;
	}
	const char *pat = get_string(ld, g, "pattern", true);
	if (!pat)
		return false;
	if (!*pat)
		return fail(ld, line_of(config_setting_get_member(g, "pattern")), "rule %s: pattern: empty", name);
	r->pattern = xstrdup(pat);
	const char *act = get_string(ld, g, "action", true);
	if (!act)
		return false;
	int al = line_of(config_setting_get_member(g, "action"));
	unsigned a = 0;
	while (a < CONTENT_ACTION_COUNT && strcasecmp(act, content_action_names[a]) != 0)
		a++;
	if (a == CONTENT_ACTION_COUNT)
		return fail(ld, al, "rule %s: action: \"%s\" is not reject, hold, add_header or route", name, act);
	r->action = (enum content_action)a;
	const char *hdr = get_string(ld, g, "header", false);
	if (ld->failed)
		return false;
	int hl = hdr ? line_of(config_setting_get_member(g, "header")) : r->line;
	if (r->action == CONTENT_ADD_HEADER && !hdr)
		return fail(ld, r->line, "rule %s: action add_header needs header = \"Name: value\"", name);
	if (hdr && r->action != CONTENT_ADD_HEADER)
		return fail(ld, hl, "rule %s: header is only for action add_header", name);
	if (hdr && !valid_added_header(hdr))
		return fail(ld, hl, "rule %s: header: \"Name: value\" on one line (printable name, at most 998 octets)", name);
	if (hdr)
		r->header = xstrdup(hdr);
	const char *scn = get_string(ld, g, "send_connector", false);
	if (ld->failed)
		return false;
	int sl = scn ? line_of(config_setting_get_member(g, "send_connector")) : r->line;
	if (r->action == CONTENT_ROUTE && !scn)
		return fail(ld, r->line, "rule %s: action route needs send_connector = \"<name>\"", name);
	if (scn && r->action != CONTENT_ROUTE)
		return fail(ld, sl, "rule %s: send_connector is only for action route", name);
	if (scn) {
		const struct sconn *sc = conf_sconn_named(c, scn);
		if (!sc)
			return fail(ld, sl, "rule %s: send_connector: no send connector \"%s\"", name, scn);
		r->send_connector = xstrdup(sc->name);
	}
	return true;
}

/* content_rules = ( { name; where; pattern; action; ... } ): compiled
 * here, so a bad pattern fails the load (and so --check and a reload). */
static bool load_content_rules(struct loader *ld, struct conf *c, config_t *cf)
{
	config_setting_t *list = config_lookup(cf, "content_rules");
	if (!list)
		return true;
	if (!config_setting_is_list(list))
		return fail(ld, line_of(list), "content_rules: expected a list ( ... )");
	struct content_rules *cr = &c->content;
	unsigned n = (unsigned)config_setting_length(list);
	cr->rule = xcalloc(n, sizeof(*cr->rule));
	for (unsigned i = 0; i < n; i++) {
		cr->n = i + 1; /* counted now: freed whatever follows */
		if (!load_content_rule(ld, c, &cr->rule[i], config_setting_get_elem(list, i)))
			return false;
		for (unsigned k = 0; k < i; k++)
			if (strcasecmp(cr->rule[k].name, cr->rule[i].name) == 0)
				return fail(ld, cr->rule[i].line,
					    "rule %s: the name is used twice (line %d)", cr->rule[i].name,
					    cr->rule[k].line);
	}
	unsigned bad;
	char msg[512];
	if (!content_compile(cr, &bad, msg, sizeof(msg))) {
		if (bad >= cr->n)
			bad = 0;
		const struct content_rule *r = &cr->rule[bad];
		int pl = r->line;
		const config_setting_t *g = config_setting_get_elem(list, bad);
		if (g && config_setting_get_member(g, "pattern"))
			pl = line_of(config_setting_get_member(g, "pattern"));
		return fail(ld, pl, "rule %s: %s", r->name, msg);
	}
	return true;
}

/* A send connector without address_spaces takes only what content rules
 * route to it. */
static bool check_route_only(struct loader *ld, struct conf *c)
{
	for (unsigned i = 0; i < c->nsc; i++) {
		if (c->sc[i].nspaces)
			continue;
		bool routed = false;
		for (unsigned k = 0; k < c->content.n; k++)
			routed |= c->content.rule[k].action == CONTENT_ROUTE &&
				  strcasecmp(c->content.rule[k].send_connector, c->sc[i].name) == 0;
		if (!routed)
			return fail(ld, c->sc[i].line,
				    "missing setting \"address_spaces\" (only a send connector a content rule routes to may go without)");
	}
	return true;
}

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
	struct loader ld = {.path = path, .err = err, .errlen = errlen};
	config_t cf;
	config_init(&cf);
	if (config_read_file(&cf, path) != CONFIG_TRUE) {
		if (config_error_type(&cf) == CONFIG_ERR_FILE_IO)
			snprintf(err, errlen, "%s:0: cannot read file: %s", path,
				 strerror(errno ? errno : ENOENT));
		else
			snprintf(err, errlen, "%s:%d: %s",
				 config_error_file(&cf) ? config_error_file(&cf) : path,
				 config_error_line(&cf), config_error_text(&cf));
		config_destroy(&cf);
		return NULL;
	}
	/* Whoever may write it may make us an open relay or run as root. */
	struct stat st;
	if (stat(path, &st) == 0 && (st.st_mode & S_IWOTH)) {
		snprintf(err, errlen,
			 "%s:0: writable by others (mode %04o): refusing it; chmod o-w %s", path,
			 (unsigned)(st.st_mode & 07777), path);
		config_destroy(&cf);
		return NULL;
	}
	struct conf *c = xcalloc(1, sizeof(*c));
	atomic_init(&c->refs, 1);
	c->path = xstrdup(path);
	static const char *const top[] = {"server", "accepted_domains",
					  "receive_connectors", "send_connectors",
					  "queue", "content_rules", NULL};
	bool ok = check_members(&ld, config_root_setting(&cf), top, NULL, 0) &&
		  load_server(&ld, c, &cf) && load_domains(&ld, c, &cf) &&
		  load_connectors(&ld, c, &cf) && resolve_proxy_bindings(&ld, c) &&
		  load_send_connectors(&ld, c, &cf) && check_relay_domains(&ld, c) &&
		  load_queue(&ld, c, &cf) && load_content_rules(&ld, c, &cf) &&
		  check_route_only(&ld, c);
	config_destroy(&cf);
	if (!ok) {
		conf_free(c);
		return NULL;
	}
	if (c->workers == 0) {
		/* One per CPU, up to what message ids can tell apart (1024). */
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		c->workers = n > 1024 ? 1024 : n > 0 ? (unsigned)n : 1;
	}
	return c;
}

void conf_ref(struct conf *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void conf_unref(struct conf *c)
{
	if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
		conf_free(c);
}

void conf_free(struct conf *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->nrc; i++) {
		free(c->rc[i].name);
		free(c->rc[i].bindings);
		free(c->rc[i].ranges);
		for (unsigned k = 0; k < c->rc[i].ntls; k++)
			free(c->rc[i].tls_certs[k]);
		for (unsigned k = 0; k < c->rc[i].ntls_keys; k++)
			free(c->rc[i].tls_keys[k]);
		free(c->rc[i].tls_certs);
		free(c->rc[i].tls_keys);
		free(c->rc[i].tls_client_ca_file);
		tls_server_free(c->rc[i].tls);
		free(c->rc[i].auth_users_file);
		auth_users_free(c->rc[i].users);
	}
	for (unsigned i = 0; i < c->ndomains; i++) {
		free(c->domains[i].domain);
		free(c->domains[i].recipients_file);
		recipients_free(c->domains[i].recipients);
	}
	free(c->user);
	free(c->trusted_proxies);
	free(c->metrics_allow);
	for (unsigned i = 0; i < c->nsc; i++) {
		struct sconn *sc = &c->sc[i];
		for (unsigned k = 0; k < sc->nspaces; k++)
			free(sc->spaces[k].domain);
		for (unsigned k = 0; k < sc->nhosts; k++)
			free(sc->hosts[k].text);
		free(sc->spaces);
		free(sc->hosts);
		free(sc->name);
		free(sc->drop_dir);
		free(sc->tls_ca_file);
		free(sc->tls_server_name);
		free(sc->tls_cert);
		free(sc->tls_key);
		tls_client_free(sc->tls);
		free(sc->auth_username);
		free(sc->auth_password_file);
		free(sc->auth_token_file);
		free((void *)sc->domain_conns);
	}
	free(c->sc);
	content_rules_free(&c->content);
	free(c->dns_servers);
	connectors_free(c);
	free(c->rc);
	free(c->domains);
	free(c->bindings);
	free(c->path);
	free(c->hostname);
	free(c->spool_dir);
	free(c->stats_socket);
	free(c->metrics_listen);
	free(c->log_file);
	free(c->pickup_dir);
	free(c);
}


const char *conf_perm_names(unsigned perms, char *buf, size_t cap)
{
	static const char *const pn[] = {"anonymous", "anonymous_relay",
					 "externally_secured", "authenticated"};
	size_t n = 0;
	buf[0] = '\0';
	for (int p = 0; p < 4; p++)
		if ((perms & (1u << p)) && n < cap)
			n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? "," : "", pn[p]);
	return buf[0] ? buf : "none";
}

/* A setting's value as --check shows it: "unlimited", "600000ms", "ip"... */
static const char *setting_text(const struct setting *st, uint64_t v, char *buf,
				size_t cap)
{
	switch (st->kind) {
	case K_SIZE:
	case K_COUNT:
		if (v == 0 && (st->kind == K_SIZE || strcmp(st->def, "unlimited") == 0))
			return "unlimited";
		snprintf(buf, cap, "%llu", (unsigned long long)v);
		return buf;
	case K_DURATION:
		snprintf(buf, cap, "%llums", (unsigned long long)v);
		return buf;
	case K_BOOL:
		return v ? "true" : "false";
	case K_RATE_SOURCE:
		return rate_source_names[v < 4 ? v : 0];
	}
	return "";
}

static uint64_t setting_of(const struct rconn *rc, const struct setting *st)
{
	return *(const uint64_t *)((const char *)rc + st->offset);
}

static void print_addr(FILE *out, int family, u128 v)
{
	char buf[INET6_ADDRSTRLEN];
	if (family == 4) {
		struct in_addr a = {htonl((uint32_t)v)};
		inet_ntop(AF_INET, &a, buf, sizeof(buf));
	} else {
		struct in6_addr a;
		for (int i = 15; i >= 0; i--, v >>= 8)
			a.s6_addr[i] = (uint8_t)v;
		inet_ntop(AF_INET6, &a, buf, sizeof(buf));
	}
	fputs(buf, out);
}

/* Text: "    range 10.0.0.20-10.0.0.29 -> 10.0.0.20/30 10.0.0.24/30 ...";
 * JSON: {"range": "...", "prefixes": ["10.0.0.20/30", ...]} */
static void print_range(FILE *out, const struct ip_range *r, bool json)
{
	struct lpm_prefix p[256];
	size_t n = lpm_range_to_prefixes(r->family == 4 ? 32 : 128, r->lo, r->hi, p);
	if (json)
		fprintf(out, "{\"range\": \"%s\", \"prefixes\": [", r->text);
	else
		fprintf(out, "    range %s ->", r->text);
	for (size_t i = 0; i < n; i++) {
		fputs(json ? (i ? ", \"" : "\"") : " ", out);
		print_addr(out, r->family, p[i].addr);
		fprintf(out, "/%u%s", p[i].len, json ? "\"" : "");
	}
	fputs(json ? "]}" : "\n", out);
}

/* --check: what STARTTLS offers on a connector. */
static void print_rconn_tls(FILE *out, const struct rconn *rc)
{
	if (!rc->tls) {
		fprintf(out, "    %-46s %s\n", "starttls", "not offered (no tls_certificate)");
		return;
	}
	fprintf(out, "    %-46s offered, TLS %s minimum\n", "starttls",
		rc->tls_min_version == 13 ? "1.3" : "1.2");
	for (unsigned k = 0; k < rc->ntls; k++) {
		char names[600];
		tls_server_names(rc->tls, k, names, sizeof(names));
		fprintf(out, "    %-46s %s (%s)%s\n", "tls_certificate", rc->tls_certs[k],
			names[0] ? names : "no names", k == 0 ? " default" : "");
	}
	if (rc->tls_client_ca_file)
		fprintf(out, "    %-46s %s\n", "tls_client_ca_file", rc->tls_client_ca_file);
}

void conf_print(const struct conf *c, FILE *out)
{
	static const char *const dtype[] = {"authoritative", "internal_relay",
					    "external_relay"};
	static const char *const backends[] = {"auto", "io_uring", "epoll"};
	fprintf(out, "server: hostname=%s workers=%u io_backend=%s spool_dir=%s max_open_files=%llu\n",
		c->hostname, c->workers, backends[c->io_backend % 3], c->spool_dir,
		(unsigned long long)c->max_open_files);
	if (c->user)
		fprintf(out, "server: user=%s (after binding)\n", c->user);
	/* 72.5 bytes a slot (throttle_table_bytes); read at start only. */
	fprintf(out, "server: throttle_table_size=%u (%.1f MiB, read at start)\n",
		c->throttle_table_size, (double)c->throttle_table_size * 72.5 / (1 << 20));
	for (unsigned i = 0; i < c->ntrusted_proxies; i++)
		fprintf(out, "proxy_protocol: trusted proxy %s\n", c->trusted_proxies[i].text);
	if (c->pickup_dir)
		fprintf(out, "pickup: directory=%s connector=Pickup max_parallel=%u max_message_size=%llu max_recipients_per_message=%u permissions=anonymous_relay (read at start)\n",
			c->pickup_dir, c->pickup_max_parallel,
			(unsigned long long)c->pickup_max_message_size, c->pickup_max_recipients);
	for (unsigned i = 0; i < c->nmetrics_allow; i++)
		fprintf(out, "metrics_allow: %s\n", c->metrics_allow[i].text);
	fprintf(out, "accepted_domains:%s\n", c->ndomains ? "" : " (none)");
	for (unsigned i = 0; i < c->ndomains; i++) {
		const struct accepted_domain *ad = &c->domains[i];
		fprintf(out, "  %s%s %s", ad->subdomains ? "*." : "", ad->domain, dtype[ad->type]);
		if (ad->type != DOMAIN_AUTHORITATIVE) {
			const struct sconn *sc = conf_route(c, ad->domain, strlen(ad->domain));
			fprintf(out, " (relayed to send connector \"%s\"; no recipient check, no sender check)",
				sc ? sc->name : "-");
		} else if (ad->recipients) {
			fprintf(out, " recipients_file=%s (%zu entries; others refused at RCPT)",
				ad->recipients_file, recipients_count(ad->recipients));
		} else {
			fputs(" (every local part accepted)", out);
		}
		fputc('\n', out);
	}
	for (unsigned b = 0; b < c->nbindings; b++) {
		fprintf(out, "binding %s:%s\n", c->bindings[b].text,
			c->bindings[b].proxy ? " PROXY protocol required from trusted proxies" : "");
		for (unsigned i = 0; i < c->nrc; i++) {
			const struct rconn *rc = &c->rc[i];
			if (!rconn_on_binding(rc, b))
				continue;
			char perms[96];
			fprintf(out, "  connector \"%s\" permissions=%s", rc->name,
				conf_perm_names(rc->perms, perms, sizeof(perms)));
			fprintf(out, "\n");
			for (unsigned k = 0; k < rc->nranges; k++)
				print_range(out, &rc->ranges[k], false);
			for (size_t k = 0; k < sizeof(rconn_settings) / sizeof(rconn_settings[0]); k++) {
				char v[32];
				fprintf(out, "    %-46s %s\n", rconn_settings[k].name,
					setting_text(&rconn_settings[k], setting_of(rc, &rconn_settings[k]),
						     v, sizeof(v)));
			}
			print_rconn_tls(out, rc);
			if (rc->users)
				fprintf(out, "    %-46s %s (%u users)%s%s\n", "auth", rc->auth_users_file,
					auth_users_count(rc->users),
					rc->auth_mechs & SMTP_AUTH_PLAIN ? " PLAIN" : "",
					rc->auth_mechs & SMTP_AUTH_LOGIN ? " LOGIN" : "");
			else if (rc->perms == PERM_AUTHENTICATED)
				fprintf(out, "    note: \"authenticated\" without auth_users_file admits nobody (MAIL gets 530 5.7.1)\n");
		}
	}
	for (unsigned i = 0; i < c->nsc; i++) {
		const struct sconn *sc = &c->sc[i];
		fprintf(out, "send connector \"%s\" tls=%s", sc->name, tls_mode_names[sc->tls_mode & 3]);
		if (sc->tls_server_name)
			fprintf(out, " tls_server_name=%s", sc->tls_server_name);
		if (sc->tls_ca_file)
			fprintf(out, " tls_ca_file=%s", sc->tls_ca_file);
		if (sc->tls_cert)
			fprintf(out, " tls_certificate=%s", sc->tls_cert);
		if (sc->auth_mech)
			fprintf(out, " auth=%s username=%s", sconn_auth_names[sc->auth_mech],
				sc->auth_username);
		fprintf(out, "\n");
		if (sc->drop_dir)
			continue;
		for (size_t k = 0; k < sizeof(sconn_settings) / sizeof(sconn_settings[0]); k++) {
			const struct setting *st = &sconn_settings[k];
			uint64_t v = *(const uint64_t *)((const char *)sc + st->offset);
			char buf[32];
			/* Where 0 means no limit (stored as UINT32_MAX for
			 * messages per connection). */
			bool none = (v == 0 && strncmp(st->name, "max_connections", 15) == 0) ||
				    (v == UINT32_MAX &&
				     strcmp(st->name, "max_messages_per_connection") == 0);
			fprintf(out, "    %-46s %s\n", st->name,
				none ? "unlimited" : setting_text(st, v, buf, sizeof(buf)));
		}
	}
	/* Compiled, so listed: what --check accepted. */
	for (unsigned i = 0; i < c->content.n; i++) {
		const struct content_rule *r = &c->content.rule[i];
		fprintf(out, "content rule \"%s\" where=%s%s%s action=%s%s%s\n", r->name,
			content_where_names[r->where], r->field ? ":" : "", r->field ? r->field : "",
			content_action_names[r->action], r->send_connector ? " send_connector=" : "",
			r->send_connector ? r->send_connector : "");
	}
}

void conf_print_json(const struct conf *c, FILE *out)
{
	fprintf(out, "{\"hostname\": ");
	json_write_string(out, c->hostname);
	fprintf(out, ", \"workers\": %u, \"bindings\": [", c->workers);
	for (unsigned b = 0; b < c->nbindings; b++) {
		fprintf(out, "%s{\"binding\": ", b ? ", " : "");
		json_write_string(out, c->bindings[b].text);
		fprintf(out, ", \"proxy_protocol\": %s", c->bindings[b].proxy ? "true" : "false");
		fputs(", \"connectors\": [", out);
		bool first = true;
		for (unsigned i = 0; i < c->nrc; i++) {
			const struct rconn *rc = &c->rc[i];
			if (!rconn_on_binding(rc, b))
				continue;
			char perms[96];
			fputs(first ? "{\"name\": " : ", {\"name\": ", out);
			first = false;
			json_write_string(out, rc->name);
			fputs(", \"permission_groups\": ", out);
			json_write_string(out, conf_perm_names(rc->perms, perms, sizeof(perms)));
			fputs(", \"ranges\": [", out);
			for (unsigned k = 0; k < rc->nranges; k++) {
				if (k)
					fputs(", ", out);
				print_range(out, &rc->ranges[k], true);
			}
			fputs("], \"settings\": {", out);
			for (size_t k = 0; k < sizeof(rconn_settings) / sizeof(rconn_settings[0]); k++) {
				char v[32];
				fprintf(out, "%s\"%s\": ", k ? ", " : "", rconn_settings[k].name);
				json_write_string(out, setting_text(&rconn_settings[k],
							    setting_of(rc, &rconn_settings[k]), v, sizeof(v)));
			}
			fputs("}}", out);
		}
		fputs("]}", out);
	}
	fputs("]}\n", out);
}
