/* PROXY protocol v1 and v2 (see proxy.h). Both are checked byte by byte in
 * order, so that a client talking SMTP, or a header that can no longer
 * become valid, is refused at the first byte that proves it rather than
 * left waiting for bytes that will never make it right. */
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "smtp_path.h"

static const unsigned char v2_signature[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
};

#define V2_HEADER 16
#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_FAM_INET 0x1
#define V2_FAM_INET6 0x2
#define V2_STREAM 0x1
#define PP2_TYPE_CRC32C 0x03

/* Address block size by family nibble (UNSPEC, INET, INET6, UNIX). */
static const size_t v2_addr_len[4] = {0, 12, 36, 216};

static int refuse(const char **why, size_t *at, const char *what, size_t where)
{
	if (why)
		*why = what;
	if (at)
		*at = where;
	return -1;
}

/* ---- v1 address text ------------------------------------------------- */

/* The states follow inet_pton's grammar, so that a prefix is refused
 * exactly when no completion of it would be accepted there. */
enum text_state {
	T_START,   /* IPv6: nothing yet */
	T_LEAD,    /* IPv6: one leading ':'; only a second may follow */
	T_GROUP,   /* IPv6: in a group of hex digits */
	T_COLON,   /* IPv6: ':' after a group */
	T_DCOLON,  /* IPv6: "::" just read */
	T_DOTTED,  /* the IPv4 address, or the dotted tail of an IPv6 one */
};

struct text_addr {
	enum text_state state;
	unsigned groups;   /* IPv6 groups before the current one */
	bool dcolon;
	unsigned xdigits;  /* in the current group */
	bool octet;        /* the current group still reads as a decimal octet */
	unsigned dots, digits, value;  /* value: of the current octet */
};

static void text_init(struct text_addr *a, bool v6)
{
	memset(a, 0, sizeof(*a));
	a->state = v6 ? T_START : T_DOTTED;
}

/* "::" stands for one group at least. */
static unsigned text_max_groups(const struct text_addr *a)
{
	return a->dcolon ? 7 : 8;
}


/* false when c leaves no way to complete the text into an address. */
static bool text_step(struct text_addr *a, unsigned char c)
{
	int x = smtp_hexval(c);

	if (a->state == T_DOTTED) {
		if (c >= '0' && c <= '9') {
			if (a->digits == 1 && a->value == 0)
				return false;
			a->value = a->value * 10 + (unsigned)(c - '0');
			a->digits++;
			return a->value <= 255;
		}
		if (c != '.' || a->digits == 0 || a->dots == 3)
			return false;
		a->dots++;
		a->digits = 0;
		a->value = 0;
		return true;
	}
	if (x >= 0) {
		if (a->state == T_LEAD)
			return false;
		if (a->state != T_GROUP) {
			if (a->groups + 1 > text_max_groups(a))
				return false;
			a->state = T_GROUP;
			a->xdigits = 0;
			a->octet = true;
			a->value = 0;
		}
		if (a->xdigits == 4)
			return false;
		if (x > 9 || (a->xdigits == 1 && a->value == 0))
			a->octet = false;
		a->xdigits++;
		a->value = a->value * 10 + (unsigned)x;
		if (a->value > 255)
			a->octet = false;
		return true;
	}
	if (c == ':') {
		switch (a->state) {
		case T_START:
			a->state = T_LEAD;
			return true;
		case T_LEAD:
			a->state = T_DCOLON;
			a->dcolon = true;
			return true;
		case T_GROUP:
			/* A lone ':' must be followed by one more group. */
			if (a->groups + 2 > text_max_groups(a))
				return false;
			a->groups++;
			a->state = T_COLON;
			return true;
		case T_COLON:
			if (a->dcolon)
				return false;
			a->dcolon = true;
			a->state = T_DCOLON;
			return true;
		default:
			return false;
		}
	}
	/* The dotted quad is the last two groups. */
	if (c == '.' && a->state == T_GROUP && a->octet &&
	    (a->dcolon ? a->groups + 2 <= 7 : a->groups + 2 == 8)) {
		a->state = T_DOTTED;
		a->dots = 1;
		a->digits = 0;
		a->value = 0;
		return true;
	}
	return false;
}

