/* Users file and verifier threads (see auth.h). */
#include "auth.h"

#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io.h"

/* ---- the users file -------------------------------------------------- */

struct auth_user {
	char *name;
	char *hash;
};

struct auth_users {
	struct auth_user *v;   /* sorted by name */
	unsigned n;
};

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct auth_user *)a)->name, ((const struct auth_user *)b)->name);
}

static bool hash_supported(const char *h)
{
	static const char *const prefixes[] = {"$y$", "$gy$", "$7$", "$2b$", "$6$", "$5$"};
	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
		if (strncmp(h, prefixes[i], strlen(prefixes[i])) == 0)
			return true;
	return false;
}

struct auth_users *auth_users_load(const char *path, char *err, size_t cap)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, cap, "%s: %s", path, strerror(errno));
		return NULL;
	}
	struct auth_users *u = calloc(1, sizeof(*u));
	unsigned vcap = 0;
	char line[1024];
	int ln = 0;
	bool ok = u != NULL;
	if (!ok)
		snprintf(err, cap, "%s: out of memory", path);
	while (ok && fgets(line, sizeof(line), f)) {
		ln++;
		size_t len = strlen(line);
		if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
			snprintf(err, cap, "%s:%d: line too long", path, ln);
			ok = false;
			break;
		}
		while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		const char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p || *p == '#')
			continue;
		char *colon = strchr(line, ':');
		if (!colon || colon == line) {
			snprintf(err, cap, "%s:%d: expected name:hash", path, ln);
			ok = false;
			break;
		}
		*colon = '\0';
		const char *name = line, *hash = colon + 1;
		if (strlen(name) > 255 || strlen(hash) >= 256 || !hash_supported(hash)) {
			snprintf(err, cap, "%s:%d: %s", path, ln,
				 strlen(name) > 255 ? "name longer than 255 bytes"
						    : "unsupported hash (use $y$ yescrypt or $6$ SHA-512: postern --hash-password)");
			ok = false;
			break;
		}
		if (u->n == vcap) {
			vcap = vcap ? vcap * 2 : 16;
			struct auth_user *nv = realloc(u->v, vcap * sizeof(*nv));
			if (!nv) {
				snprintf(err, cap, "%s: out of memory", path);
				ok = false;
				break;
			}
			u->v = nv;
		}
		u->v[u->n].name = strdup(name);
		u->v[u->n].hash = strdup(hash);
		if (!u->v[u->n].name || !u->v[u->n].hash) {
			free(u->v[u->n].name);
			free(u->v[u->n].hash);
			snprintf(err, cap, "%s: out of memory", path);
			ok = false;
			break;
		}
		u->n++;
	}
	if (ok && ferror(f)) {
		snprintf(err, cap, "%s: %s", path, strerror(errno));
		ok = false;
	}
	fclose(f);
	if (ok && u->n > 1) {
		qsort(u->v, u->n, sizeof(*u->v), by_name);
		for (unsigned i = 1; i < u->n; i++)
			if (strcmp(u->v[i - 1].name, u->v[i].name) == 0) {
				snprintf(err, cap, "%s: user \"%s\" appears twice", path, u->v[i].name);
				ok = false;
				break;
			}
	}
	auth_wipe(line, sizeof(line));
	if (!ok) {
		auth_users_free(u);
		return NULL;
	}
	return u;
}

void auth_users_free(struct auth_users *u)
{
	if (!u)
		return;
	for (unsigned i = 0; i < u->n; i++) {
		free(u->v[i].name);
		auth_wipe(u->v[i].hash, strlen(u->v[i].hash));
		free(u->v[i].hash);
	}
	free(u->v);
	free(u);
}

unsigned auth_users_count(const struct auth_users *u)
{
	return u ? u->n : 0;
}

const char *auth_users_hash(const struct auth_users *u, const char *name)
{
	if (!u || !u->n)
		return NULL;
	struct auth_user key = {.name = (char *)name};
	const struct auth_user *f = bsearch(&key, u->v, u->n, sizeof(*u->v), by_name);
	return f ? f->hash : NULL;
}

/* ---- checking -------------------------------------------------------- */

void auth_wipe(void *p, size_t n)
{
	volatile unsigned char *q = p;
	while (n--)
		*q++ = 0;
}

bool auth_verify(const char *hash, const char *pass)
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	if (!cd)
		return false;
	const char *out = crypt_rn(pass, hash, cd, sizeof(*cd));
	bool ok = false;
	if (out && out[0] != '*') {
		size_t a = strlen(out), b = strlen(hash);
		/* Constant time over the longer one; lengths differ only for a
		 * malformed stored hash. */
		size_t n = a > b ? a : b;
		unsigned char diff = (unsigned char)(a != b);
		for (size_t i = 0; i < n; i++)
			diff |= (unsigned char)((i < a ? out[i] : 0) ^ (i < b ? hash[i] : 0));
		ok = diff == 0;
	}
	auth_wipe(cd, sizeof(*cd));
	free(cd);
	return ok;
}

bool auth_hash_password(const char *pass, char *out, size_t cap)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	if (!crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof(salt)))
		return false;
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	if (!cd)
		return false;
	const char *h = crypt_rn(pass, salt, cd, sizeof(*cd));
	bool ok = h && h[0] != '*' && strlen(h) < cap;
	if (ok)
		snprintf(out, cap, "%s", h);
	auth_wipe(cd, sizeof(*cd));
	free(cd);
	return ok;
}

