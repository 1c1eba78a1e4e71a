/* Quoted-printable (RFC 2045 6.7) decoding for content rules: one encoded
 * line at a time, lenient as receivers must be (a malformed "=" escape is
 * kept as it is). Pure; no allocation. */
#ifndef POSTERN_QP_H
#define POSTERN_QP_H

#include <stdbool.h>
#include <stddef.h>

/* Decodes in[0..n), one line without its line break, into out (room for
 * n bytes). Trailing white space is dropped (6.7 rule 3); *soft is set
 * when the line ends in a soft line break ("="): the decoded text then
 * continues on the next line, else a line break follows it. Returns the
 * bytes written. */
size_t qp_decode_line(const char *in, size_t n, char *out, bool *soft);

#endif
