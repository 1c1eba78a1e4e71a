/* TLS over memory BIOs (see tls.h). The only file that includes BoringSSL
 * headers. */
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

const char *const tls_mode_names[4] = {"none", "opportunistic", "required", "verify"};

/* ECDHE only, AEAD only, for TLS 1.2 (TLS 1.3 suites are fixed and all
 * ephemeral). Server preference: this order. */
#define SERVER_CIPHERS                                                       \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"         \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"         \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"

/* ---- session-ticket keys: process-wide, rotated ---------------------- */

/* A key encrypts new tickets for ROTATE_S, then only decrypts for another
 * ROTATE_S (tickets carry a lifetime hint of the same). */
#define ROTATE_S (12 * 3600)

struct ticket_key {
	uint8_t name[16];
	uint8_t aes[16];
	uint8_t hmac[32];
	time_t born;
};

static struct {
	pthread_mutex_t lock;
	struct ticket_key cur, prev;
	bool have_prev;
	bool ready;
} keys = {.lock = PTHREAD_MUTEX_INITIALIZER};

static bool key_make(struct ticket_key *k, time_t now)
{
	k->born = now;
	return RAND_bytes(k->name, sizeof(k->name)) && RAND_bytes(k->aes, sizeof(k->aes)) &&
	       RAND_bytes(k->hmac, sizeof(k->hmac));
}

bool tls_global_init(void)
{
	pthread_mutex_lock(&keys.lock);
	bool ok = keys.ready || (keys.ready = key_make(&keys.cur, time(NULL)));
	pthread_mutex_unlock(&keys.lock);
	return ok;
}

/* Current key for encrypting (rotating when due), or the key named name
 * for decrypting. Returns 0 (none), 1 (found), 2 (found, but renew). */
static int key_pick(const uint8_t *name, struct ticket_key *out)
{
	time_t now = time(NULL);
	int r = 0;
	pthread_mutex_lock(&keys.lock);
	if (keys.ready && now - keys.cur.born >= ROTATE_S) {
		struct ticket_key n;
		if (key_make(&n, now)) {
			keys.prev = keys.cur;
			keys.have_prev = true;
			keys.cur = n;
		}
	}
	if (keys.have_prev && now - keys.prev.born >= 2 * ROTATE_S)
		keys.have_prev = false;
	if (!name) {
		*out = keys.cur;
		r = keys.ready;
	} else if (keys.ready && memcmp(name, keys.cur.name, 16) == 0) {
		*out = keys.cur;
		r = 1;
	} else if (keys.have_prev && memcmp(name, keys.prev.name, 16) == 0) {
		*out = keys.prev;
		r = 2;
	}
	pthread_mutex_unlock(&keys.lock);
	return r;
}

static int ticket_cb(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *ctx,
		     HMAC_CTX *hctx, int encrypt)
{
	(void)ssl;
	struct ticket_key k;
	int r;
	if (encrypt) {
		if (!key_pick(NULL, &k) || !RAND_bytes(iv, EVP_MAX_IV_LENGTH))
			return -1;
		memcpy(key_name, k.name, 16);
		r = 1;
		if (!EVP_EncryptInit_ex(ctx, EVP_aes_128_cbc(), NULL, k.aes, iv))
			r = -1;
	} else {
		r = key_pick(key_name, &k);
		if (r == 0)
			return 0; /* unknown key: a full handshake */
		if (!EVP_DecryptInit_ex(ctx, EVP_aes_128_cbc(), NULL, k.aes, iv))
			r = -1;
	}
	if (r > 0 && !HMAC_Init_ex(hctx, k.hmac, sizeof(k.hmac), EVP_sha256(), NULL))
		r = -1;
	OPENSSL_cleanse(&k, sizeof(k));
	return r;
}

/* ---- errors ---------------------------------------------------------- */

