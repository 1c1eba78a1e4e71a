/* Unit tests for proto/proxy.c: PROXY v1 and v2 headers good and bad, the
 * 0 / -1 decision at every prefix (SMTP clients refused at their first
 * byte), v1 address text against inet_pton, and the writers round-tripped
 * through the parser. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

#define IN(s) s, sizeof(s) - 1
#define WHOLE 1000000  /* want: the whole input is the header */

#define SIG "\r\n\r\n\0\r\nQUIT\n"
/* 192.0.2.1:12345 -> 198.51.100.2:25 */
#define A4 "\xc0\x00\x02\x01" "\xc6\x33\x64\x02" "\x30\x39" "\x00\x19"
/* [2001:db8::1]:54321 -> [2001:db8::2]:25 */
#define A6 "\x20\x01\x0d\xb8" "\0\0\0\0" "\0\0\0\0" "\0\0\0\x01"                           \
	   "\x20\x01\x0d\xb8" "\0\0\0\0" "\0\0\0\0" "\0\0\0\x02" "\xd4\x31" "\x00\x19"
#define Z8 "\0\0\0\0\0\0\0\0"
#define Z216 "/run/lb.sock" "\0\0\0\0" Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 Z8 \
	     Z8 Z8 Z8 Z8 Z8 Z8 Z8
_Static_assert(sizeof(Z216) - 1 == 216, "two AF_UNIX paths of 108 bytes");
#define LONG6 "1111:2222:3333:4444:5555:6666:123.123.123.123"  /* 45 bytes */
#define FF6 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
#define X10 "xxxxxxxxxx"

