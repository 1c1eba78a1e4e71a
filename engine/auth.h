/* SMTP AUTH credentials (DESIGN B.8): the users file of a receive
 * connector ("name:hash" lines, crypt(3) hashes), and the verifier: a
 * small pool of threads that runs crypt so that a slow hash (yescrypt
 * takes milliseconds by design) never stalls a worker. A worker posts a
 * request and gets it back in its own mailbox, with a wake-up. */
#ifndef POSTERN_AUTH_H
#define POSTERN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mailbox.h"

struct io;
struct auth_users;
struct authd;

/* Reads path; NULL with "PATH:LINE: reason" in err. Lines: "name:hash",
 * "#" comments and blank lines skipped; hashes $y$ (yescrypt), $gy$, $7$,
 * $2b$, $6$ (SHA-512) or $5$; a name at most once. */
struct auth_users *auth_users_load(const char *path, char *err, size_t cap);
void auth_users_free(struct auth_users *u);
unsigned auth_users_count(const struct auth_users *u);
/* The stored hash of name (exact, case-sensitive), or NULL. */
const char *auth_users_hash(const struct auth_users *u, const char *name);

/* One check. The worker fills hash (an unknown user gets a decoy of the
 * same cost, known = false), pass and reply_to/wake/tag; the verifier
 * sets ok (and wipes pass) and posts it back. */
struct auth_req {
	struct mailbox_node node;  /* first */
	struct mailbox *reply_to;
	struct io *wake;           /* io_wake'd after the post */
	uint64_t tag;              /* the connection */
	bool known;
	bool ok;
	uint64_t cost_us;          /* time crypt took */
	char hash[256];
	char pass[256];
};

/* threads verifiers; at most queue_max requests wait at once. */
struct authd *authd_start(unsigned threads, unsigned queue_max);
void authd_stop(struct authd *d);
/* false: the queue is full (answer 454, the client retries). */
bool authd_submit(struct authd *d, struct auth_req *r);
/* A worker that exits: its queued requests come back to mb unchecked, and
 * this returns once no verifier works on one of its requests any more. */
void authd_forget(struct authd *d, struct mailbox *mb);
/* The hash a decoy check uses (same algorithm and cost as a real one). */
const char *auth_decoy_hash(void);

/* crypt(pass, hash) compared with hash in constant time. */
bool auth_verify(const char *hash, const char *pass);
/* A new yescrypt hash of pass into out; false on failure. */
bool auth_hash_password(const char *pass, char *out, size_t cap);

/* Wipes n bytes so that the compiler keeps the stores. */
void auth_wipe(void *p, size_t n);

#endif
