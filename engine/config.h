/* Configuration: reads the libconfig file (DESIGN B.2) into one immutable
 * struct conf, validated, with FILE:LINE errors. Nothing here changes after
 * conf_load() returns; a reload builds a new struct. */
#ifndef POSTERN_CONFIG_H
#define POSTERN_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "content.h"
#include "smtp_server.h"

enum perm {
	PERM_ANONYMOUS = 1 << 0,          /* submit to accepted domains */
	PERM_ANONYMOUS_RELAY = 1 << 1,    /* relay anywhere */
	PERM_EXTERNALLY_SECURED = 1 << 2, /* trusted: relay, no size limits */
	PERM_AUTHENTICATED = 1 << 3,      /* relay after SMTP AUTH */
};

enum rate_source { RATE_SOURCE_IP, RATE_SOURCE_USER, RATE_SOURCE_ALL,
		   RATE_SOURCE_NONE };

enum domain_type { DOMAIN_AUTHORITATIVE, DOMAIN_INTERNAL_RELAY,
		   DOMAIN_EXTERNAL_RELAY };

typedef unsigned __int128 u128;

/* One remote_ip_ranges entry as an inclusive range; IPv4 kept apart from
 * IPv6 (family 4 or 6). */
struct ip_range {
	int family;
	u128 lo, hi;
	char text[96];
	int line;
};

struct binding {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char text[64];
	bool proxy;               /* server.proxy_protocol names it (B.10) */
};

struct conf;

struct rconn {
	const struct conf *conf;
	char *name;
	int line;
	unsigned *bindings;       /* indices into conf->bindings */
	unsigned nbindings;
	struct ip_range *ranges;
	unsigned nranges;
	unsigned perms;           /* PERM_* */
	unsigned stats_id;        /* counters slot, stable across reloads (metrics.h) */
	/* Settings below are filled from rconn_settings[] (config.c). */
	uint64_t max_message_size;        /* bytes, 0 = unlimited */
	uint64_t max_header_size;         /* bytes, 0 = unlimited */
	uint64_t max_recipients;          /* 0 = unlimited */
	uint64_t max_hop_count;
	uint64_t max_protocol_errors;
	uint64_t max_junk_commands;       /* 0 = unlimited */
	uint64_t message_rate_limit;      /* per minute, 0 = unlimited */
	uint64_t message_rate_source;     /* enum rate_source */
	uint64_t max_inbound_connection;  /* 0 = unlimited */
	uint64_t max_inbound_connection_per_source;
	uint64_t max_inbound_connection_percentage_per_source;
	uint64_t connection_timeout_ms;
	uint64_t connection_inactivity_timeout_ms;
	uint64_t tarpit_interval_ms;
	uint64_t require_tls;
	uint64_t require_client_certificate;
	uint64_t allow_auth_without_tls;
	uint64_t max_logon_failures;      /* 0 = no limit */
	uint64_t protocol_log;
	/* TLS (DESIGN B.7): certificates offered with STARTTLS, or none. */
	char **tls_certs, **tls_keys;
	unsigned ntls, ntls_keys;
	unsigned tls_min_version;         /* 12 or 13 */
	char *tls_client_ca_file;
	struct tls_server *tls;           /* built at load: NULL without certificates */
	/* SMTP AUTH (DESIGN B.8): offered when the users file is set. */
	unsigned auth_mechs;              /* SMTP_AUTH_* */
	char *auth_users_file;
	struct auth_users *users;         /* read at load (and so on every reload) */
	struct smtp_server_params smtp;   /* what the session state machine sees */
};

struct recipient_set; /* recipients.h */

struct accepted_domain {
	char *domain;     /* lower case, without "*." */
	bool subdomains;  /* written as "*.domain": the domain and its subdomains */
	enum domain_type type;
	int line;
	/* recipients_file (B.9, authoritative domains only): the addresses
	 * that exist; NULL without the key (every local part is taken). */
	char *recipients_file;
	struct recipient_set *recipients;
};

struct binding_table; /* connectors.c */
struct tls_server;    /* tls.h */
struct auth_users;    /* auth.h */