/* A yescrypt hash of a random password with the default cost: an unknown
 * user costs what a known one does, so timing does not tell names. */
static char decoy[256];
static pthread_once_t decoy_once = PTHREAD_ONCE_INIT;

static void decoy_init(void)
{
	char pw[32];
	snprintf(pw, sizeof(pw), "decoy-%ld-%p", (long)time(NULL), (void *)&pw);
	if (!auth_hash_password(pw, decoy, sizeof(decoy)))
		snprintf(decoy, sizeof(decoy), "*");
}

const char *auth_decoy_hash(void)
{
	pthread_once(&decoy_once, decoy_init);
	return decoy;
}

/* ---- the verifier threads -------------------------------------------- */

struct authd {
	pthread_mutex_t lock;
	pthread_cond_t cond, idle;
	struct auth_req **q;   /* ring */
	unsigned head, n, cap;
	bool stop;
	pthread_t *threads;
	struct mailbox **busy; /* per thread: whose request it is checking */
	unsigned nthreads;
};

struct verifier_arg {
	struct authd *d;
	unsigned i;
};

static void *verifier(void *arg)
{
	struct authd *d = ((struct verifier_arg *)arg)->d;
	unsigned me = ((struct verifier_arg *)arg)->i;
	free(arg);
	for (;;) {
		pthread_mutex_lock(&d->lock);
		while (!d->stop && d->n == 0)
			pthread_cond_wait(&d->cond, &d->lock);
		if (d->stop && d->n == 0) {
			pthread_mutex_unlock(&d->lock);
			return NULL;
		}
		struct auth_req *r = d->q[d->head];
		d->head = (d->head + 1) % d->cap;
		d->n--;
		d->busy[me] = r->reply_to;
		pthread_mutex_unlock(&d->lock);
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		bool ok = auth_verify(r->hash, r->pass);
		clock_gettime(CLOCK_MONOTONIC, &b);
		r->ok = ok && r->known;
		r->cost_us = (uint64_t)((b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000);
		auth_wipe(r->pass, sizeof(r->pass));
		pthread_mutex_lock(&d->lock);
		mailbox_post(r->reply_to, &r->node);
		io_wake(r->wake);
		d->busy[me] = NULL;
		pthread_cond_broadcast(&d->idle);
		pthread_mutex_unlock(&d->lock);
	}
}

struct authd *authd_start(unsigned threads, unsigned queue_max)
{
	struct authd *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->cap = queue_max ? queue_max : 1;
	d->q = calloc(d->cap, sizeof(*d->q));
	d->threads = calloc(threads ? threads : 1, sizeof(*d->threads));
	d->busy = calloc(threads ? threads : 1, sizeof(*d->busy));
	if (!d->q || !d->threads || !d->busy) {
		free(d->q);
		free(d->threads);
		free(d->busy);
		free(d);
		return NULL;
	}
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	pthread_cond_init(&d->idle, NULL);
	auth_decoy_hash();
	for (unsigned i = 0; i < (threads ? threads : 1); i++) {
		struct verifier_arg *a = malloc(sizeof(*a));
		if (!a)
			break;
		*a = (struct verifier_arg){d, i};
		if (pthread_create(&d->threads[i], NULL, verifier, a) != 0) {
			free(a);
			break;
		}
		d->nthreads++;
	}
	if (!d->nthreads) {
		authd_stop(d);
		return NULL;
	}
	return d;
}

void authd_stop(struct authd *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&d->lock);
	d->stop = true;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	for (unsigned i = 0; i < d->nthreads; i++)
		pthread_join(d->threads[i], NULL);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	pthread_cond_destroy(&d->idle);
	free(d->q);
	free(d->threads);
	free(d->busy);
	free(d);
}

void authd_forget(struct authd *d, struct mailbox *mb)
{
	if (!d)
		return;
	pthread_mutex_lock(&d->lock);
	/* Queued ones go straight back, unchecked (ok stays false). */
	unsigned kept = 0;
	for (unsigned i = 0; i < d->n; i++) {
		struct auth_req *r = d->q[(d->head + i) % d->cap];
		if (r->reply_to == mb) {
			auth_wipe(r->pass, sizeof(r->pass));
			mailbox_post(mb, &r->node);
		} else {
			d->q[(d->head + kept++) % d->cap] = r;
		}
	}
	d->n = kept;
	for (;;) {
		bool busy = false;
		for (unsigned i = 0; i < d->nthreads; i++)
			busy |= d->busy[i] == mb;
		if (!busy)
			break;
		pthread_cond_wait(&d->idle, &d->lock);
	}
	pthread_mutex_unlock(&d->lock);
}

bool authd_submit(struct authd *d, struct auth_req *r)
{
	pthread_mutex_lock(&d->lock);
	bool ok = !d->stop && d->n < d->cap;
	if (ok) {
		d->q[(d->head + d->n) % d->cap] = r;
		d->n++;
		pthread_cond_signal(&d->cond);
	}
	pthread_mutex_unlock(&d->lock);
	return ok;
}
