/* libFuzzer target for the DATA scanner (proto/smtp_data.c).
 * Differential: one piece versus data-chosen chunks (with held-back bytes
 * presented again) must agree. Smuggling oracle: unless the scanner
 * flagged bare CR/LF, the message contains only CRLF line ends, and it
 * never contains an end marker of its own. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_data.h"

struct result {
	bool end;
	size_t body_len, consumed;
	unsigned errors, hops;
	uint64_t size, header_size;
	char *body;
};

static struct result scan(const uint8_t *data, size_t size, size_t chunk,
			  const struct smtp_data_limits *lim)
{
	struct result r;
	memset(&r, 0, sizeof(r));
	r.body = malloc(size + 1);
	char *pend = malloc(size + 1);
	if (!r.body || !pend)
		abort();
	struct smtp_data_scan s;
	smtp_data_scan_init(&s, lim);
	size_t plen = 0, off = 0;
	while (off < size && !r.end) {
		size_t n = chunk ? chunk : size;
		if (n > size - off)
			n = size - off;
		memcpy(pend + plen, data + off, n);
		plen += n;
		off += n;
		size_t body;
		bool end;
		size_t used = smtp_data_scan(&s, pend, plen, &body, &end);
		if (used > plen || body > used)
			abort();
		if (end) {
			if (body + 3 != used || memcmp(pend + body, ".\r\n", 3) != 0)
				abort();
		} else if (body != used || plen - used > 2) {
			abort();
		}
		memcpy(r.body + r.body_len, pend, body);
		r.body_len += body;
		r.consumed += used;
		memmove(pend, pend + used, plen - used);
		plen -= used;
		r.end = end;
	}
	r.errors = s.errors;
	r.hops = s.hops;
	r.size = s.size;
	r.header_size = s.header_size;
	free(pend);
	return r;
}

static void oracle(const struct result *r)
{
	if (r->size != r->body_len || r->header_size > r->size)
		abort();
	if (r->end && r->body_len == 1)
		abort();
	if (r->end && r->body_len >= 2 &&
	    memcmp(r->body + r->body_len - 2, "\r\n", 2) != 0)
		abort();
	if (r->errors & SMTP_DATA_BARE_CR_LF)
		return;
	for (size_t i = 0; i < r->body_len; i++) {
		if (r->body[i] == '\r' && (i + 1 == r->body_len || r->body[i + 1] != '\n')) {
			if (!(i + 1 == r->body_len && !r->end))
				abort();
		}
		if (r->body[i] == '\n' && (i == 0 || r->body[i - 1] != '\r'))
			abort();
	}
	/* no end marker inside the message */
	if (r->body_len >= 3 && memcmp(r->body, ".\r\n", 3) == 0)
		abort();
	for (size_t i = 0; i + 5 <= r->body_len; i++)
		if (memcmp(r->body + i, "\r\n.\r\n", 5) == 0)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	struct smtp_data_limits lim = {
		.max_size = data[0] & 0x80 ? data[0] & 0x7f : 0,
		.max_header_size = data[1] & 0x80 ? data[1] & 0x7f : 0,
		.max_hops = data[2] % 4,
	};
	size_t chunk = 1 + data[3] % 16;
	data += 4;
	size -= 4;
	struct result a = scan(data, size, 0, &lim);
	struct result b = scan(data, size, chunk, &lim);
	struct result c = scan(data, size, 1, &lim);
	oracle(&a);
	const struct result *o[2] = {&b, &c};
	for (int k = 0; k < 2; k++) {
		if (o[k]->end != a.end || o[k]->body_len != a.body_len ||
		    o[k]->consumed != a.consumed || o[k]->errors != a.errors ||
		    o[k]->hops != a.hops || o[k]->size != a.size ||
		    o[k]->header_size != a.header_size ||
		    memcmp(o[k]->body, a.body, a.body_len) != 0)
			abort();
	}
	free(a.body);
	free(b.body);
	free(c.body);
	return 0;
}
