/* libFuzzer target for proto/proxy.c: any bytes give -1, 0 or a length
 * within them; an accepted header's proper prefixes all wait; a PROXIED
 * header written back out parses to the same addresses (byte for byte for
 * v2); and v1 address text is judged exactly as inet_pton judges it. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

static bool is_zero(const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* Parses a private copy of exactly n bytes, so ASan sees any read past n. */
static int parse_copy(const void *data, size_t n, struct proxy_header *h)
{
	void *copy = malloc(n ? n : 1);
	if (!copy)
		abort();
	memcpy(copy, data, n);
	int r = proxy_parse(copy, n, h, NULL, NULL);
	free(copy);
	return r;
}

static bool same_endpoint(const struct sockaddr_storage *a, socklen_t alen,
			  const struct sockaddr_storage *b, socklen_t blen)
{
	if (alen != blen || a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && memcmp(&x->sin_addr, &y->sin_addr, 4) == 0;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

static void check_header(const uint8_t *data, int r, const struct proxy_header *h)
{
	if (h->version == 1) {
		if (r > PROXY_V1_MAX || r < 15 || data[r - 2] != '\r' || data[r - 1] != '\n' ||
		    h->tlv_bytes || h->kind == PROXY_LOCAL)
			abort();
	} else if (h->version == 2) {
		if (r < 16 || (size_t)r != 16 + ((size_t)data[14] << 8 | data[15]) ||
		    h->tlv_bytes > (size_t)r - 16)
			abort();
	} else {
		abort();
	}
	if (h->kind == PROXY_PROXIED) {
		int af = h->src.ss_family;
		socklen_t want = af == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
		if ((af != AF_INET && af != AF_INET6) || h->dst.ss_family != af || h->srclen != want ||
		    h->dstlen != want)
			abort();
	} else if (h->kind == PROXY_LOCAL || h->kind == PROXY_UNKNOWN) {
		if (!is_zero(&h->src, sizeof(h->src)) || !is_zero(&h->dst, sizeof(h->dst)) ||
		    h->srclen || h->dstlen)
			abort();
	} else {
		abort();
	}
}

/* Every proper prefix waits (all of them for small headers, a sample of
 * the 64 KiB ones), and the header alone gives the same length. */
static void check_prefixes(const uint8_t *data, int r)
{
	struct proxy_header h;
	size_t step = r <= 512 ? 1 : (size_t)r / 61;

	for (size_t n = 0; n < (size_t)r; n += step)
		if (parse_copy(data, n, &h) != 0)
			abort();
	if (parse_copy(data, (size_t)r - 1, &h) != 0 || parse_copy(data, (size_t)r, &h) != r)
		abort();
}

/* Written back out by both writers, the addresses survive; a v2 header
 * with its own TLVs comes out byte for byte. */
static void check_rewrite(const uint8_t *data, int r, const struct proxy_header *h)
{
	const struct sockaddr *s = (const struct sockaddr *)&h->src;
	const struct sockaddr *d = (const struct sockaddr *)&h->dst;
	struct proxy_header again;
	char line[PROXY_V1_MAX];

	size_t n = proxy_write_v1(line, sizeof(line), s, d);
	if (!n || proxy_parse(line, n, &again, NULL, NULL) != (int)n || again.kind != PROXY_PROXIED ||
	    !same_endpoint(&again.src, again.srclen, &h->src, h->srclen) ||
	    !same_endpoint(&again.dst, again.dstlen, &h->dst, h->dstlen))
		abort();

	size_t alen = h->src.ss_family == AF_INET ? 12 : 36;
	const uint8_t *tlv = NULL;
	size_t tlvlen = 0;
	if (h->version == 2) {
		tlv = data + 16 + alen;
		tlvlen = h->tlv_bytes;
		if (16 + alen + tlvlen != (size_t)r)
			abort();
	}
	size_t want = 16 + alen + tlvlen;
	unsigned char *out = malloc(want);
	if (!out)
		abort();
	n = proxy_write_v2((char *)out, want, s, d, tlv, tlvlen);
	if (n != want || (h->version == 2 && memcmp(out, data, n) != 0) ||
	    proxy_parse(out, n, &again, NULL, NULL) != (int)n || again.kind != PROXY_PROXIED ||
	    again.tlv_bytes != tlvlen || !same_endpoint(&again.src, again.srclen, &h->src, h->srclen) ||
	    !same_endpoint(&again.dst, again.dstlen, &h->dst, h->dstlen))
		abort();
	free(out);
}

static bool pton(bool v6, const uint8_t *t, size_t n, const char *suffix, unsigned char *out)
{
	char s[160];
	snprintf(s, sizeof(s), "%.*s%s", (int)n, (const char *)t, suffix);
	return inet_pton(v6 ? AF_INET6 : AF_INET, s, out) == 1;
}

/* Short completions enough for any prefix the parser keeps waiting on. */
static bool completes(bool v6, const uint8_t *t, size_t n)
{
	static const char *const v6_tails[] = {"", ":", "::", "0", ":0", ".0", ".0.0", "0.0", "0.0.0"};
	static const char *const v4_tails[] = {"", "0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0", "0.0.0.0"};
	const char *const *tails = v6 ? v6_tails : v4_tails;
	size_t count = v6 ? sizeof(v6_tails) / sizeof(v6_tails[0]) : sizeof(v4_tails) / sizeof(v4_tails[0]);
	unsigned char b[16];

	for (size_t i = 0; i < count; i++)
		if (pton(v6, t, n, tails[i], b))
			return true;
	return false;
}

/* The input as the source address of a v1 line: accepted exactly when
 * inet_pton accepts it, with its bytes; as a bare prefix, waited on only
 * when something completes it. */
static void check_address_text(const uint8_t *t, size_t n)
{
	if (n > 60 || memchr(t, ' ', n) || memchr(t, '\r', n) || memchr(t, '\n', n) ||
	    memchr(t, '\0', n))
		return;
	for (int v6 = 0; v6 <= 1; v6++) {
		char line[128];
		struct proxy_header h;
		size_t k = (size_t)snprintf(line, sizeof(line), "PROXY TCP%c ", v6 ? '6' : '4');
		memcpy(line + k, t, n);
		const char *tail = v6 ? " ::1 1 2\r\n" : " 1.2.3.4 1 2\r\n";
		memcpy(line + k + n, tail, strlen(tail));

		unsigned char want[16];
		bool ok = pton(v6, t, n, "", want);
		int r = parse_copy(line, k + n + strlen(tail), &h);
		if (ok != (r > 0))
			abort();
		if (ok) {
			const void *got = v6 ? (const void *)&((struct sockaddr_in6 *)&h.src)->sin6_addr :
					       (const void *)&((struct sockaddr_in *)&h.src)->sin_addr;
			if (memcmp(got, want, v6 ? 16 : 4) != 0)
				abort();
		}
		r = parse_copy(line, k + n, &h);
		if (r > 0 || (r == 0 && !completes(v6, t, n)))
			abort();
	}
}

static uint32_t crc32c_bitwise(const unsigned char *p, size_t n)
{
	uint32_t crc = 0xffffffff;
	for (size_t i = 0; i < n; i++) {
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = crc & 1 ? crc >> 1 ^ 0x82f63b78 : crc >> 1;
	}
	return ~crc;
}

static void check_bytes(const uint8_t *data, size_t size, bool patched);

/* Random bytes never carry the right CRC32C: put it in, and the header
 * must then pass. */
static void check_with_crc(const uint8_t *data, size_t size, size_t at)
{
	uint8_t *copy = malloc(size);
	if (!copy || at + 4 > size)
		abort();
	memcpy(copy, data, size);
	memset(copy + at, 0, 4);
	size_t total = 16 + ((size_t)copy[14] << 8 | copy[15]);
	uint32_t crc = crc32c_bitwise(copy, total);
	for (int i = 0; i < 4; i++)
		copy[at + i] = (uint8_t)(crc >> (24 - 8 * i));
	check_bytes(copy, size, true);
	free(copy);
}

static void check_bytes(const uint8_t *data, size_t size, bool patched)
{
	struct proxy_header h;
	const char *why = "unset";
	size_t at = 12345;
	int r = proxy_parse(data, size, &h, &why, &at);

	if (r < -1 || (r > 0 && (size_t)r > size))
		abort();
	if (r <= 0) {
		if (!is_zero(&h, sizeof(h)))
			abort();
		if (r == 0 && (why || at))
			abort();
		if (r == -1 && (!why || at > PROXY_V2_MAX))
			abort();
		if (r == -1 && strcmp(why, "v2: CRC32C mismatch") == 0) {
			if (patched)
				abort();
			check_with_crc(data, size, at);
		}
	} else {
		if (why || at)
			abort();
		check_header(data, r, &h);
		check_prefixes(data, r);
		if (h.kind == PROXY_PROXIED)
			check_rewrite(data, r, &h);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Also behind the fixed starts, which the fuzzer is slow to find by
	 * itself: its bytes then go to the fields, TLVs and CRC checks. */
	static const struct {
		const char *s;
		size_t n;
	} starts[] = {
		{"", 0}, {"PROXY ", 6}, {"PROXY TCP4 ", 11}, {"PROXY TCP6 ", 11}, {"PROXY UNKNOWN", 13},
		{"\r\n\r\n\0\r\nQUIT\n", 12},
	};
	for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
		size_t n = starts[i].n + size;
		uint8_t *buf = malloc(n ? n : 1);
		if (!buf)
			abort();
		memcpy(buf, starts[i].s, starts[i].n);
		memcpy(buf + starts[i].n, data, size);
		check_bytes(buf, n, false);
		free(buf);
	}
	check_address_text(data, size);
	return 0;
}