static bool text_complete(const struct text_addr *a)
{
	switch (a->state) {
	case T_GROUP:
		return a->dcolon || a->groups + 1 == 8;
	case T_DCOLON:
		return true;
	case T_DOTTED:
		return a->dots == 3 && a->digits > 0;
	default:
		return false;
	}
}

/* Fewest bytes that complete the text ("::", ":0", ".0"...). */
static size_t text_need(const struct text_addr *a)
{
	switch (a->state) {
	case T_START:
		return 2;
	case T_LEAD:
	case T_COLON:
		return 1;
	case T_GROUP:
		return a->dcolon || a->groups + 1 == 8 ? 0 : 2;
	case T_DCOLON:
		return 0;
	case T_DOTTED:
		return 2 * (3 - a->dots) + (a->digits == 0);
	}
	return 0;
}

/* The automaton has done the checking; inet_pton stays the reference for
 * what a valid address is, and does the conversion. */
static bool text_convert(const unsigned char *s, size_t n, bool v6, struct sockaddr_storage *ss,
			 socklen_t *sslen)
{
	char text[INET6_ADDRSTRLEN];

	if (n >= sizeof(text))
		return false;
	memcpy(text, s, n);
	text[n] = '\0';
	if (v6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		sin6->sin6_family = AF_INET6;
		*sslen = sizeof(*sin6);
		return inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1;
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	sin->sin_family = AF_INET;
	*sslen = sizeof(*sin);
	return inet_pton(AF_INET, text, &sin->sin_addr) == 1;
}

static void set_port(struct sockaddr_storage *ss, unsigned port)
{
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
	else
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

/* ---- v1 --------------------------------------------------------------- */

enum v1_state {
	V1_LITERAL,      /* lit[k], then next */
	V1_PROTO,        /* 'T' of TCP4/TCP6 or 'U' of UNKNOWN */
	V1_TCP_FAMILY,   /* '4' or '6' */
	V1_UNKNOWN_END,  /* SP or CR right after "UNKNOWN" */
	V1_UNKNOWN_REST, /* the proxy's business, up to CR */
	V1_SRC,
	V1_DST,
	V1_SPORT,
	V1_DPORT,
	V1_LF,
};

/* Fewest bytes still needed, CRLF included; 0 where the line cannot be
 * near PROXY_V1_MAX yet. */
static size_t v1_need(enum v1_state state, bool v6, const struct text_addr *a, unsigned digits)
{
	switch (state) {
	case V1_SRC:
		/* " " dst " 0 0\r\n" */
		return text_need(a) + 1 + (v6 ? 2 : 7) + 6;
	case V1_DST:
		return text_need(a) + 6;
	case V1_SPORT:
		return (digits == 0) + 4;
	case V1_DPORT:
		return (digits == 0) + 2;
	case V1_UNKNOWN_END:
	case V1_UNKNOWN_REST:
		return 2;
	case V1_LF:
		return 1;
	default:
		return 0;
	}
}

static int parse_v1(const unsigned char *p, size_t len, struct proxy_header *h, const char **why,
		    size_t *at)
{
	struct proxy_header r = {.version = 1, .kind = PROXY_PROXIED};
	enum v1_state state = V1_LITERAL, next = V1_PROTO;
	const char *lit = "PROXY ", *lit_why = "not a PROXY header";
	size_t k = 0, start = 0;
	bool v6 = false, unknown = false;
	struct text_addr a;
	unsigned digits = 0, port = 0;

	text_init(&a, false);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];

		if (c == '\0')
			return refuse(why, at, "v1: NUL byte", i);
		if (c == '\n' && state != V1_LF)
			return refuse(why, at, "v1: LF without CR", i);
		switch (state) {
		case V1_LITERAL:
			if (c != (unsigned char)lit[k])
				return refuse(why, at, lit_why, i);
			if (lit[++k] == '\0')
				state = next;
			break;
		case V1_PROTO:
			lit_why = "v1: unknown protocol";
			k = 0;
			state = V1_LITERAL;
			if (c == 'T') {
				lit = "CP";
				next = V1_TCP_FAMILY;
			} else if (c == 'U') {
				lit = "NKNOWN";
				next = V1_UNKNOWN_END;
				unknown = true;
			} else {
				return refuse(why, at, lit_why, i);
			}
			break;
		case V1_TCP_FAMILY:
			if (c != '4' && c != '6')
				return refuse(why, at, "v1: unknown protocol", i);
			v6 = c == '6';
			text_init(&a, v6);
			lit = " ";
			k = 0;
			state = V1_LITERAL;
			next = V1_SRC;
			start = i + 2;
			break;
		case V1_UNKNOWN_END:
			if (c == ' ')
				state = V1_UNKNOWN_REST;
			else if (c == '\r')
				state = V1_LF;
			else
				return refuse(why, at, "v1: unknown protocol", i);
			break;
		case V1_UNKNOWN_REST:
			if (c == '\r')
				state = V1_LF;
			break;
		case V1_SRC:
		case V1_DST:
			if (c == ' ' && i == start)
				return refuse(why, at, "v1: fields must be one space apart", i);
			if (c == '\r')
				return refuse(why, at, "v1: line ends before all fields", i);
			if (c != ' ') {
				if (!text_step(&a, c))
					return refuse(why, at, state == V1_SRC ? "v1: bad source address" :
						      "v1: bad destination address", i);
				break;
			}
			if (!text_complete(&a) ||
			    !text_convert(p + start, i - start, v6, state == V1_SRC ? &r.src : &r.dst,
					  state == V1_SRC ? &r.srclen : &r.dstlen))
				return refuse(why, at, state == V1_SRC ? "v1: bad source address" :
					      "v1: bad destination address", i);
			state = state == V1_SRC ? V1_DST : V1_SPORT;
			text_init(&a, v6);
			start = i + 1;
			digits = port = 0;
			break;
		case V1_SPORT:
		case V1_DPORT:
			if ((c == ' ' && state == V1_SPORT) || (c == '\r' && state == V1_DPORT)) {
				if (digits == 0)
					return refuse(why, at, "v1: fields must be one space apart", i);
				set_port(state == V1_SPORT ? &r.src : &r.dst, port);
				state = state == V1_SPORT ? V1_DPORT : V1_LF;
				digits = port = 0;
				break;
			}
			if (c == '\r')
				return refuse(why, at, "v1: line ends before all fields", i);
			/* No sign, no leading zero: one spelling per port. */
			if (c < '0' || c > '9' || (digits == 1 && port == 0))
				return refuse(why, at, "v1: bad port", i);
			port = port * 10 + (unsigned)(c - '0');
			digits++;
			if (port > 65535)
				return refuse(why, at, "v1: port above 65535", i);
			break;
		case V1_LF:
			if (c != '\n')
				return refuse(why, at, "v1: CR without LF", i);
			if (unknown) {
				memset(&r, 0, sizeof(r));
				r.version = 1;
				r.kind = PROXY_UNKNOWN;
			}
			*h = r;
			return (int)(i + 1);
		}
		if (i + 1 + v1_need(state, v6, &a, digits) > PROXY_V1_MAX)
			return refuse(why, at, "v1: no CRLF within 107 bytes", i);
	}
	return 0;
}

