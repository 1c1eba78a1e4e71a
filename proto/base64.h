/* Base64 (RFC 4648 section 4) for SMTP AUTH: strict decoding of what a
 * client sends (padding required, no white space, no other alphabet), and
 * encoding of challenges and of our own credentials. */
#ifndef POSTERN_BASE64_H
#define POSTERN_BASE64_H

#include <stdbool.h>
#include <stddef.h>

/* Bytes needed to encode n bytes, NUL included. */
#define BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4 + 1)

/* Decodes in[0..len) into out (room for len / 4 * 3 bytes); *outlen is set.
 * false for anything that is not canonical base64 (bad character, length
 * not a multiple of 4, padding in the middle, non-zero padding bits). */
bool base64_decode(const char *in, size_t len, unsigned char *out, size_t cap,
		   size_t *outlen);

/* Encodes; out has room for BASE64_ENCODED_LEN(len). Returns the length
 * written (without the NUL). */
size_t base64_encode(const unsigned char *in, size_t len, char *out);

#endif
