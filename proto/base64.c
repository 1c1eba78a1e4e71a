/* Base64 (see base64.h). */
#include "base64.h"

#include <stdint.h>

static const char alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 1 + the sextet of each alphabet character, 0 for any other byte: a
 * lookup, not branches (MIME bodies are mostly random-looking text). */
static const unsigned char sextet[256] = {
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 63,  0,  0,  0, 64,
	53, 54, 55, 56, 57, 58, 59, 60, 61, 62,  0,  0,  0,  0,  0,  0,
	 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15,
	16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,  0,  0,  0,  0,  0,
	 0, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
	42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
	 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
};

/* 0..63, or -1 */
static int value(unsigned char c)
{
	return (int)sextet[c] - 1;
}

bool base64_decode(const char *in, size_t len, unsigned char *out, size_t cap,
		   size_t *outlen)
{
	*outlen = 0;
	if (len % 4)
		return false;
	size_t n = 0;
	for (size_t i = 0; i < len; i += 4) {
		const unsigned char *q = (const unsigned char *)in + i;
		bool last = i + 4 == len;
		int pad = 0;
		if (last && q[3] == '=')
			pad = q[2] == '=' ? 2 : 1;
		int v[4];
		for (int k = 0; k < 4 - pad; k++)
			if ((v[k] = value(q[k])) < 0)
				return false;
		if (pad == 0 && n + 3 > cap)
			return false;
		if (n + 3 - (size_t)pad > cap)
			return false;
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12;
		if (pad < 2)
			w |= (uint32_t)v[2] << 6;
		if (pad < 1)
			w |= (uint32_t)v[3];
		/* Canonical form: the bits padding drops are zero. */
		if ((pad == 2 && (w & 0xffff)) || (pad == 1 && (w & 0xff)))
			return false;
		out[n++] = (unsigned char)(w >> 16);
		if (pad < 2)
			out[n++] = (unsigned char)(w >> 8);
		if (pad < 1)
			out[n++] = (unsigned char)w;
	}
	*outlen = n;
	return true;
}

size_t base64_encode(const unsigned char *in, size_t len, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t w = (uint32_t)in[i] << 16;
		if (i + 1 < len)
			w |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < len)
			w |= in[i + 2];
		out[o++] = alphabet[w >> 18 & 63];
		out[o++] = alphabet[w >> 12 & 63];
		out[o++] = i + 1 < len ? alphabet[w >> 6 & 63] : '=';
		out[o++] = i + 2 < len ? alphabet[w & 63] : '=';
	}
	out[o] = '\0';
	return o;
}

void base64_stream_init(struct base64_stream *s)
{
	*s = (struct base64_stream){0};
}

size_t base64_stream_decode(struct base64_stream *s, const char *in, size_t len,
			    unsigned char *out)
{
	size_t o = 0;
	const unsigned char *u = (const unsigned char *)in;
	for (size_t i = 0; i < len && !s->done; i++) {
		/* Whole quanta of alphabet characters, the common case. */
		while (s->n == 0 && i + 4 <= len) {
			unsigned a = sextet[u[i]], b = sextet[u[i + 1]], c = sextet[u[i + 2]],
				 d = sextet[u[i + 3]];
			if (!a || !b || !c || !d)
				break;
			uint32_t w = (a - 1) << 18 | (b - 1) << 12 | (c - 1) << 6 | (d - 1);
			out[o] = (unsigned char)(w >> 16);
			out[o + 1] = (unsigned char)(w >> 8);
			out[o + 2] = (unsigned char)w;
			o += 3;
			i += 4;
		}
		if (i >= len)
			break;
		unsigned char c = u[i];
		if (c == '=') {
			/* A partial quantum: 2 sextets carry a byte, 3 carry two. */
			if (s->n == 2)
				out[o++] = (unsigned char)(s->acc >> 4);
			else if (s->n == 3) {
				out[o++] = (unsigned char)(s->acc >> 10);
				out[o++] = (unsigned char)(s->acc >> 2);
			}
			s->n = 0;
			s->acc = 0;
			s->done = true;
			break;
		}
		unsigned v = sextet[c];
		if (!v)
			continue;
		s->acc = s->acc << 6 | (v - 1);
		if (++s->n == 4) {
			out[o++] = (unsigned char)(s->acc >> 16);
			out[o++] = (unsigned char)(s->acc >> 8);
			out[o++] = (unsigned char)s->acc;
			s->acc = 0;
			s->n = 0;
		}
	}
	return o;
}