/* ---- v2 --------------------------------------------------------------- */

/* CRC-32C (Castagnoli, reflected 0x82f63b78), four bits at a time: the
 * header is small and this is no hot path. */
static const uint32_t crc32c_nibble[16] = {
	0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3, 0x61c69362,
	0x7198540d, 0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9, 0xc38d26c4, 0xd3d3e1ab,
	0xe330a81a, 0xf36e6f75,
};

static uint32_t crc32c_update(uint32_t crc, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		crc ^= p[i];
		crc = crc >> 4 ^ crc32c_nibble[crc & 15];
		crc = crc >> 4 ^ crc32c_nibble[crc & 15];
	}
	return crc;
}

/* Over the whole header with the checksum itself read as zeroes. */
static bool crc32c_matches(const unsigned char *p, size_t total, size_t value_at)
{
	static const unsigned char zero[4];
	uint32_t crc = 0xffffffff;
	uint32_t want = (uint32_t)p[value_at] << 24 | (uint32_t)p[value_at + 1] << 16 |
			(uint32_t)p[value_at + 2] << 8 | p[value_at + 3];

	crc = crc32c_update(crc, p, value_at);
	crc = crc32c_update(crc, zero, 4);
	crc = crc32c_update(crc, p + value_at + 4, total - value_at - 4);
	return ~crc == want;
}

