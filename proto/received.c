/* Received: header formatting (see received.h). Everything that came from
 * the client or the configuration is sanitised so the header stays one valid
 * field whatever those strings hold. */
#include "received.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define RCVD_FIELD_MAX 255

/* Copies s keeping printable ASCII; characters that would break a comment
 * or a quoted string become '_'. */
static void sanitize(char *dst, size_t cap, const char *s)
{
	size_t n = 0;
	for (; s && *s && n + 1 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		dst[n++] = (c < 33 && c != ' ') || c > 126 || c == '(' ||
				   c == ')' || c == '\\' || c == '"' || c == ';'
			? '_' : (char)c;
	}
	dst[n] = '\0';
}

size_t smtp_date_format(char *buf, size_t cap, int64_t t)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu",
					"Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May",
					   "Jun", "Jul", "Aug", "Sep", "Oct",
					   "Nov", "Dec"};
	struct tm tm;
	time_t tt = (time_t)t;
	if (!gmtime_r(&tt, &tm))
		return 0;
	int n = snprintf(buf, cap, "%s, %d %s %04d %02d:%02d:%02d +0000",
			 days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
			 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

size_t smtp_received_format(char *buf, size_t cap, const struct smtp_received *r)
{
	char helo[RCVD_FIELD_MAX + 1], host[RCVD_FIELD_MAX + 1];
	char conn[RCVD_FIELD_MAX + 1], rcpt[RCVD_FIELD_MAX + 1];
	char ip[64], id[64], date[64];
	sanitize(helo, sizeof(helo), r->helo && *r->helo ? r->helo : "unknown");
	sanitize(host, sizeof(host), r->hostname);
	sanitize(conn, sizeof(conn), r->connector);
	sanitize(ip, sizeof(ip), r->client_ip);
	sanitize(id, sizeof(id), r->id);
	if (!smtp_date_format(date, sizeof(date), r->time))
		return 0;
	bool v6 = strchr(ip, ':') != NULL;
	char forpart[RCVD_FIELD_MAX + 16] = "", tlspart[RCVD_FIELD_MAX + 16] = "";
	if (r->tls) {
		char t[RCVD_FIELD_MAX + 1];
		sanitize(t, sizeof(t), r->tls);
		snprintf(tlspart, sizeof(tlspart), "\r\n\t(using %s)", t);
	}
	if (r->for_rcpt) {
		sanitize(rcpt, sizeof(rcpt), r->for_rcpt);
		snprintf(forpart, sizeof(forpart), "\r\n\tfor <%s>", rcpt);
	}
	int n = snprintf(buf, cap,
			 "Received: from %s ([%s%s])\r\n"
			 "\tby %s (Postern) with %s id %s%s\r\n"
			 "\t(connector \"%s\")%s; %s\r\n",
			 helo, v6 ? "IPv6:" : "", ip, host,
			 r->protocol ? r->protocol : "ESMTP", id, tlspart, conn, forpart,
			 date);
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
