/* Finds one header field's value in a message as it streams in (RFC 5322
 * section 2.2): the field name in any case, folded lines unfolded, a field
 * split across any number of feeds. Used for the Message-ID header the
 * message log records. Pure: bytes in, a capped copy of the value out. */
#ifndef POSTERN_HEADER_VALUE_H
#define POSTERN_HEADER_VALUE_H

#include <stdbool.h>
#include <stddef.h>

#define HEADER_VALUE_MAX 255   /* longer values are cut (cut is set) */
#define HEADER_NAME_MAX 64

struct header_value {
	char name[HEADER_NAME_MAX + 1];
	unsigned namelen;
	unsigned state;
	unsigned pos;            /* bytes of name matched on this line */
	bool found;              /* the field began: value holds what came */
	bool done;               /* the field ended, or the header section did */
	bool cut;
	unsigned len;
	char value[HEADER_VALUE_MAX];
};

/* name: the field to find, without the colon (at most HEADER_NAME_MAX). */
void header_value_init(struct header_value *h, const char *name);

/* Feeds the next bytes of the message (its header section first; wire or
 * plain form, CRLF or LF). Returns true once nothing later can change the
 * result: the first such field is complete or the header section ended. */
bool header_value_feed(struct header_value *h, const char *p, size_t n);

/* Copies the value found so far into dst (cut to cap - 1 bytes, NUL
 * terminated): leading and trailing white space removed, line breaks of
 * folding gone and the white space after them kept. false when the field
 * has not been seen. */
bool header_value_get(const struct header_value *h, char *dst, size_t cap);

#endif
