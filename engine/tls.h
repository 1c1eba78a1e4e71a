/* TLS over memory buffers (BoringSSL), for both directions. The socket
 * stays with the caller and its I/O interface: ciphertext received is
 * handed in with tls_input(), ciphertext to send is taken out with
 * tls_output(); nothing here blocks or touches a descriptor. Contexts
 * (struct tls_server per receive connector, struct tls_client per send
 * connector) are built when a configuration loads, are immutable after
 * that and are shared by every worker; one struct tls belongs to one
 * connection on one worker. Session-ticket keys are process-wide and
 * rotated, so a ticket issued by one worker (or before a reload) resumes
 * on any other. */
#ifndef POSTERN_TLS_H
#define POSTERN_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tls_server;
struct tls_client;
struct tls;
typedef struct ssl_session_st SSL_SESSION;

/* What a receive connector configures (config.c fills it in). */
struct tls_server_conf {
	const char *const *certs;  /* PEM chain files; the first is the default */
	const char *const *keys;   /* the matching private keys */
	unsigned ncerts;
	int min_version;           /* 12 or 13 */
	const char *client_ca_file;/* NULL: no client certificate requested */
	const char *id;            /* connector name: tickets do not cross connectors */
};

enum tls_mode { TLS_MODE_NONE, TLS_MODE_OPPORTUNISTIC, TLS_MODE_REQUIRED,
		TLS_MODE_VERIFY };
extern const char *const tls_mode_names[4];

struct tls_client_conf {
	enum tls_mode mode;
	const char *ca_file;       /* verify: trust anchors (NULL: system default) */
	const char *cert, *key;    /* presented to the next hop, or NULL */
};

/* Once at start, before any context: the ticket keys. false: no entropy. */
bool tls_global_init(void);

/* Builds a context; NULL with "FILE: reason" in err. Warnings (a private
 * key readable by group or others) go to warn(ctx, text). */
struct tls_server *tls_server_new(const struct tls_server_conf *c, char *err, size_t cap,
				  void (*warn)(void *ctx, const char *text), void *wctx);
void tls_server_free(struct tls_server *s);
/* The DNS names (SAN, or the CN) each certificate answers to, joined by
 * ",": for --check. */
void tls_server_names(const struct tls_server *s, unsigned i, char *out, size_t cap);

struct tls_client *tls_client_new(const struct tls_client_conf *c, char *err, size_t cap,
				  void (*warn)(void *ctx, const char *text), void *wctx);
void tls_client_free(struct tls_client *c);

/* One connection's TLS. NULL when memory is short. */
struct tls *tls_server_start(struct tls_server *s);
/* sni: the name sent (NULL: none); verify_name: checked against the
 * certificate in TLS_MODE_VERIFY; resume: a cached session or NULL. */
struct tls *tls_client_start(struct tls_client *c, const char *sni, const char *verify_name,
			     SSL_SESSION *resume);
void tls_free(struct tls *t);

/* Ciphertext from the peer. false: out of memory. */
bool tls_input(struct tls *t, const void *p, size_t n);
/* Ciphertext to send: a pointer to what is pending and its length (0:
 * nothing); tls_output_done(n) after n of those bytes were sent. */
size_t tls_output(struct tls *t, const char **p);
void tls_output_done(struct tls *t, size_t n);

enum tls_result { TLS_DONE = 1, TLS_AGAIN = 0, TLS_EOF = -1, TLS_FAILED = -2 };

/* Drives the handshake: TLS_DONE once established, TLS_AGAIN for more
 * input (send tls_output() first), TLS_FAILED with tls_error() set. */
enum tls_result tls_handshake(struct tls *t);
/* Plaintext received: bytes (> 0), TLS_AGAIN, TLS_EOF (close_notify) or
 * TLS_FAILED. */
long tls_read(struct tls *t, void *buf, size_t cap);
/* Encrypts all of p (memory buffers never refuse). false: failed. */
bool tls_write(struct tls *t, const void *p, size_t n);

bool tls_established(const struct tls *t);
/* "TLSv1.3", "TLS_AES_128_GCM_SHA256" (standard names). */
const char *tls_version(const struct tls *t);
const char *tls_cipher(const struct tls *t);
bool tls_resumed(const struct tls *t);
/* A peer certificate was presented and chains to the configured CA
 * (client certificates inbound, the server's in TLS_MODE_VERIFY). */
bool tls_peer_verified(const struct tls *t);
/* Subject CN of the peer's certificate, or "" (for logs). */
void tls_peer_name(const struct tls *t, char *out, size_t cap);

/* Why the handshake failed, for logs: "untrusted chain (...)", "name
 * mismatch", "handshake failed (...)". */
enum tls_failure { TLS_FAIL_NONE, TLS_FAIL_HANDSHAKE, TLS_FAIL_UNTRUSTED,
		   TLS_FAIL_NAME_MISMATCH };
enum tls_failure tls_failure_kind(const struct tls *t);
const char *tls_error(const struct tls *t);

/* The session to resume next time (client side, once established; a
 * reference the caller owns: SSL_SESSION_free via tls_session_free), or
 * NULL. */
SSL_SESSION *tls_session_get(struct tls *t);
void tls_session_free(SSL_SESSION *s);

#endif
