/* SMTP command-line tokenizer: finds one command line in a byte stream,
 * classifies its verb and hands back the argument as a span into the caller's
 * buffer. Resumable across partial input. Pure: no I/O, no allocation. */
#ifndef POSTERN_SMTP_CMD_H
#define POSTERN_SMTP_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 5321 4.5.3.1.4 allows 512 octets; extensions (SIZE, DSN parameters)
 * legitimately push MAIL/RCPT beyond that, so we allow more but stay bounded. */
#define SMTP_CMD_LINE_MAX 2048

enum smtp_verb {
	SMTP_VERB_UNKNOWN = 0,
	SMTP_VERB_HELO, SMTP_VERB_EHLO, SMTP_VERB_MAIL, SMTP_VERB_RCPT,
	SMTP_VERB_DATA, SMTP_VERB_RSET, SMTP_VERB_NOOP, SMTP_VERB_QUIT,
	SMTP_VERB_VRFY, SMTP_VERB_EXPN, SMTP_VERB_HELP, SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH, SMTP_VERB_BDAT,
	SMTP_VERB_COUNT
};

enum smtp_cmd_result {
	SMTP_CMD_AGAIN,     /* no complete line yet; drop *consumed bytes */
	SMTP_CMD_LINE,      /* *cmd holds one line */
	SMTP_CMD_TOO_LONG,  /* an over-long line ended; it was discarded */
};

struct smtp_cmd {
	enum smtp_verb verb;
	const char *line;   /* whole line, without CR LF */
	size_t line_len;
	const char *arg;    /* after the verb and its spaces, trailing spaces trimmed */
	size_t arg_len;
};

struct smtp_cmd_reader {
	size_t scanned;     /* bytes of the pending line already searched for LF */
	bool discarding;    /* inside a line longer than SMTP_CMD_LINE_MAX */
};

void smtp_cmd_reader_init(struct smtp_cmd_reader *r);

/* Looks for the next command line at the start of buf. The caller must drop
 * *consumed bytes from the front of its buffer whatever the result, and call
 * again with the same remaining bytes plus any new ones. A line ends at LF;
 * a CR before it is removed. */
enum smtp_cmd_result smtp_cmd_next(struct smtp_cmd_reader *r, const char *buf,
				   size_t len, struct smtp_cmd *cmd,
				   size_t *consumed);

/* Classifies the verb of a line (case-insensitive; "HELOX" is unknown). */
enum smtp_verb smtp_cmd_verb(const char *line, size_t len, size_t *verb_len);

const char *smtp_verb_name(enum smtp_verb v);

/* RFC 3030 BDAT argument: "chunk-size [SP LAST]", chunk-size 1*DIGIT (no
 * sign, at most 18 digits: a size that does not fit is not a size we
 * could count), LAST in any case, single spaces. false: not that. */
bool smtp_bdat_arg_parse(const char *arg, size_t len, uint64_t *size, bool *last);

#endif