/* The first queued BoringSSL error as text (the queue is cleared). */
static void ssl_err_text(char *out, size_t cap, const char *fallback)
{
	uint32_t e = ERR_get_error();
	if (!e) {
		snprintf(out, cap, "%s", fallback);
		return;
	}
	const char *r = ERR_reason_error_string(e);
	snprintf(out, cap, "%s", r ? r : fallback);
	for (char *p = out; *p; p++)
		if (*p == '_')
			*p = ' ';
	for (char *p = out; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	ERR_clear_error();
}

/* "FILE: reason" for a file that cannot be used. */
static bool file_fail(char *err, size_t cap, const char *path, const char *what)
{
	char why[200];
	if (errno && !ERR_peek_error())
		snprintf(why, sizeof(why), "%s", strerror(errno));
	else
		ssl_err_text(why, sizeof(why), "unreadable");
	snprintf(err, cap, "%s: %s: %s", path, what, why);
	return false;
}

static bool readable(const char *path, char *err, size_t cap)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, cap, "%s: %s", path, strerror(errno));
		return false;
	}
	fclose(f);
	return true;
}

static void key_mode_check(const char *path, void (*warn)(void *, const char *), void *wctx)
{
	struct stat st;
	if (warn && stat(path, &st) == 0 && (st.st_mode & 077)) {
		char t[600];
		snprintf(t, sizeof(t), "%s: private key is readable by group or others (mode %03o)",
			 path, (unsigned)(st.st_mode & 0777));
		warn(wctx, t);
	}
}

/* Loads chain + key into ctx and checks they belong together. */
static bool load_pair(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t cap,
		      void (*warn)(void *, const char *), void *wctx)
{
	if (!readable(cert, err, cap) || !readable(key, err, cap))
		return false;
	errno = 0;
	ERR_clear_error();
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
		return file_fail(err, cap, cert, "not a PEM certificate chain");
	errno = 0;
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		uint32_t e = ERR_peek_error();
		if (ERR_GET_LIB(e) == ERR_LIB_X509 && (ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH ||
						       ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)) {
			ERR_clear_error();
			snprintf(err, cap, "%s: private key does not match the certificate in %s", key,
				 cert);
			return false;
		}
		return file_fail(err, cap, key, "not a PEM private key");
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ERR_clear_error();
		snprintf(err, cap, "%s: private key does not match the certificate in %s", key, cert);
		return false;
	}
	key_mode_check(key, warn, wctx);
	return true;
}

/* ---- receive side ---------------------------------------------------- */

#define NAMES_MAX 16

struct tls_cert {
	SSL_CTX *ctx;
	char *names[NAMES_MAX];  /* lower case; "*.x" wildcards allowed */
	unsigned nnames;
};

struct tls_server {
	struct tls_cert *certs;
	unsigned ncerts;
	bool want_client_cert;
};

static void cert_add_name(struct tls_cert *c, const char *n, size_t len)
{
	if (c->nnames >= NAMES_MAX || len == 0 || len > 253)
		return;
	char *s = strndup(n, len);
	if (!s)
		return;
	for (char *p = s; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	c->names[c->nnames++] = s;
}

/* The names the leaf certificate of ctx answers to: its SAN dNSNames, else
 * its subject CN. */
static void cert_names(struct tls_cert *c)
{
	X509 *x = SSL_CTX_get0_certificate(c->ctx);
	if (!x)
		return;
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (size_t i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		if (g->type == GEN_DNS)
			cert_add_name(c, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
				      (size_t)ASN1_STRING_length(g->d.dNSName));
	}
	GENERAL_NAMES_free(gens);
	if (c->nnames)
		return;
	char cn[256];
	int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
					  sizeof(cn));
	if (n > 0)
		cert_add_name(c, cn, (size_t)n);
}

static bool name_matches(const char *pattern, const char *host)
{
	if (strcasecmp(pattern, host) == 0)
		return true;
	if (pattern[0] != '*' || pattern[1] != '.')
		return false;
	const char *dot = strchr(host, '.');
	return dot && dot != host && strcasecmp(pattern + 1, dot) == 0;
}

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
	(void)alert;
	struct tls_server *s = arg;
	const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (!host || s->ncerts < 2)
		return SSL_TLSEXT_ERR_OK;
	for (unsigned i = 0; i < s->ncerts; i++)
		for (unsigned k = 0; k < s->certs[i].nnames; k++)
			if (name_matches(s->certs[i].names[k], host)) {
				if (i)
					SSL_set_SSL_CTX(ssl, s->certs[i].ctx);
				return SSL_TLSEXT_ERR_OK;
			}
	return SSL_TLSEXT_ERR_OK; /* unknown name: the default certificate */
}