static int parse_v2(const unsigned char *p, size_t len, struct proxy_header *h, const char **why,
		    size_t *at)
{
	struct proxy_header r = {.version = 2};

	for (size_t i = 0; i < sizeof(v2_signature) && i < len; i++)
		if (p[i] != v2_signature[i])
			return refuse(why, at, "not a PROXY header", i);
	if (len <= 12)
		return 0;
	if (p[12] >> 4 != 2)
		return refuse(why, at, "v2: version is not 2", 12);
	unsigned cmd = p[12] & 0xf;
	if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY)
		return refuse(why, at, "v2: unknown command", 12);
	if (len <= 13)
		return 0;
	unsigned fam = p[13] >> 4, transport = p[13] & 0xf;
	if (fam > 3)
		return refuse(why, at, "v2: unknown address family", 13);
	if (transport > 2)
		return refuse(why, at, "v2: unknown transport", 13);
	if (len < V2_HEADER)
		return 0;

	size_t block = (size_t)p[14] << 8 | p[15], total = V2_HEADER + block;
	size_t addr_len = v2_addr_len[fam];
	bool proxied = cmd == V2_CMD_PROXY && transport == V2_STREAM &&
		       (fam == V2_FAM_INET || fam == V2_FAM_INET6);
	if (proxied && block < addr_len)
		return refuse(why, at, "v2: address block too short", 14);

	/* Where the family leaves no room for its addresses (LOCAL, or a
	 * kind we do not use) the block is opaque: nothing to walk. */
	size_t crc_at = 0;
	if (block >= addr_len) {
		size_t o = V2_HEADER + addr_len;
		while (o < total) {
			if (o + 3 > total)
				return refuse(why, at, "v2: TLV header runs past the header", o);
			if (len < o + 3)
				return 0;
			size_t tlen = (size_t)p[o + 1] << 8 | p[o + 2];
			if (o + 3 + tlen > total)
				return refuse(why, at, "v2: TLV runs past the header", o);
			if (p[o] == PP2_TYPE_CRC32C) {
				if (tlen != 4)
					return refuse(why, at, "v2: CRC32C TLV is not 4 bytes", o);
				if (crc_at)
					return refuse(why, at, "v2: two CRC32C TLVs", o);
				crc_at = o + 3;
			}
			o += 3 + tlen;
		}
		r.tlv_bytes = block - addr_len;
	}
	if (len < total)
		return 0;
	if (crc_at && !crc32c_matches(p, total, crc_at))
		return refuse(why, at, "v2: CRC32C mismatch", crc_at);

	if (cmd == V2_CMD_LOCAL) {
		r.kind = PROXY_LOCAL;
	} else if (!proxied) {
		r.kind = PROXY_UNKNOWN;
	} else if (fam == V2_FAM_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&r.src, *d = (struct sockaddr_in *)&r.dst;
		r.kind = PROXY_PROXIED;
		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, p + 16, 4);
		memcpy(&d->sin_addr, p + 20, 4);
		memcpy(&s->sin_port, p + 24, 2);
		memcpy(&d->sin_port, p + 26, 2);
		r.srclen = r.dstlen = sizeof(*s);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&r.src, *d = (struct sockaddr_in6 *)&r.dst;
		r.kind = PROXY_PROXIED;
		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, p + 16, 16);
		memcpy(&d->sin6_addr, p + 32, 16);
		memcpy(&s->sin6_port, p + 48, 2);
		memcpy(&d->sin6_port, p + 50, 2);
		r.srclen = r.dstlen = sizeof(*s);
	}
	*h = r;
	return (int)total;
}

