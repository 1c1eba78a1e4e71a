/* Recipient lists of accepted domains (recipients_file, DESIGN B.9): which
 * addresses exist, so that an unknown one is refused at RCPT instead of
 * bounced later. Read at load (and so on every reload); immutable after. */
#ifndef POSTERN_RECIPIENTS_H
#define POSTERN_RECIPIENTS_H

#include <stdbool.h>
#include <stddef.h>

struct recipient_set;

/* Parses a recipients file's text: one address a line ("local@domain", or
 * "*@domain" for every address of that exact domain), blank lines and "#"
 * comments ignored, spaces around a line trimmed. Local parts and domains
 * compare case-insensitively (as Exchange's address lookup does). On error
 * returns NULL and writes "LINE: what is wrong" into err. */
struct recipient_set *recipients_parse(const char *text, size_t len, char *err, size_t cap);

/* recipients_parse() of a whole file; err gets "PATH:LINE: ..." or
 * "PATH: reason". */
struct recipient_set *recipients_load(const char *path, char *err, size_t cap);

void recipients_free(struct recipient_set *s);

/* Is local@domain (any case) listed, itself or by "*@domain"? */
bool recipients_known(const struct recipient_set *s, const char *local, size_t llen,
		      const char *domain, size_t dlen);

/* Entries (addresses and wildcards) held. */
size_t recipients_count(const struct recipient_set *s);

#endif