/* Client certificates are checked, not demanded: the handshake goes on
 * and the session decides (require_client_certificate refuses MAIL). */
static int verify_accept(int ok, X509_STORE_CTX *x)
{
	(void)ok;
	(void)x;
	return 1;
}

static SSL_CTX *ctx_base(bool server, int min_version)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx)
		return NULL;
	uint16_t minv = min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
	if (!SSL_CTX_set_min_proto_version(ctx, minv) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (server) {
		SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
		if (!SSL_CTX_set_strict_cipher_list(ctx, SERVER_CIPHERS)) {
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_tlsext_ticket_key_cb(ctx, ticket_cb);
		/* One ticket per handshake (BoringSSL's default is two): an MTA
		 * reconnects one connection at a time, and each ticket is an
		 * encryption on the server and a message for the client. */
		SSL_CTX_set_num_tickets(ctx, 1);
		SSL_CTX_set_timeout(ctx, ROTATE_S);
	}
	return ctx;
}

struct tls_server *tls_server_new(const struct tls_server_conf *c, char *err, size_t cap,
				  void (*warn)(void *ctx, const char *text), void *wctx)
{
	struct tls_server *s = calloc(1, sizeof(*s));
	if (!s || !(s->certs = calloc(c->ncerts, sizeof(*s->certs)))) {
		free(s);
		snprintf(err, cap, "out of memory");
		return NULL;
	}
	s->want_client_cert = c->client_ca_file != NULL;
	STACK_OF(X509_NAME) *cas = NULL;
	if (c->client_ca_file) {
		if (!readable(c->client_ca_file, err, cap))
			goto fail;
		cas = SSL_load_client_CA_file(c->client_ca_file);
		if (!cas) {
			errno = 0;
			file_fail(err, cap, c->client_ca_file, "no PEM certificates");
			goto fail;
		}
	}
	for (unsigned i = 0; i < c->ncerts; i++) {
		struct tls_cert *tc = &s->certs[i];
		tc->ctx = ctx_base(true, c->min_version);
		s->ncerts = i + 1;
		if (!tc->ctx) {
			ssl_err_text(err, cap, "cannot create a TLS context");
			goto fail;
		}
		if (!load_pair(tc->ctx, c->certs[i], c->keys[i], err, cap, warn, wctx))
			goto fail;
		/* Tickets name their connector: one connector's session does
		 * not resume on another. */
		size_t idl = strlen(c->id);
		SSL_CTX_set_session_id_context(tc->ctx, (const uint8_t *)c->id,
					       idl > SSL_MAX_SID_CTX_LENGTH ? SSL_MAX_SID_CTX_LENGTH
									 : idl);
		if (c->client_ca_file) {
			errno = 0;
			if (SSL_CTX_load_verify_locations(tc->ctx, c->client_ca_file, NULL) != 1) {
				file_fail(err, cap, c->client_ca_file, "not a PEM CA file");
				goto fail;
			}
			STACK_OF(X509_NAME) *dup = SSL_dup_CA_list(cas);
			if (dup)
				SSL_CTX_set_client_CA_list(tc->ctx, dup);
			SSL_CTX_set_verify(tc->ctx, SSL_VERIFY_PEER, verify_accept);
		}
		cert_names(tc);
	}
	if (s->ncerts > 1) {
		SSL_CTX_set_tlsext_servername_callback(s->certs[0].ctx, sni_cb);
		SSL_CTX_set_tlsext_servername_arg(s->certs[0].ctx, s);
	}
	if (cas)
		sk_X509_NAME_pop_free(cas, X509_NAME_free);
	return s;
fail:
	if (cas)
		sk_X509_NAME_pop_free(cas, X509_NAME_free);
	tls_server_free(s);
	return NULL;
}

void tls_server_free(struct tls_server *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->ncerts; i++) {
		SSL_CTX_free(s->certs[i].ctx);
		for (unsigned k = 0; k < s->certs[i].nnames; k++)
			free(s->certs[i].names[k]);
	}
	free(s->certs);
	free(s);
}

