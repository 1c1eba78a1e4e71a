/* Base64 (RFC 4648 section 4) for SMTP AUTH: strict decoding of what a
 * client sends (padding required, no white space, no other alphabet), and
 * encoding of challenges and of our own credentials. Also the lenient,
 * incremental decoding of MIME bodies (RFC 2045 6.8) for content rules. */
#ifndef POSTERN_BASE64_H
#define POSTERN_BASE64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* MIME base64, a piece at a time: characters outside the alphabet (line
 * breaks, white space, garbage) are skipped as RFC 2045 6.8 says, and the
 * first '=' ends the data (what follows it in the part is ignored). */
struct base64_stream {
	uint32_t acc;   /* sextets not yet whole bytes */
	uint8_t n;      /* how many (0..3) */
	bool done;      /* padding seen */
};

void base64_stream_init(struct base64_stream *s);
/* Decodes in[0..len) into out, which has room for len / 4 * 3 + 3 bytes;
 * returns the bytes written. */
size_t base64_stream_decode(struct base64_stream *s, const char *in, size_t len,
			    unsigned char *out);

#endif
