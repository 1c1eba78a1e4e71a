/* Recipient lists (see recipients.h): an open-addressing hash set of
 * lower-cased "local@domain" keys, with "*@domain" stored as such. */
#include "recipients.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_path.h"

#define ADDR_MAX 320   /* 64 local + @ + 255 domain */

struct recipient_set {
	char **slot;       /* NULL: empty; capacity a power of two */
	size_t cap, n;
};

static uint64_t hash_key(const char *k, size_t n)
{
	uint64_t h = 1469598103934665603ull;   /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
	return h;
}

static bool grow(struct recipient_set *s)
{
	size_t cap = s->cap ? s->cap * 2 : 64;
	char **v = calloc(cap, sizeof(*v));
	if (!v)
		return false;
	for (size_t i = 0; i < s->cap; i++) {
		if (!s->slot[i])
			continue;
		size_t j = hash_key(s->slot[i], strlen(s->slot[i])) & (cap - 1);
		while (v[j])
			j = (j + 1) & (cap - 1);
		v[j] = s->slot[i];
	}
	free(s->slot);
	s->slot = v;
	s->cap = cap;
	return true;
}

static bool find(const struct recipient_set *s, const char *k, size_t n)
{
	if (!s->cap)
		return false;
	for (size_t j = hash_key(k, n) & (s->cap - 1); s->slot[j]; j = (j + 1) & (s->cap - 1))
		if (strlen(s->slot[j]) == n && memcmp(s->slot[j], k, n) == 0)
			return true;
	return false;
}

/* false: out of memory. A repeated entry is not an error (lists are often
 * concatenated exports). */
static bool insert(struct recipient_set *s, const char *k, size_t n)
{
	if (find(s, k, n))
		return true;
	if ((s->n + 1) * 4 > s->cap * 3 && !grow(s))
		return false;
	char *d = malloc(n + 1);
	if (!d)
		return false;
	memcpy(d, k, n);
	d[n] = '\0';
	size_t j = hash_key(k, n) & (s->cap - 1);
	while (s->slot[j])
		j = (j + 1) & (s->cap - 1);
	s->slot[j] = d;
	s->n++;
	return true;
}

/* One line, trimmed: an address the path parser takes (so the same
 * addresses RCPT would), or "*@domain". Lower-cased into key. */
static const char *parse_entry(const char *p, size_t n, char *key, size_t *klen)
{
	if (n > ADDR_MAX)
		return "address longer than 320 octets";
	const char *at = NULL;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == ' ' || p[i] == '\t')
			return "one address a line, without spaces";
		if (p[i] == '@')
			at = p + i;
	}
	if (!at)
		return "not an address (local@domain or *@domain)";
	size_t ll = (size_t)(at - p), dl = n - ll - 1;
	if (!dl || !smtp_helo_arg_valid(at + 1, dl) || at[1] == '[')
		return "not a domain name after @";
	if (!(ll == 1 && p[0] == '*')) {
		char path[ADDR_MAX + 3];
		path[0] = '<';
		memcpy(path + 1, p, n);
		path[n + 1] = '>';
		struct smtp_path sp;
		size_t used;
		if (smtp_path_parse(path, n + 2, SMTP_PATH_ALLOW_UTF8, &sp, &used) != SMTP_ARG_OK ||
		    used != n + 2 || sp.domain_kind != SMTP_DOMAIN_NAME)
			return "not an address (local@domain or *@domain)";
	}
	for (size_t i = 0; i < n; i++)
		key[i] = (char)tolower((unsigned char)p[i]);
	*klen = n;
	return NULL;
}

struct recipient_set *recipients_parse(const char *text, size_t len, char *err, size_t cap)
{
	struct recipient_set *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, cap, "out of memory");
		return NULL;
	}
	int ln = 0;
	for (size_t off = 0; off < len;) {
		const char *p = text + off;
		const char *nl = memchr(p, '\n', len - off);
		size_t n = nl ? (size_t)(nl - p) : len - off;
		off += n + (nl ? 1 : 0);
		ln++;
		while (n && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		while (n && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		if (!n || *p == '#')
			continue;
		if (memchr(p, '\0', n)) {
			snprintf(err, cap, "%d: NUL in the line", ln);
			recipients_free(s);
			return NULL;
		}
		char key[ADDR_MAX + 1];
		size_t kl = 0;
		const char *why = parse_entry(p, n, key, &kl);
		if (why) {
			snprintf(err, cap, "%d: %s", ln, why);
			recipients_free(s);
			return NULL;
		}
		if (!insert(s, key, kl)) {
			snprintf(err, cap, "%d: out of memory", ln);
			recipients_free(s);
			return NULL;
		}
	}
	return s;
}

struct recipient_set *recipients_load(const char *path, char *err, size_t cap)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, cap, "%s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = NULL;
	size_t len = 0, bcap = 0;
	bool ok = true;
	for (;;) {
		if (len == bcap) {
			size_t nc = bcap ? bcap * 2 : 65536;
			char *b = realloc(buf, nc);
			if (!b) {
				ok = false;
				break;
			}
			buf = b;
			bcap = nc;
		}
		size_t k = fread(buf + len, 1, bcap - len, f);
		len += k;
		if (k == 0)
			break;
	}
	int rerr = ferror(f) ? errno : 0;
	fclose(f);
	if (!ok || rerr) {
		snprintf(err, cap, "%s: %s", path, ok ? strerror(rerr) : "out of memory");
		free(buf);
		return NULL;
	}
	char why[200];
	struct recipient_set *s = recipients_parse(buf ? buf : "", len, why, sizeof(why));
	free(buf);
	if (!s)
		snprintf(err, cap, "%s:%s", path, why);
	return s;
}

void recipients_free(struct recipient_set *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->cap; i++)
		free(s->slot[i]);
	free(s->slot);
	free(s);
}

bool recipients_known(const struct recipient_set *s, const char *local, size_t llen,
		      const char *domain, size_t dlen)
{
	char key[ADDR_MAX + 1];
	if (!s || llen + 1 + dlen > ADDR_MAX)
		return false;
	for (size_t i = 0; i < llen; i++)
		key[i] = (char)tolower((unsigned char)local[i]);
	key[llen] = '@';
	for (size_t i = 0; i < dlen; i++)
		key[llen + 1 + i] = (char)tolower((unsigned char)domain[i]);
	if (find(s, key, llen + 1 + dlen))
		return true;
	/* "*@domain": the whole domain */
	memmove(key + 1, key + llen, 1 + dlen);
	key[0] = '*';
	return find(s, key, 2 + dlen);
}

size_t recipients_count(const struct recipient_set *s)
{
	return s ? s->n : 0;
}