void tls_server_names(const struct tls_server *s, unsigned i, char *out, size_t cap)
{
	size_t n = 0;
	out[0] = '\0';
	if (i >= s->ncerts)
		return;
	for (unsigned k = 0; k < s->certs[i].nnames && n + 1 < cap; k++) {
		int w = snprintf(out + n, cap - n, "%s%s", k ? "," : "", s->certs[i].names[k]);
		if (w < 0)
			break;
		n += (size_t)w;
	}
}

/* ---- send side ------------------------------------------------------- */

struct tls_client {
	SSL_CTX *ctx;
	enum tls_mode mode;
};

static int new_session_cb(SSL *ssl, SSL_SESSION *sess);

struct tls_client *tls_client_new(const struct tls_client_conf *c, char *err, size_t cap,
				  void (*warn)(void *ctx, const char *text), void *wctx)
{
	struct tls_client *t = calloc(1, sizeof(*t));
	if (!t) {
		snprintf(err, cap, "out of memory");
		return NULL;
	}
	t->mode = c->mode;
	t->ctx = ctx_base(false, 12);
	if (!t->ctx) {
		ssl_err_text(err, cap, "cannot create a TLS context");
		goto fail;
	}
	if (c->mode == TLS_MODE_VERIFY) {
		if (c->ca_file) {
			if (!readable(c->ca_file, err, cap))
				goto fail;
			errno = 0;
			if (SSL_CTX_load_verify_locations(t->ctx, c->ca_file, NULL) != 1) {
				file_fail(err, cap, c->ca_file, "not a PEM CA file");
				goto fail;
			}
		} else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
			ssl_err_text(err, cap, "no default trust store");
			goto fail;
		}
	}
	/* Verification is ours to judge after the handshake (tls.h: the
	 * failure kind names the reason); the handshake itself goes on. */
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
	if (c->cert && !load_pair(t->ctx, c->cert, c->key, err, cap, warn, wctx))
		goto fail;
	SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_CLIENT |
						   SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(t->ctx, new_session_cb);
	return t;
fail:
	tls_client_free(t);
	return NULL;
}

void tls_client_free(struct tls_client *c)
{
	if (!c)
		return;
	SSL_CTX_free(c->ctx);
	free(c);
}

/* ---- one connection -------------------------------------------------- */

struct tls {
	SSL *ssl;
	BIO *rbio, *wbio;    /* network side: we write into rbio, read from wbio */
	bool server;
	bool done;
	enum tls_mode mode;
	bool verified;
	enum tls_failure fail;
	SSL_SESSION *fresh; /* client: newest session from the server */
	char *out;           /* ciphertext taken out of wbio, not yet sent */
	size_t out_off, out_len, out_cap;
	char err[200];
};

static int ex_index = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;

static void ex_init(void)
{
	ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct tls *t = SSL_get_ex_data(ssl, ex_index);
	if (!t)
		return 0;
	if (t->fresh)
		SSL_SESSION_free(t->fresh);
	t->fresh = sess;
	return 1; /* we keep the reference */
}

static struct tls *tls_new(SSL_CTX *ctx, bool server)
{
	pthread_once(&ex_once, ex_init);
	struct tls *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->server = server;
	t->ssl = SSL_new(ctx);
	t->rbio = BIO_new(BIO_s_mem());
	t->wbio = BIO_new(BIO_s_mem());
	if (!t->ssl || !t->rbio || !t->wbio) {
		SSL_free(t->ssl);
		BIO_free(t->rbio);
		BIO_free(t->wbio);
		free(t);
		return NULL;
	}
	/* An empty read BIO means "want more", not end of file. */
	BIO_set_mem_eof_return(t->rbio, -1);
	SSL_set_bio(t->ssl, t->rbio, t->wbio);
	SSL_set_ex_data(t->ssl, ex_index, t);
	if (server)
		SSL_set_accept_state(t->ssl);
	else
		SSL_set_connect_state(t->ssl);
	return t;
}

