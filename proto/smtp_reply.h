/* SMTP reply texts (DESIGN B.3, exactly as operators know them) and a bounded
 * reply buffer that collects the replies of one pipelined batch. */
#ifndef POSTERN_SMTP_REPLY_H
#define POSTERN_SMTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#define R_MAIL_OK            "250 2.1.0 Sender OK"
#define R_BAD_SENDER         "550 5.1.7 Invalid address"
#define R_NOT_AUTHENTICATED  "530 5.7.1 Client was not authenticated"
#define R_RCPT_OK            "250 2.1.5 Recipient OK"
#define R_BAD_RCPT           "501 5.1.3 Invalid address"
#define R_UNABLE_TO_RELAY    "550 5.7.1 Unable to relay"
#define R_UNABLE_TO_ROUTE    "550 5.4.4 Unable to route"
#define R_RECIPIENT_NOT_FOUND "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
#define R_SENDER_DENIED      "550 5.7.1 Client does not have permissions to send as this sender"
#define R_TOO_MANY_RCPTS     "452 4.5.3 Too many recipients"
#define R_BDAT_OK_FMT        "250 2.0.0 %llu bytes received"
#define R_START_DATA         "354 Start mail input; end with <CRLF>.<CRLF>"
#define R_TOO_BIG            "552 5.3.4 Message size exceeds fixed maximum message size"
#define R_HEADER_TOO_BIG     "552 5.3.4 Header size exceeds fixed maximum size"
#define R_HOPS               "554 5.4.6 Hop count exceeded - possible mail loop"
#define R_BARE_LF            "550 5.6.11 Bare line feed or carriage return not allowed"
#define R_DATA_LINE_TOO_LONG "550 5.6.0 Message line longer than 1000 octets"
#define R_NUL                "550 5.6.0 NUL character not allowed in message content"
#define R_BAD_SEQUENCE       "503 5.5.1 Bad sequence of commands"
#define R_UNRECOGNIZED       "500 5.3.3 Unrecognized command"
#define R_LINE_TOO_LONG      "500 5.5.2 Line too long"
#define R_SYNTAX             "501 5.5.4 Syntax error in parameters or arguments"
#define R_BAD_DOMAIN         "501 5.5.4 Invalid domain name"
#define R_UNKNOWN_PARAM      "555 5.5.4 Unsupported parameter"
#define R_BAD_PARAM          "501 5.5.4 Invalid parameter value"
#define R_NOT_IMPLEMENTED    "502 5.5.1 Command not implemented"
#define R_RATE_EXCEEDED      "421 4.4.2 Message submission rate for this client has exceeded the configured limit"
#define R_CONN_LIMIT         "421 4.3.2 The maximum number of concurrent connections has exceeded a limit, closing transmission channel"
#define R_SHUTTING_DOWN      "421 4.3.2 Service shutting down, closing transmission channel"
#define R_TOO_MANY_ERRORS    "421 4.7.0 Too many errors on this connection, closing transmission channel"
#define R_TIMEOUT            "421 4.4.1 Connection timed out"
#define R_QUIT               "221 2.0.0 Service closing transmission channel"
#define R_NOOP_OK                 "250 2.0.0 OK"
#define R_RESET              "250 2.0.0 Resetting"
#define R_VRFY               "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
#define R_HELP               "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
#define R_STARTTLS_READY     "220 2.0.0 SMTP server ready"
#define R_TLS_UNAVAILABLE    "454 4.7.0 TLS not available due to temporary reason"
#define R_TLS_REQUIRED       "530 5.7.0 Must issue a STARTTLS command first"
#define R_CLIENT_CERT_REQUIRED "530 5.7.1 Valid client certificate required"
#define R_AUTH_OK            "235 2.7.0 Authentication successful"
#define R_AUTH_INVALID       "535 5.7.8 Authentication credentials invalid"
#define R_AUTH_NEED_TLS      "538 5.7.11 Encryption required for requested authentication mechanism"
#define R_AUTH_CANCELLED     "501 5.0.0 Authentication cancelled"
#define R_AUTH_BAD_RESPONSE  "501 5.5.2 Cannot decode response"
#define R_AUTH_MECHANISM     "504 5.5.4 Unrecognized authentication type"
#define R_AUTH_TEMPORARY     "454 4.7.0 Temporary authentication failure"
#define R_STORAGE_FULL       "452 4.3.1 Insufficient system storage"
#define R_LOCAL_ERROR        "451 4.3.0 Local error in processing"

/* Longest single reply line we ever format, CR LF included. */
#define SMTP_REPLY_LINE_MAX 512

struct smtp_reply_buf {
	char *p;
	size_t len;
	size_t cap;
};

/* Appends text plus CR LF. Returns false (and appends nothing) when it does
 * not fit: callers make room first, so that is a bug on their side. */
bool smtp_reply_add(struct smtp_reply_buf *b, const char *text);

/* printf-style variant; the formatted line is cut at SMTP_REPLY_LINE_MAX. */
bool smtp_reply_addf(struct smtp_reply_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

size_t smtp_reply_room(const struct smtp_reply_buf *b);

#endif
