/* libFuzzer target for the DSN composer (proto/dsn.c), fuzzing the stored
 * original and where it is split across iovecs. Differential: one iovec
 * versus three must give the same report. Oracle: the report is wire form
 * (CR LF line ends only, lines within 998 octets, no lone "."), and only
 * the four delimiter lines start with its boundary. Buffers are exact-size
 * heap blocks so a write past cap is caught. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dsn.h"

static char *compose(const struct dsn_msg *m, size_t *len)
{
	size_t need = dsn_compose(NULL, 0, m);
	char *small = malloc(need / 2 + 1);
	char *buf = malloc(need + 1);
	if (!small || !buf)
		abort();
	if (dsn_compose(small, need / 2 + 1, m) != need ||
	    dsn_compose(buf, need + 1, m) != need || buf[need] != '\0')
		abort();
	free(small);
	*len = need;
	return buf;
}

static void oracle(const char *r, size_t n)
{
	if (n < 2 || r[n - 2] != '\r' || r[n - 1] != '\n')
		abort();
	const char *b = strstr(r, "\tboundary=\"");
	if (!b)
		abort();
	b += strlen("\tboundary=\"");
	const char *q = strchr(b, '"');
	if (!q || q - b > 70)
		abort();
	size_t bl = (size_t)(q - b);
	unsigned delims = 0;
	size_t start = 0;
	for (size_t i = 0; i < n; i++) {
		if (r[i] == '\r' && (i + 1 == n || r[i + 1] != '\n'))
			abort();
		if (r[i] != '\n')
			continue;
		if (i == 0 || r[i - 1] != '\r')
			abort();
		size_t len = i - 1 - start;
		const char *line = r + start;
		if (len > 998 || (len == 1 && line[0] == '.'))
			abort();
		if (len && line[0] == '.') {
			line++;
			len--;
		}
		if (len >= bl + 2 && line[0] == '-' && line[1] == '-' &&
		    strncasecmp(line + 2, b, bl) == 0)
			delims++;
		start = i + 1;
	}
	if (delims != 4)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 4)
		return 0;
	static const struct dsn_rcpt rcpt[] = {
		{.addr = "bob@example.net", .orcpt = "rfc822;bob@example.net",
		 .action = DSN_FAILED, .status = "5.1.1",
		 .remote_mta = "mx.example.net",
		 .diagnostic = "550 5.1.1 No such user", .last_attempt = 1795442400},
		{.addr = "carol@example.org", .action = DSN_FAILED},
	};
	struct dsn_msg m = {
		.reporting_mta = "relay.example",
		.postmaster = "postmaster@relay.example",
		.to = "alice@example.com",
		.envid = "QQ+2B1",
		.queue_id = "0123456789ABCDEF",
		.received_from = "[192.0.2.1]",
		.arrival = 1795010400,
		.now = 1795442520,
		.message_id = "dsn.0123456789ABCDEF@relay.example",
		.full = data[0] & 1,
		.rcpt = rcpt,
		.nrcpt = 2,
		.max_return = data[0] & 2 ? data[1] : 0,
	};
	const char *orig = (const char *)data + 4;
	size_t len = size - 4;
	size_t i = len ? data[2] % (len + 1) : 0;
	size_t j = i + (len - i ? data[3] % (len - i + 1) : 0);
	char *copy = malloc(len + 1); /* exact size: reads past it are caught */
	if (!copy)
		abort();
	memcpy(copy, orig, len);

	struct iovec one = {copy, len};
	m.orig = &one;
	m.norig = 1;
	size_t n1, n3;
	char *r1 = compose(&m, &n1);
	oracle(r1, n1);

	struct iovec three[3] = {{copy, i}, {copy + i, j - i}, {copy + j, len - j}};
	m.orig = three;
	m.norig = 3;
	char *r3 = compose(&m, &n3);
	if (n3 != n1 || memcmp(r1, r3, n1) != 0)
		abort();
	free(r1);
	free(r3);
	free(copy);
	return 0;
}