struct tls *tls_server_start(struct tls_server *s)
{
	return tls_new(s->certs[0].ctx, true);
}

struct tls *tls_client_start(struct tls_client *c, const char *sni, const char *verify_name,
			     SSL_SESSION *resume)
{
	struct tls *t = tls_new(c->ctx, false);
	if (!t)
		return NULL;
	t->mode = c->mode;
	if (sni && *sni && sni[0] != '[')
		SSL_set_tlsext_host_name(t->ssl, sni);
	if (c->mode == TLS_MODE_VERIFY && verify_name && *verify_name) {
		X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
		X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		X509_VERIFY_PARAM_set1_host(vp, verify_name, strlen(verify_name));
	}
	if (resume)
		SSL_set_session(t->ssl, resume);
	return t;
}

void tls_free(struct tls *t)
{
	if (!t)
		return;
	if (t->fresh)
		SSL_SESSION_free(t->fresh);
	SSL_free(t->ssl); /* frees both BIOs */
	free(t->out);
	free(t);
}

/* An idle connection keeps no large buffers: a memory BIO keeps the
 * capacity of its biggest burst, so an empty one past SHRINK is replaced. */
#define SHRINK (32 * 1024)

static BIO *fresh_bio(BIO *b)
{
	BUF_MEM *bm = NULL;
	if (BIO_pending(b) || BIO_get_mem_ptr(b, &bm) != 1 || !bm || bm->max <= SHRINK)
		return NULL;
	BIO *n = BIO_new(BIO_s_mem());
	if (n)
		BIO_set_mem_eof_return(n, -1);
	return n;
}

static void shrink(struct tls *t)
{
	BIO *r = fresh_bio(t->rbio);
	if (r) {
		SSL_set0_rbio(t->ssl, r); /* frees the old one */
		t->rbio = r;
	}
	BIO *w = fresh_bio(t->wbio);
	if (w) {
		SSL_set0_wbio(t->ssl, w);
		t->wbio = w;
	}
	if (t->out_off == t->out_len && t->out) {
		free(t->out);
		t->out = NULL;
		t->out_off = t->out_len = t->out_cap = 0;
	}
}

bool tls_input(struct tls *t, const void *p, size_t n)
{
	while (n) {
		int k = BIO_write(t->rbio, p, n > INT32_MAX ? INT32_MAX : (int)n);
		if (k <= 0)
			return false;
		p = (const char *)p + k;
		n -= (size_t)k;
	}
	return true;
}

/* Moves what BoringSSL wrote into our own buffer, so the pointer handed
 * out stays valid while a send is in flight. */
static void pull_output(struct tls *t)
{
	size_t pend = BIO_pending(t->wbio);
	if (!pend)
		return;
	if (t->out_off == t->out_len)
		t->out_off = t->out_len = 0;
	if (t->out_len + pend > t->out_cap) {
		size_t cap = t->out_cap ? t->out_cap : 4096;
		while (cap < t->out_len + pend)
			cap *= 2;
		char *b = realloc(t->out, cap);
		if (!b)
			return; /* stays in the BIO until memory is back */
		t->out = b;
		t->out_cap = cap;
	}
	int k = BIO_read(t->wbio, t->out + t->out_len, (int)pend);
	if (k > 0)
		t->out_len += (size_t)k;
}

size_t tls_output(struct tls *t, const char **p)
{
	pull_output(t);
	*p = t->out + t->out_off;
	return t->out_len - t->out_off;
}

void tls_output_done(struct tls *t, size_t n)
{
	t->out_off += n;
	if (t->out_off > t->out_len)
		t->out_off = t->out_len;
	if (t->out_off == t->out_len)
		shrink(t);
}