int proxy_parse(const void *buf, size_t len, struct proxy_header *h, const char **why, size_t *at)
{
	const unsigned char *p = buf;

	memset(h, 0, sizeof(*h));
	if (why)
		*why = NULL;
	if (at)
		*at = 0;
	if (len == 0)
		return 0;
	if (p[0] == 'P')
		return parse_v1(p, len, h, why, at);
	if (p[0] == v2_signature[0])
		return parse_v2(p, len, h, why, at);
	return refuse(why, at, "not a PROXY header", 0);
}

/* ---- writers ---------------------------------------------------------- */

/* Copies out the addresses and ports (network order) of a same-family
 * INET or INET6 pair; 0 for anything else. */
static size_t pair_bytes(const struct sockaddr *src, const struct sockaddr *dst, unsigned char *addr,
			 unsigned char *ports)
{
	if (!dst || src->sa_family != dst->sa_family)
		return 0;
	if (src->sa_family == AF_INET) {
		struct sockaddr_in s, d;
		memcpy(&s, src, sizeof(s));
		memcpy(&d, dst, sizeof(d));
		memcpy(addr, &s.sin_addr, 4);
		memcpy(addr + 4, &d.sin_addr, 4);
		memcpy(ports, &s.sin_port, 2);
		memcpy(ports + 2, &d.sin_port, 2);
		return 4;
	}
	if (src->sa_family == AF_INET6) {
		struct sockaddr_in6 s, d;
		memcpy(&s, src, sizeof(s));
		memcpy(&d, dst, sizeof(d));
		memcpy(addr, &s.sin6_addr, 16);
		memcpy(addr + 16, &d.sin6_addr, 16);
		memcpy(ports, &s.sin6_port, 2);
		memcpy(ports + 2, &d.sin6_port, 2);
		return 16;
	}
	return 0;
}

size_t proxy_write_v1(char *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst)
{
	char line[PROXY_V1_MAX + 1];
	int n;

	if (!src) {
		n = snprintf(line, sizeof(line), "PROXY UNKNOWN\r\n");
	} else {
		unsigned char addr[32], ports[4];
		char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
		size_t alen = pair_bytes(src, dst, addr, ports);
		int af = alen == 16 ? AF_INET6 : AF_INET;

		if (!alen || !inet_ntop(af, addr, s, sizeof(s)) ||
		    !inet_ntop(af, addr + alen, d, sizeof(d)))
			return 0;
		n = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n", af == AF_INET6 ? "TCP6" : "TCP4",
			     s, d, (unsigned)ports[0] << 8 | ports[1], (unsigned)ports[2] << 8 | ports[3]);
	}
	if (n < 0 || (size_t)n >= sizeof(line) || (size_t)n > cap)
		return 0;
	memcpy(out, line, (size_t)n);
	return (size_t)n;
}

size_t proxy_write_v2(char *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst,
		      const void *tlv, size_t tlvlen)
{
	unsigned char addr[32], ports[4];
	size_t alen = 0;
	unsigned char cmd = 0x20 | V2_CMD_LOCAL, fam = 0x00;

	if (!tlv)
		tlvlen = 0;
	if (src) {
		alen = pair_bytes(src, dst, addr, ports);
		if (!alen)
			return 0;
		cmd = 0x20 | V2_CMD_PROXY;
		fam = (alen == 16 ? V2_FAM_INET6 : V2_FAM_INET) << 4 | V2_STREAM;
	}
	size_t block = (alen ? 2 * alen + 4 : 0);
	if (tlvlen > 65535 - block || V2_HEADER + block + tlvlen > cap)
		return 0;
	unsigned char *o = (unsigned char *)out;
	memcpy(o, v2_signature, sizeof(v2_signature));
	o[12] = cmd;
	o[13] = fam;
	o[14] = (unsigned char)((block + tlvlen) >> 8);
	o[15] = (unsigned char)(block + tlvlen);
	if (alen) {
		memcpy(o + V2_HEADER, addr, 2 * alen);
		memcpy(o + V2_HEADER + 2 * alen, ports, 4);
	}
	if (tlvlen)
		memcpy(o + V2_HEADER + block, tlv, tlvlen);
	return V2_HEADER + block + tlvlen;
}