static const struct parse_case {
	const char *name;
	const char *in;
	size_t inlen;
	int want;            /* return; WHOLE for inlen */
	enum proxy_kind kind;
	const char *src;     /* as inet_ntop writes it */
	unsigned sport;
	const char *dst;
	unsigned dport;
	size_t tlv;
	size_t at;           /* when want is -1 */
} cases[] = {
	/* v1, good */
	{"v1 TCP4", IN("PROXY TCP4 192.0.2.1 198.51.100.2 12345 25\r\n"), WHOLE, PROXY_PROXIED,
	 "192.0.2.1", 12345, "198.51.100.2", 25, .tlv = 0},
	{"v1 TCP6", IN("PROXY TCP6 2001:db8::1 2001:db8::2 54321 25\r\n"), WHOLE, PROXY_PROXIED,
	 "2001:db8::1", 54321, "2001:db8::2", 25, .tlv = 0},
	{"v1 TCP6 mapped, ports 0 and 65535", IN("PROXY TCP6 ::ffff:192.0.2.1 ::1 0 65535\r\n"), WHOLE,
	 PROXY_PROXIED, "::ffff:192.0.2.1", 0, "::1", 65535, .tlv = 0},
	{"v1 TCP6 full, upper case", IN("PROXY TCP6 2001:0DB8:0:0:0:0:0:0001 :: 1 2\r\n"), WHOLE,
	 PROXY_PROXIED, "2001:db8::1", 1, "::", 2, .tlv = 0},
	{"v1 TCP4 zeroes", IN("PROXY TCP4 0.0.0.0 255.255.255.255 0 0\r\n"), WHOLE, PROXY_PROXIED,
	 "0.0.0.0", 0, "255.255.255.255", 0, .tlv = 0},
	{"v1 UNKNOWN", IN("PROXY UNKNOWN\r\n"), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v1 UNKNOWN with addresses", IN("PROXY UNKNOWN TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), WHOLE,
	 PROXY_UNKNOWN, .tlv = 0},
	{"v1 UNKNOWN, the spec's 107-byte worst case",
	 IN("PROXY UNKNOWN " FF6 " " FF6 " 65535 65535\r\n"), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v1 TCP6 of exactly 107 bytes", IN("PROXY TCP6 " LONG6 " 1111:2222:3333:4444:5555:6666:123.123.123.12 0 0\r\n"),
	 WHOLE, PROXY_PROXIED, "1111:2222:3333:4444:5555:6666:7b7b:7b7b", 0,
	 "1111:2222:3333:4444:5555:6666:7b7b:7b0c", 0, .tlv = 0},

	/* v1, bad */
	{"v1 lowercase proxy", IN("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 0},
	{"v1 lowercase tcp4", IN("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 6},
	{"v1 TCP5", IN("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 9},
	{"v1 UNKNOWNX", IN("PROXY UNKNOWNX\r\n"), -1, .at = 13},
	{"v1 PROXY then CRLF", IN("PROXY\r\n"), -1, .at = 5},
	{"v1 double space after PROXY", IN("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 6},
	{"v1 double space before src", IN("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 11},
	{"v1 double space before dst", IN("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), -1, .at = 19},
	{"v1 double space before sport", IN("PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n"), -1, .at = 27},
	{"v1 double space before dport", IN("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"), -1, .at = 29},
	{"v1 space before CRLF", IN("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"), -1, .at = 30},
	{"v1 tab for space", IN("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 10},
	{"v1 missing dport", IN("PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n"), -1, .at = 29},
	{"v1 missing ports", IN("PROXY TCP4 1.2.3.4 5.6.7.8\r\n"), -1, .at = 26},
	{"v1 missing dst", IN("PROXY TCP4 1.2.3.4\r\n"), -1, .at = 18},
	{"v1 TCP4 then CRLF", IN("PROXY TCP4\r\n"), -1, .at = 10},
	{"v1 port 65536", IN("PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n"), -1, .at = 31},
	{"v1 port 100000", IN("PROXY TCP4 1.2.3.4 5.6.7.8 25 100000\r\n"), -1, .at = 35},
	{"v1 leading zero port", IN("PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n"), -1, .at = 28},
	{"v1 signed port", IN("PROXY TCP4 1.2.3.4 5.6.7.8 +25 25\r\n"), -1, .at = 27},
	{"v1 hex port", IN("PROXY TCP4 1.2.3.4 5.6.7.8 0x19 25\r\n"), -1, .at = 28},
	{"v1 v6 in TCP4", IN("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), -1, .at = 11},
	{"v1 v6 dst in TCP4", IN("PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n"), -1, .at = 22},
	{"v1 v4 in TCP6", IN("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"), -1, .at = 12},
	{"v1 octet 256", IN("PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 13},
	{"v1 octet with leading zero", IN("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"), -1, .at = 12},
	{"v1 three octets", IN("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), -1, .at = 16},
	{"v1 five octets", IN("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"), -1, .at = 18},
	{"v1 v6 nine groups", IN("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"), -1, .at = 26},
	{"v1 v6 two ::", IN("PROXY TCP6 1::2::3 ::1 1 2\r\n"), -1, .at = 16},
	{"v1 v6 five hex digits", IN("PROXY TCP6 12345:: ::1 1 2\r\n"), -1, .at = 15},
	{"v1 v6 single leading colon", IN("PROXY TCP6 :1:2:3:4:5:6:7 ::1 1 2\r\n"), -1, .at = 12},
	{"v1 v6 trailing colon", IN("PROXY TCP6 1:2:3:4:5:6:7: ::1 1 2\r\n"), -1, .at = 25},
	{"v1 v6 :: for no group", IN("PROXY TCP6 ::1:2:3:4:5:6:7:8 ::1 1 2\r\n"), -1, .at = 26},
	{"v1 v6 dotted tail too late", IN("PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::1 1 2\r\n"), -1, .at = 26},
	{"v1 v6 hex before the dotted tail", IN("PROXY TCP6 ::ffff:1a.2.3.4 ::1 1 2\r\n"), -1, .at = 20},
	{"v1 v6 zone id", IN("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), -1, .at = 18},
	{"v1 bare LF", IN("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), -1, .at = 30},
	{"v1 UNKNOWN bare LF", IN("PROXY UNKNOWN\n"), -1, .at = 13},
	{"v1 CR without LF", IN("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), -1, .at = 31},
	{"v1 UNKNOWN, CR inside", IN("PROXY UNKNOWN a\rb\r\n"), -1, .at = 16},
	{"v1 NUL in an address", IN("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n"), -1, .at = 18},
	{"v1 NUL after UNKNOWN", IN("PROXY UNKNOWN \0\r\n"), -1, .at = 14},
	{"v1 no CRLF within 107 bytes", IN("PROXY UNKNOWN " X10 X10 X10 X10 X10 X10 X10 X10 X10 X10), -1,
	 .at = 105},
	{"v1 108 bytes", IN("PROXY UNKNOWN " X10 X10 X10 X10 X10 X10 X10 X10 X10 "xx\r\n"), -1,
	 .at = 105},
	{"v1 TCP6 too long for 107 bytes", IN("PROXY TCP6 " LONG6 " " LONG6 " 1 1\r\n"), -1, .at = 101},
	{"v1 TCP6 107 bytes but for a port digit",
	 IN("PROXY TCP6 " LONG6 " 1111:2222:3333:4444:5555:6666:123.123.123.12 10 0\r\n"), -1,
	 .at = 103},

	/* v1, could still become valid */
	{"v1 prefix: v6 ending in ::", IN("PROXY TCP6 1:2:3:4:5:6:7::"), .want = 0},
	{"v1 prefix: eight groups", IN("PROXY TCP6 1:2:3:4:5:6:7:8"), .want = 0},
	{"v1 prefix: dotted tail", IN("PROXY TCP6 1:2:3:4:5:6:1.2.3.4"), .want = 0},
	{"v1 prefix: UNKNOWN tail", IN("PROXY UNKNOWN whatever the proxy says"), .want = 0},
	{"v1 prefix: up to the LF", IN("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), .want = 0},

	/* v2, good */
	{"v2 PROXY INET", IN(SIG "\x21\x11\x00\x0c" A4), WHOLE, PROXY_PROXIED, "192.0.2.1", 12345,
	 "198.51.100.2", 25, .tlv = 0},
	{"v2 PROXY INET6", IN(SIG "\x21\x21\x00\x24" A6), WHOLE, PROXY_PROXIED, "2001:db8::1", 54321,
	 "2001:db8::2", 25, .tlv = 0},
	{"v2 LOCAL", IN(SIG "\x20\x00\x00\x00"), WHOLE, PROXY_LOCAL, .tlv = 0},
	{"v2 LOCAL with INET addresses", IN(SIG "\x20\x11\x00\x0c" A4), WHOLE, PROXY_LOCAL, .tlv = 0},
	{"v2 LOCAL saying INET6 without addresses", IN(SIG "\x20\x21\x00\x00"), WHOLE, PROXY_LOCAL, .tlv = 0},
	{"v2 PROXY UNSPEC", IN(SIG "\x21\x00\x00\x00"), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v2 PROXY UNIX", IN(SIG "\x21\x31\x00\xd8" Z216), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v2 PROXY INET DGRAM", IN(SIG "\x21\x12\x00\x0c" A4), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v2 PROXY INET6 DGRAM", IN(SIG "\x21\x22\x00\x24" A6), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v2 PROXY INET UNSPEC transport", IN(SIG "\x21\x10\x00\x0c" A4), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v2 DGRAM too short to walk", IN(SIG "\x21\x12\x00\x03" "abc"), WHOLE, PROXY_UNKNOWN, .tlv = 0},
	{"v2 INET with NOOP and ALPN", IN(SIG "\x21\x11\x00\x17" A4 "\x04\x00\x03" "abc" "\x01\x00\x02" "h2"),
	 WHOLE, PROXY_PROXIED, "192.0.2.1", 12345, "198.51.100.2", 25, .tlv = 11},
	{"v2 INET6 with an empty TLV", IN(SIG "\x21\x21\x00\x27" A6 "\xe0\x00\x00"), WHOLE, PROXY_PROXIED,
	 "2001:db8::1", 54321, "2001:db8::2", 25, .tlv = 3},
	{"v2 INET with good CRC32C", IN(SIG "\x21\x11\x00\x13" A4 "\x03\x00\x04" "\x97\x8b\x0b\x4c"), WHOLE,
	 PROXY_PROXIED, "192.0.2.1", 12345, "198.51.100.2", 25, .tlv = 7},
	{"v2 LOCAL with good CRC32C", IN(SIG "\x20\x00\x00\x07" "\x03\x00\x04" "\xa9\xb8\x7e\x8f"), WHOLE,
	 PROXY_LOCAL, .tlv = 7},
	{"v2 UNSPEC with NOOP", IN(SIG "\x21\x00\x00\x04" "\x04\x00\x01" "\0"), WHOLE, PROXY_UNKNOWN,
	 .tlv = 4},

	/* v2, bad */
	{"v2 signature differs", IN("\r\n\r\n\x01\r\nQUIT\n\x21\x11\x00\x0c" A4), -1, .at = 4},
	{"v2 signature, then SMTP", IN("\r\n\r\nEHLO x\r\n"), -1, .at = 4},
	{"v2 version 1", IN(SIG "\x11\x11\x00\x0c" A4), -1, .at = 12},
	{"v2 version 3", IN(SIG "\x31\x11\x00\x0c" A4), -1, .at = 12},
	{"v2 command 2", IN(SIG "\x22\x11\x00\x0c" A4), -1, .at = 12},
	{"v2 command 15", IN(SIG "\x2f\x11\x00\x0c" A4), -1, .at = 12},
	{"v2 family 4", IN(SIG "\x21\x41\x00\x00"), -1, .at = 13},
	{"v2 transport 3", IN(SIG "\x21\x13\x00\x0c" A4), -1, .at = 13},
	{"v2 LOCAL, family 15", IN(SIG "\x20\xf0\x00\x00"), -1, .at = 13},
	{"v2 INET block of 11", IN(SIG "\x21\x11\x00\x0b" "\xc0\x00\x02\x01" "\xc6\x33\x64\x02" "\x30\x39" "\x00"),
	 -1, .at = 14},
	{"v2 INET6 block of 12, seen at once", IN(SIG "\x21\x21\x00\x0c"), -1, .at = 14},
	{"v2 INET block of 0", IN(SIG "\x21\x11\x00\x00"), -1, .at = 14},
	{"v2 bad CRC32C", IN(SIG "\x21\x11\x00\x13" A4 "\x03\x00\x04" "\x97\x8b\x0b\x4d"), -1, .at = 31},
	{"v2 LOCAL with bad CRC32C", IN(SIG "\x20\x00\x00\x07" "\x03\x00\x04" "\xa9\xb8\x7e\x8e"), -1,
	 .at = 19},
	{"v2 CRC32C of 2 bytes", IN(SIG "\x21\x00\x00\x05" "\x03\x00\x02" "\0\0"), -1, .at = 16},
	{"v2 two CRC32C", IN(SIG "\x21\x00\x00\x0e" "\x03\x00\x04" "\0\0\0\0" "\x03\x00\x04" "\0\0\0\0"), -1,
	 .at = 23},
	{"v2 TLV runs past the header", IN(SIG "\x21\x11\x00\x11" A4 "\x04\x00\x05" "xy"), -1, .at = 28},
	{"v2 TLV runs past by one", IN(SIG "\x21\x11\x00\x14" A4 "\x04\x00\x01" "x" "\x04\x00\x02" "y"), -1,
	 .at = 32},
	{"v2 half a TLV header", IN(SIG "\x21\x11\x00\x0e" A4 "\x04\x00"), -1, .at = 28},

	/* v2, could still become valid */
	{"v2 signature only", IN(SIG), .want = 0},
	{"v2 one byte short", IN(SIG "\x21\x11\x00\x0c" "\xc0\x00\x02\x01" "\xc6\x33\x64\x02" "\x30\x39" "\x00"),
	 .want = 0},
	{"v2 waiting for a TLV", IN(SIG "\x21\x11\x00\x17" A4 "\x04\x00\x03" "abc"), .want = 0},

	{"empty", "", 0, .want = 0},
};

static void check_addr(const char *name, const struct sockaddr_storage *ss, socklen_t len,
		       const char *want, unsigned want_port)
{
	char text[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
		port = ntohs(sin->sin_port);
		CHECK_INT(name, len, sizeof(*sin));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
		port = ntohs(sin6->sin6_port);
		CHECK_INT(name, len, sizeof(*sin6));
	} else {
		fail_msg("%s: family %d", name, ss->ss_family);
	}
	CHECK_STR(name, text, want);
	CHECK_INT(name, port, want_port);
}

static bool is_zero(const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* The row's verdict on its whole input, and what the header says. */
static void check_case(const struct parse_case *c, const char *in, size_t inlen)
{
	struct proxy_header h;
	const char *why = "unset";
	size_t at = 12345;
	int want = c->want == WHOLE ? (int)c->inlen : c->want;
	int r = proxy_parse(in, inlen, &h, &why, &at);

	CHECK_INT(c->name, r, want);
	if (r <= 0) {
		if (!is_zero(&h, sizeof(h)))
			fail_msg("%s: header not zeroed", c->name);
		if (r == 0 && why != NULL)
			fail_msg("%s: why \"%s\" on 0", c->name, why);
		if (r == -1 && why == NULL)
			fail_msg("%s: no why", c->name);
		CHECK_INT(c->name, at, r == -1 ? c->at : 0);
		return;
	}
	CHECK_INT(c->name, h.version, c->in[0] == 'P' ? 1 : 2);
	CHECK_INT(c->name, h.kind, c->kind);
	CHECK_INT(c->name, h.tlv_bytes, c->tlv);
	if (why != NULL)
		fail_msg("%s: why \"%s\" on success", c->name, why);
	if (c->kind == PROXY_PROXIED) {
		check_addr(c->name, &h.src, h.srclen, c->src, c->sport);
		check_addr(c->name, &h.dst, h.dstlen, c->dst, c->dport);
	} else {
		if (!is_zero(&h.src, sizeof(h.src)) || !is_zero(&h.dst, sizeof(h.dst)))
			fail_msg("%s: addresses set for kind %d", c->name, h.kind);
		CHECK_INT(c->name, h.srclen, 0);
		CHECK_INT(c->name, h.dstlen, 0);
	}
}

static void test_parse_table(void **state)
{
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		/* A copy of exactly inlen bytes: ASan catches a read past it. */
		char *in = malloc(cases[i].inlen + 1);
		assert_non_null(in);
		memcpy(in, cases[i].in, cases[i].inlen);
		check_case(&cases[i], in, cases[i].inlen);
		free(in);
	}
}

/* Every proper prefix of a good header wants more; a bad one is refused
 * from one byte on and stays refused; SMTP after a header changes nothing. */
static void test_every_prefix(void **state)
{
	static const char smtp[] = "EHLO client.example\r\nMAIL FROM:<a@b>\r\n";

	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		const struct parse_case *c = &cases[i];
		size_t first_bad = c->inlen + 1;
		struct proxy_header h;
		const char *why;
		size_t at;

		for (size_t n = 0; n < c->inlen; n++) {
			int r = proxy_parse(c->in, n, &h, &why, &at);
			if (r == -1 && first_bad > c->inlen) {
				first_bad = n;
				CHECK_INT(c->name, at, c->at);
			}
			if (r != (n < first_bad ? 0 : -1))
				fail_msg("%s: prefix of %zu bytes gives %d", c->name, n, r);
		}
		if (c->want == 0 || c->want == -1)
			continue;
		char buf[512];
		assert_true(c->inlen + sizeof(smtp) <= sizeof(buf));
		memcpy(buf, c->in, c->inlen);
		memcpy(buf + c->inlen, smtp, sizeof(smtp) - 1);
		for (size_t extra = 1; extra < sizeof(smtp); extra++)
			check_case(c, buf, c->inlen + extra);
	}
}

/* A client that does not speak PROXY is refused at its first byte that
 * neither "PROXY " nor the v2 signature has, and not one byte later. */
static void test_not_proxy(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		size_t inlen;
	} clients[] = {
		{"EHLO", IN("EHLO client.example\r\n")},
		{"HELO", IN("HELO x\r\n")},
		{"lowercase ehlo", IN("ehlo x\r\n")},
		{"QUIT", IN("QUIT\r\n")},
		{"HTTP GET", IN("GET / HTTP/1.0\r\n\r\n")},
		{"HTTP POST", IN("POST / HTTP/1.1\r\n")},
		{"TLS ClientHello", IN("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")},
		{"CRLF then EHLO", IN("\r\nEHLO x\r\n")},
		{"PROXZ", IN("PROXZ TCP4")},
		{"PRO then space", IN("PRO x")},
		{"PROXY then LF", IN("PROXY\n")},
		{"NUL", IN("\0\0\0\0")},
		{"signature but QUIX", IN("\r\n\r\n\0\r\nQUIX\n")},
		{"space first", IN(" PROXY TCP4")},
	};
	static const char v1[] = "PROXY ";
	static const char v2[] = SIG;

	for (size_t i = 0; i < N_ELEMS(clients); i++) {
		const char *in = clients[i].in;
		size_t d1 = 0, d2 = 0;
		while (d1 < sizeof(v1) - 1 && d1 < clients[i].inlen && in[d1] == v1[d1])
			d1++;
		while (d2 < sizeof(v2) - 1 && d2 < clients[i].inlen && in[d2] == v2[d2])
			d2++;
		size_t d = d1 > d2 ? d1 : d2;
		assert_true(d < clients[i].inlen);
		for (size_t n = 0; n <= clients[i].inlen; n++) {
			struct proxy_header h;
			const char *why = NULL;
			size_t at = 0;
			int r = proxy_parse(in, n, &h, &why, &at);
			if (n <= d) {
				CHECK_INT(clients[i].name, r, 0);
			} else {
				CHECK_INT(clients[i].name, r, -1);
				CHECK_INT(clients[i].name, at, d);
				assert_non_null(why);
			}
		}
	}
}

/* ---- v1 address text against inet_pton --------------------------------- */

static int parse_v1_text(bool v6, const char *t, size_t n, const char *tail, struct proxy_header *h,
			 size_t *at)
{
	char line[160];
	const char *why;
	size_t k = (size_t)snprintf(line, sizeof(line), "PROXY TCP%c ", v6 ? '6' : '4');
	memcpy(line + k, t, n);
	k += n;
	size_t tl = strlen(tail);
	memcpy(line + k, tail, tl);
	return proxy_parse(line, k + tl, h, &why, at);
}

static bool pton(bool v6, const char *t, size_t n, const char *suffix, unsigned char *out)
{
	char s[128];
	snprintf(s, sizeof(s), "%.*s%s", (int)n, t, suffix);
	return inet_pton(v6 ? AF_INET6 : AF_INET, s, out) == 1;
}

/* Short completions enough for any prefix the parser keeps waiting on. */
static bool completes(bool v6, const char *t, size_t n)
{
	static const char *const v6_tails[] = {"", ":", "::", "0", ":0", ".0", ".0.0", "0.0", "0.0.0"};
	static const char *const v4_tails[] = {"", "0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0", "0.0.0.0"};
	const char *const *tails = v6 ? v6_tails : v4_tails;
	size_t count = v6 ? N_ELEMS(v6_tails) : N_ELEMS(v4_tails);
	unsigned char b[16];

	for (size_t i = 0; i < count; i++)
		if (pton(v6, t, n, tails[i], b))
			return true;
	return false;
}

/* The whole field: accepted exactly when inet_pton accepts it, same bytes. */
static void check_field(bool v6, const char *t, size_t n)
{
	unsigned char want[16];
	bool ok = pton(v6, t, n, "", want);
	struct proxy_header h;
	size_t at;
	int r = parse_v1_text(v6, t, n, v6 ? " ::1 1 2\r\n" : " 1.2.3.4 1 2\r\n", &h, &at);

	if (ok != (r > 0))
		fail_msg("TCP%c \"%.*s\": parse %d, inet_pton %d", v6 ? '6' : '4', (int)n, t, r, ok);
	if (!ok)
		return;
	const void *got = v6 ? (const void *)&((struct sockaddr_in6 *)&h.src)->sin6_addr :
			       (const void *)&((struct sockaddr_in *)&h.src)->sin_addr;
	if (memcmp(got, want, v6 ? 16 : 4) != 0)
		fail_msg("TCP%c \"%.*s\": other bytes than inet_pton's", v6 ? '6' : '4', (int)n, t);
}

struct walk {
	bool v6;
	const char *alphabet;
	size_t max;
	unsigned long visited;
};

/* t[0..n) is a prefix the parser waits on: something must complete it. */
static void walk_text(struct walk *w, char *t, size_t n)
{
	w->visited++;
	if (!completes(w->v6, t, n))
		fail_msg("TCP%c \"%.*s\": waited on, yet nothing completes it", w->v6 ? '6' : '4',
			 (int)n, t);
	check_field(w->v6, t, n);
	if (n == w->max)
		return;
	for (const char *c = w->alphabet; *c; c++) {
		struct proxy_header h;
		size_t at;
		t[n] = *c;
		int r = parse_v1_text(w->v6, t, n + 1, "", &h, &at);
		if (r == 0) {
			walk_text(w, t, n + 1);
			continue;
		}
		CHECK_INT("walk", r, -1);
		CHECK_INT("walk", at, 11 + n);
		if (completes(w->v6, t, n + 1))
			fail_msg("TCP%c \"%.*s\": refused, yet inet_pton takes a completion",
				 w->v6 ? '6' : '4', (int)n + 1, t);
		check_field(w->v6, t, n + 1);
	}
}

static void test_address_text(void **state)
{
	static const struct {
		bool v6;
		const char *alphabet;
		size_t max;
	} walks[] = {
		{false, "0125.", 10},
		{false, "019.", 15},
		{true, "01aF:.", 8},
		{true, "1:.", 18},
		{true, "0a:.", 11},
	};
	for (size_t i = 0; i < N_ELEMS(walks); i++) {
		struct walk w = {walks[i].v6, walks[i].alphabet, walks[i].max, 0};
		char t[64];
		walk_text(&w, t, 0);
		if (w.visited < 1000)
			fail_msg("walk %zu: only %lu prefixes", i, w.visited);
	}

	/* Known spellings, complete fields. */
	static const char *const texts[] = {
		"::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8",
		"::ffff:1.2.3.4", "::1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1::1.2.3.4",
		"fe80::1", "FE80::abcd:EF01", "0000:0000:0000:0000:0000:0000:0000:0000",
		"1:2:3:4:5:6:7:8:9", "1::2::3", ":::", "1:::2", ":1::", "::1:", "12345::",
		"::ffff:256.1.1.1", "::ffff:01.1.1.1", "::ffff:1.1.1", "::ffff:1.1.1.1.1",
		"1:2:3:4:5:6:7:1.2.3.4", "1:2:3:4:5::1.2.3.4", "1:2:3:4:5:6::1.2.3.4", "g::",
		"1.2.3.4", "0.0.0.0", "255.255.255.255", "256.0.0.0", "1.2.3", "1..2.3", ".1.2.3",
		"1.2.3.04", "0x1.2.3.4", "1.2.3.4.",
	};
	for (size_t i = 0; i < N_ELEMS(texts); i++) {
		check_field(true, texts[i], strlen(texts[i]));
		check_field(false, texts[i], strlen(texts[i]));
	}
}

/* ---- writers ------------------------------------------------------------- */

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

static void make_addr(struct sockaddr_storage *ss, const char *text, unsigned port)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(text, ':')) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		assert_int_equal(inet_pton(AF_INET, text, &sin->sin_addr), 1);
	}
}

static void test_round_trip(void **state)
{
	static const struct {
		const char *name;
		const char *src;     /* NULL: UNKNOWN (v1), LOCAL (v2) */
		unsigned sport;
		const char *dst;
		unsigned dport;
		const char *tlv;
		size_t tlvlen;
		const char *v1;      /* the line proxy_write_v1 must write */
	} trips[] = {
		{"IPv4", "192.0.2.1", 12345, "198.51.100.2", 25, NULL, 0,
		 "PROXY TCP4 192.0.2.1 198.51.100.2 12345 25\r\n"},
		{"IPv4 extremes", "0.0.0.0", 0, "255.255.255.255", 65535, NULL, 0,
		 "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n"},
		{"IPv6", "2001:db8::1", 54321, "2001:db8::2", 587, NULL, 0,
		 "PROXY TCP6 2001:db8::1 2001:db8::2 54321 587\r\n"},
		{"IPv6 longest", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
		 "fe80:1:2:3:4:5:6:7", 65535, NULL, 0,
		 "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff fe80:1:2:3:4:5:6:7 65535 65535\r\n"},
		{"IPv4-mapped", "::ffff:192.0.2.7", 1, "::1", 2, NULL, 0,
		 "PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n"},
		{"IPv4 with TLVs", "10.0.0.1", 40000, "10.0.0.2", 25, IN("\x04\x00\x02" "ab" "\x02\x00\x03" "a.b"),
		 "PROXY TCP4 10.0.0.1 10.0.0.2 40000 25\r\n"},
		{"IPv6 with TLVs", "2001:db8::1", 1, "2001:db8::2", 2, IN("\x05\x00\x04" "uuid"),
		 "PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"},
		{"LOCAL / UNKNOWN", NULL, 0, NULL, 0, NULL, 0, "PROXY UNKNOWN\r\n"},
		{"LOCAL with a TLV", NULL, 0, NULL, 0, IN("\x04\x00\x01" "z"), "PROXY UNKNOWN\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(trips); i++) {
		const char *name = trips[i].name;
		struct sockaddr_storage src, dst;
		const struct sockaddr *s = NULL, *d = NULL;
		char buf[512];
		struct proxy_header h;
		const char *why;
		size_t at;

		if (trips[i].src) {
			make_addr(&src, trips[i].src, trips[i].sport);
			make_addr(&dst, trips[i].dst, trips[i].dport);
			s = (const struct sockaddr *)&src;
			d = (const struct sockaddr *)&dst;
		}

		size_t n = proxy_write_v1(buf, sizeof(buf), s, d);
		CHECK_INT(name, n, strlen(trips[i].v1));
		assert_memory_equal(buf, trips[i].v1, n);
		for (size_t cap = 0; cap < n; cap++)
			CHECK_INT(name, proxy_write_v1(buf, cap, s, d), 0);
		n = proxy_write_v1(buf, sizeof(buf), s, d);
		CHECK_INT(name, proxy_parse(buf, n, &h, &why, &at), n);
		CHECK_INT(name, h.version, 1);
		CHECK_INT(name, h.kind, s ? PROXY_PROXIED : PROXY_UNKNOWN);
		if (s) {
			check_addr(name, &h.src, h.srclen, trips[i].src, trips[i].sport);
			check_addr(name, &h.dst, h.dstlen, trips[i].dst, trips[i].dport);
		}

		size_t alen = !s ? 0 : src.ss_family == AF_INET ? 12 : 36;
		size_t want = 16 + alen + trips[i].tlvlen;
		n = proxy_write_v2(buf, sizeof(buf), s, d, trips[i].tlv, trips[i].tlvlen);
		CHECK_INT(name, n, want);
		for (size_t cap = 0; cap < n; cap++)
			CHECK_INT(name, proxy_write_v2(buf, cap, s, d, trips[i].tlv, trips[i].tlvlen), 0);
		n = proxy_write_v2(buf, sizeof(buf), s, d, trips[i].tlv, trips[i].tlvlen);
		assert_memory_equal(buf, SIG, 12);
		CHECK_INT(name, (unsigned char)buf[12], s ? 0x21 : 0x20);
		CHECK_INT(name, proxy_parse(buf, n, &h, &why, &at), n);
		CHECK_INT(name, h.version, 2);
		CHECK_INT(name, h.kind, s ? PROXY_PROXIED : PROXY_LOCAL);
		CHECK_INT(name, h.tlv_bytes, trips[i].tlvlen);
		if (s) {
			check_addr(name, &h.src, h.srclen, trips[i].src, trips[i].sport);
			check_addr(name, &h.dst, h.dstlen, trips[i].dst, trips[i].dport);
		}

		/* The same with a CRC32C TLV in front, computed here bit by bit. */
		char tlv[64];
		memcpy(tlv, "\x03\x00\x04\0\0\0\0", 7);
		if (trips[i].tlvlen)
			memcpy(tlv + 7, trips[i].tlv, trips[i].tlvlen);
		n = proxy_write_v2(buf, sizeof(buf), s, d, tlv, 7 + trips[i].tlvlen);
		CHECK_INT(name, n, want + 7);
		uint32_t crc = crc32c_bitwise((const unsigned char *)buf, n);
		size_t v = 16 + alen + 3;
		buf[v] = (char)(crc >> 24);
		buf[v + 1] = (char)(crc >> 16);
		buf[v + 2] = (char)(crc >> 8);
		buf[v + 3] = (char)crc;
		CHECK_INT(name, proxy_parse(buf, n, &h, &why, &at), n);
		CHECK_INT(name, h.tlv_bytes, 7 + trips[i].tlvlen);
		struct proxy_header good = h;
		for (size_t bit = 0; bit < 8 * n; bit++) {
			/* Without its type byte it is no CRC32C TLV at all. */
			if (bit / 8 == v - 3)
				continue;
			buf[bit / 8] ^= (char)(1 << bit % 8);
			int r = proxy_parse(buf, n, &h, &why, &at);
			buf[bit / 8] ^= (char)(1 << bit % 8);
			/* A flipped bit may make another valid header (say a
			 * family whose addresses leave no room for TLVs, so no
			 * CRC to check); it must never pass as this one. */
			if (r == (int)n && memcmp(&h, &good, sizeof(h)) == 0)
				fail_msg("%s: bit %zu flipped, CRC32C not noticed", name, bit);
		}
	}
}

static void test_writers_refuse(void **state)
{
	struct sockaddr_storage v4, v6, unix_addr;
	char buf[512];

	make_addr(&v4, "192.0.2.1", 1);
	make_addr(&v6, "2001:db8::1", 2);
	memset(&unix_addr, 0, sizeof(unix_addr));
	unix_addr.ss_family = AF_UNIX;
	const struct sockaddr *a4 = (const struct sockaddr *)&v4, *a6 = (const struct sockaddr *)&v6,
			      *au = (const struct sockaddr *)&unix_addr;

	CHECK_INT("v1 mixed families", proxy_write_v1(buf, sizeof(buf), a4, a6), 0);
	CHECK_INT("v2 mixed families", proxy_write_v2(buf, sizeof(buf), a6, a4, NULL, 0), 0);
	CHECK_INT("v1 no dst", proxy_write_v1(buf, sizeof(buf), a4, NULL), 0);
	CHECK_INT("v2 no dst", proxy_write_v2(buf, sizeof(buf), a4, NULL, NULL, 0), 0);
	CHECK_INT("v1 AF_UNIX", proxy_write_v1(buf, sizeof(buf), au, au), 0);
	CHECK_INT("v2 AF_UNIX", proxy_write_v2(buf, sizeof(buf), au, au, NULL, 0), 0);

	/* The length field holds 65535 at most: the TLVs get what the
	 * addresses leave. */
	static char big[PROXY_V2_MAX];
	memset(big, 0, sizeof(big));
	big[0] = 0x04;
	big[1] = (char)0xff;
	big[2] = (char)0xf0;  /* NOOP of 65520: with IPv4, 12 + 3 + 65520 = 65535 */
	char *out = malloc(PROXY_V2_MAX);
	assert_non_null(out);
	CHECK_INT("v2 largest", proxy_write_v2(out, PROXY_V2_MAX, a4, a4, big, 65523), PROXY_V2_MAX);
	struct proxy_header h;
	const char *why;
	size_t at;
	CHECK_INT("v2 largest parsed", proxy_parse(out, PROXY_V2_MAX, &h, &why, &at), PROXY_V2_MAX);
	CHECK_INT("v2 largest tlv", h.tlv_bytes, 65523);
	CHECK_INT("v2 one more", proxy_write_v2(out, PROXY_V2_MAX, a4, a4, big, 65524), 0);
	CHECK_INT("v2 LOCAL largest", proxy_write_v2(out, PROXY_V2_MAX, NULL, NULL, big, 65535),
		  PROXY_V2_MAX);
	CHECK_INT("v2 LOCAL largest parsed", proxy_parse(out, PROXY_V2_MAX, &h, &why, &at), PROXY_V2_MAX);
	CHECK_INT("v2 LOCAL largest kind", h.kind, PROXY_LOCAL);
	CHECK_INT("v2 LOCAL one more", proxy_write_v2(out, PROXY_V2_MAX, NULL, NULL, big, 65536), 0);
	free(out);
}

static void test_crc32c_helper(void **state)
{
	/* The check value of CRC-32C, so the test's own CRC is the right one. */
	CHECK_INT("crc32c check", crc32c_bitwise((const unsigned char *)"123456789", 9), 0xe3069283);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_helper),
		cmocka_unit_test(test_parse_table),
		cmocka_unit_test(test_every_prefix),
		cmocka_unit_test(test_not_proxy),
		cmocka_unit_test(test_address_text),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_writers_refuse),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