enum sconn_auth_mech { SCONN_AUTH_NONE, SCONN_AUTH_PLAIN, SCONN_AUTH_LOGIN, SCONN_AUTH_XOAUTH2 };
extern const char *const sconn_auth_names[4];
struct tls_client;

/* One smart_hosts entry: "host:port", "[v6]:port"; a name is resolved when
 * the configuration is loaded. */
struct smart_host {
	char *text;
	struct sockaddr_storage addr;
	socklen_t addrlen;
};

/* One address_spaces entry: "*", "domain" or "*.domain" (the domain and
 * every subdomain). Lower case, without "*.". */
struct address_space {
	char *domain;      /* "" for "*" */
	bool subdomains;
	int line;
};

struct sconn {
	char *name;
	int line;
	unsigned stats_id;        /* counters slot (metrics.h), stable across reloads */
	struct address_space *spaces;
	unsigned nspaces;
	struct smart_host *hosts; /* tried in order; none: MX lookup */
	unsigned nhosts;
	char *drop_dir;           /* drop directory connector */
	/* Filled from sconn_settings[] (config.c). */
	uint64_t port;                    /* for MX delivery */
	uint64_t max_connections;         /* concurrent, all workers; 0 = unlimited */
	uint64_t max_connections_per_domain; /* ... to one recipient domain (MX) */
	uint64_t max_message_rate;        /* messages per minute, 0 = unlimited */
	uint64_t max_messages_per_connection;
	uint64_t max_recipients_per_message;
	uint64_t connect_timeout_ms;
	uint64_t idle_timeout_ms;         /* how long an idle connection is kept */
	uint64_t command_timeout_ms;      /* a whole reply, from its command on */
	uint64_t data_timeout_ms;         /* the body and its final reply, plus ... */
	uint64_t min_data_rate;           /* ... its size at this many octets/s */
	/* TLS to the next hop (DESIGN B.7). */
	unsigned tls_mode;                /* enum tls_mode (tls.h) */
	char *tls_ca_file;                /* verify: trust anchors */
	char *tls_server_name;            /* NULL: the smart host / MX name */
	char *tls_cert, *tls_key;         /* presented to the next hop, or NULL */
	struct tls_client *tls;           /* built at load; NULL for tls = "none" */
	/* AUTH to the next hop (B.8): auth = { mechanism; username; password_file | token_file; } */
	unsigned auth_mech;               /* enum sconn_auth_mech; SCONN_AUTH_NONE without */
	char *auth_username;
	char *auth_password_file;         /* plain, login */
	char *auth_token_file;            /* xoauth2: a bearer token, re-read when it changes */
	/* Not configuration: the workers' open connections per recipient
	 * domain (deliver.c), kept here for all of them to find; NULL for a
	 * drop directory. ndomain_slots is a power of two. */
	_Atomic uint64_t *domain_conns;
	unsigned ndomain_slots;
};

struct queue_conf {
	uint64_t retry_interval_ms;
	uint64_t max_retry_interval_ms;
	uint64_t message_expiration_ms;
	uint64_t delay_notification_ms;   /* 0 = never */
	uint64_t max_return_size;         /* RET=FULL: larger originals come back as headers */
	uint64_t hold;                    /* keep everything queued, deliver nothing
	                                   * (maintenance; lifted by a reload) */
};

struct conf {
	atomic_uint refs;          /* main, each worker, each connection */
	char *path;
	char *hostname;
	unsigned workers;          /* resolved: never 0 */
	unsigned io_backend;       /* enum io_backend (io.h); read at start only */
	char *spool_dir;
	char *stats_socket;
	char *metrics_listen;
	char *log_file;            /* NULL: stderr */
	uint64_t shutdown_grace_ms;
	uint64_t drain_timeout_ms; /* posternctl drain: exit by then at the latest */
	uint64_t max_open_files;   /* RLIMIT_NOFILE raised to this at start */
	uint32_t throttle_table_size; /* slots of throttle.c's table; read at start */
	char *user;                /* server.user: run as it once bound (B.6) */
	struct ip_range *trusted_proxies; /* server.proxy_protocol (B.10) */
	unsigned ntrusted_proxies;
	struct ip_range *metrics_allow;   /* who may GET /metrics (none: loopback) */
	unsigned nmetrics_allow;
	uint64_t spool_segment_bytes;
	int log_level;
	struct binding *bindings;
	unsigned nbindings;
	struct rconn *rc;
	unsigned nrc;
	struct accepted_domain *domains;
	unsigned ndomains;
	struct binding_table *tables; /* one per binding (connectors.c) */
	struct sconn *sc;
	unsigned nsc;
	struct queue_conf queue;
	char *dns_servers;         /* c-ares CSV, NULL: /etc/resolv.conf */
	struct content_rules content; /* content_rules (B.9), compiled */
	/* The pickup directory (B.11): server.pickup_directory, or
	 * server.pickup = { directory; ... }. NULL: none. Read at start. */
	char *pickup_dir;
	unsigned pickup_max_parallel;      /* files read and being spooled at once */
	uint64_t pickup_max_message_size;  /* the message, in wire form */
	unsigned pickup_max_recipients;
};

