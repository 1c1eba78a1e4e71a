/* PROXY protocol (HAProxy, versions 1 and 2): parses the header a load
 * balancer puts in front of the SMTP stream, and writes one for tests and
 * the benchmark client. Pure: no I/O, no allocation, no logging; what to do
 * with the addresses is the engine's business. */
#ifndef POSTERN_PROXY_H
#define POSTERN_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PROXY_V1_MAX 107            /* the whole v1 line, CRLF included */
#define PROXY_V2_MAX (16 + 65535)   /* signature..len, then the rest */

enum proxy_kind {
	PROXY_PROXIED,  /* src/dst hold the client's and the proxy's listener address (AF_INET or AF_INET6, with ports) */
	PROXY_LOCAL,    /* v2 LOCAL command: the proxy's own connection (health check) */
	PROXY_UNKNOWN,  /* v1 "UNKNOWN", v2 AF_UNSPEC / AF_UNIX / non-STREAM: use the real peer */
};

struct proxy_header {
	int version;                    /* 1 or 2 */
	enum proxy_kind kind;
	struct sockaddr_storage src, dst;  /* only for PROXY_PROXIED; zeroed otherwise */
	socklen_t srclen, dstlen;
	size_t tlv_bytes;               /* v2: bytes of TLVs skipped */
};

/* Parses a PROXY header at the start of buf (the len bytes received so far).
 * Returns >0, the header's length in bytes (the SMTP stream starts right
 * after it), 0 when more bytes are needed, -1 when it is not a valid PROXY
 * header; then *why names the problem (a static string) and *at its offset.
 * *h is zeroed unless the result is >0; *why is NULL and *at 0 unless it is
 * -1. why and at may be NULL. buf need not be NUL-terminated. A v2 *at
 * may lie beyond len when the length field alone proves a TLV cut short.
 * A bad byte is refused as soon as it is seen; only a v2 CRC32C mismatch
 * waits for the whole header, since only then can it be checked. */
int proxy_parse(const void *buf, size_t len, struct proxy_header *h, const char **why, size_t *at);

/* Writers, for tests and for the benchmark client: return the length written,
 * or 0 if cap is too small. v1 writes TCP4/TCP6 from the family of src
 * (dst must be the same family) or "PROXY UNKNOWN\r\n" when src is NULL; v2
 * writes the PROXY command with INET/INET6 STREAM, or LOCAL when src is NULL;
 * tlv/tlvlen (may be NULL/0) are appended raw after the addresses.
 * Both also return 0 when src is neither AF_INET nor AF_INET6, when dst is
 * NULL or of another family, or (v2) when the block would exceed 65535
 * bytes. Nothing is NUL-terminated. */
size_t proxy_write_v1(char *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst);
size_t proxy_write_v2(char *out, size_t cap, const struct sockaddr *src, const struct sockaddr *dst,
		      const void *tlv, size_t tlvlen);

#endif