static void judge_peer(struct tls *t)
{
	X509 *peer = SSL_get_peer_certificate(t->ssl);
	long vr = SSL_get_verify_result(t->ssl);
	t->verified = peer && vr == X509_V_OK;
	if (!t->server && t->mode == TLS_MODE_VERIFY && !t->verified) {
		if (!peer) {
			t->fail = TLS_FAIL_UNTRUSTED;
			snprintf(t->err, sizeof(t->err), "untrusted chain (no certificate)");
		} else if (vr == X509_V_ERR_HOSTNAME_MISMATCH) {
			t->fail = TLS_FAIL_NAME_MISMATCH;
			snprintf(t->err, sizeof(t->err), "name mismatch");
		} else {
			t->fail = TLS_FAIL_UNTRUSTED;
			snprintf(t->err, sizeof(t->err), "untrusted chain (%s)",
				 X509_verify_cert_error_string(vr));
		}
	}
	X509_free(peer);
}

static enum tls_result failed(struct tls *t, int rc)
{
	int e = SSL_get_error(t->ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		ERR_clear_error();
		return TLS_AGAIN;
	}
	if (e == SSL_ERROR_ZERO_RETURN) {
		ERR_clear_error();
		return TLS_EOF;
	}
	if (!t->fail) {
		t->fail = TLS_FAIL_HANDSHAKE;
		char why[160];
		ssl_err_text(why, sizeof(why), e == SSL_ERROR_SYSCALL ? "connection closed" : "protocol error");
		snprintf(t->err, sizeof(t->err), "%s%s", t->done ? "" : "handshake failed: ", why);
	}
	ERR_clear_error();
	return TLS_FAILED;
}

enum tls_result tls_handshake(struct tls *t)
{
	if (t->done)
		return TLS_DONE;
	int rc = SSL_do_handshake(t->ssl);
	if (rc != 1) {
		enum tls_result r = failed(t, rc);
		return r == TLS_EOF ? TLS_FAILED : r;
	}
	t->done = true;
	judge_peer(t);
	if (t->fail)
		return TLS_FAILED;
	return TLS_DONE;
}

long tls_read(struct tls *t, void *buf, size_t cap)
{
	int n = SSL_read(t->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
	if (n > 0)
		return n;
	enum tls_result r = failed(t, n);
	if (r == TLS_AGAIN)
		shrink(t);
	return r;
}

bool tls_write(struct tls *t, const void *p, size_t n)
{
	while (n) {
		int k = SSL_write(t->ssl, p, n > 65536 ? 65536 : (int)n);
		if (k <= 0) {
			failed(t, k);
			return false;
		}
		p = (const char *)p + k;
		n -= (size_t)k;
	}
	return true;
}

bool tls_established(const struct tls *t)
{
	return t->done;
}

const char *tls_version(const struct tls *t)
{
	return SSL_get_version(t->ssl);
}

const char *tls_cipher(const struct tls *t)
{
	const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
	const char *n = c ? SSL_CIPHER_standard_name(c) : NULL;
	return n ? n : "none";
}

bool tls_resumed(const struct tls *t)
{
	return SSL_session_reused(t->ssl) == 1;
}

bool tls_peer_verified(const struct tls *t)
{
	return t->verified;
}

void tls_peer_name(const struct tls *t, char *out, size_t cap)
{
	out[0] = '\0';
	X509 *peer = SSL_get_peer_certificate(t->ssl);
	if (!peer)
		return;
	int n = X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, out,
					  (int)cap);
	if (n < 0)
		out[0] = '\0';
	X509_free(peer);
}

enum tls_failure tls_failure_kind(const struct tls *t)
{
	return t->fail;
}

const char *tls_error(const struct tls *t)
{
	return t->err[0] ? t->err : "no error";
}

SSL_SESSION *tls_session_get(struct tls *t)
{
	SSL_SESSION *s = t->fresh;
	t->fresh = NULL;
	return s;
}

void tls_session_free(SSL_SESSION *s)
{
	if (s)
		SSL_SESSION_free(s);
}