/* Reads and validates path. On error returns NULL and writes
 * "FILE:LINE: what is wrong" into err. */
struct conf *conf_load(const char *path, char *err, size_t errlen);
void conf_free(struct conf *c);

/* A configuration lives while anything holds it: sessions keep the one they
 * started with across reloads. conf_load() returns it with one reference. */
void conf_ref(struct conf *c);
void conf_unref(struct conf *c);

/* The resolved connector table, as `postern --check` prints it. */
void conf_print(const struct conf *c, FILE *out);
void conf_print_json(const struct conf *c, FILE *out);

/* The receive connector a client at sa gets on binding b: the most specific
 * matching range wins. NULL when none matches. */
const struct rconn *conf_match(const struct conf *c, unsigned b,
			       const struct sockaddr *sa,
			       const struct ip_range **why);

/* True when a connection from sa may (must) send a PROXY header: sa is in
 * server.proxy_protocol.trusted_proxies. why: the range that matched. */
bool conf_trusted_proxy(const struct conf *c, const struct sockaddr *sa,
			const struct ip_range **why);

/* True when a client at sa may read /metrics: one in server.metrics_allow,
 * or without it a loopback address. */
bool conf_metrics_allowed(const struct conf *c, const struct sockaddr *sa);

/* The send connector for a recipient domain (any case, len bytes; an
 * address literal "[...]" matches "*" only): the most specific address
 * space wins, "domain" over "*.domain" over a shorter "*.domain" over "*".
 * NULL when none matches. */
const struct sconn *conf_route(const struct conf *c, const char *domain, size_t len);

/* The send connector of that name (any case), or NULL: a content rule's
 * route, also after a restart (the envelope names it). */
const struct sconn *conf_sconn_named(const struct conf *c, const char *name);

/* True when connector rc listens on binding b. */
static inline bool rconn_on_binding(const struct rconn *rc, unsigned b)
{
	for (unsigned k = 0; k < rc->nbindings; k++)
		if (rc->bindings[k] == b)
			return true;
	return false;
}

/* "anonymous,anonymous_relay" for perms, "none" for 0. */
const char *conf_perm_names(unsigned perms, char *buf, size_t cap);

/* Parsers shared with tests and the stats socket. */
bool conf_parse_range(const char *s, struct ip_range *r);
bool conf_parse_binding(const char *s, struct binding *b);
bool conf_parse_size(const char *s, uint64_t *out);
bool conf_parse_duration_ms(const char *s, uint64_t *out);
/* An IPv6 address as family + value (IPv4-mapped counts as IPv4). */
static inline void conf_addr6_value(const uint8_t a[16], int *family, u128 *v)
{
	u128 x = 0;
	for (int i = 0; i < 16; i++)
		x = (x << 8) | a[i];
	if ((x >> 32) == 0xffff) {
		*family = 4;
		*v = x & 0xffffffffu;
	} else {
		*family = 6;
		*v = x;
	}
}

/* Address of sa as family + value (IPv4-mapped IPv6 counts as IPv4). */
static inline bool conf_sockaddr_value(const struct sockaddr *sa, int *family, u128 *v)
{
	if (sa->sa_family == AF_INET) {
		*family = 4;
		*v = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		conf_addr6_value(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr, family, v);
		return true;
	}
	return false;
}

#endif
