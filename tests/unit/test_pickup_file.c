/* Unit tests for proto/pickup_file.c: envelope lines in their forms (with
 * and without <>, any case, CRLF or LF, the null sender), every refusal
 * with its position, and the wire form (CRLF, dot-stuffing, a last line
 * without its newline). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pickup_file.h"

static void test_parse(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		const char *in;
		size_t len;           /* 0: strlen */
		enum pickup_file_error want;
		const char *sender;   /* when OK */
		const char *rcpts;    /* comma-joined, when OK */
		const char *wire;     /* when OK */
		size_t err_at;        /* when not */
	} cases[] = {
		{"drop format", "X-Sender: <a@b.example>\r\nX-Receiver: <c@d.example>\r\nSubject: s\r\n\r\nhi\r\n",
		 0, PICKUP_FILE_OK, "a@b.example", "c@d.example", "Subject: s\r\n\r\nhi\r\n", 0},
		{"no brackets, LF", "X-Sender: a@b.example\nX-Receiver: c@d.example\nX-Receiver: e@f.example\nSubject: s\n\nhi\n",
		 0, PICKUP_FILE_OK, "a@b.example", "c@d.example,e@f.example", "Subject: s\r\n\r\nhi\r\n", 0},
		{"any case, tabs", "x-sender:\t<a@b.example> \nX-RECEIVER:c@d.example\t\nS: 1\n", 0,
		 PICKUP_FILE_OK, "a@b.example", "c@d.example", "S: 1\r\n", 0},
		{"null sender", "X-Sender: <>\nX-Receiver: <c@d.example>\nS: 1\n", 0, PICKUP_FILE_OK, "",
		 "c@d.example", "S: 1\r\n", 0},
		{"postmaster", "X-Sender: <a@b.example>\nX-Receiver: <Postmaster>\nS: 1\n", 0,
		 PICKUP_FILE_OK, "a@b.example", "Postmaster", "S: 1\r\n", 0},
		{"receiver first", "X-Receiver: <c@d.example>\nX-Sender: <a@b.example>\nS: 1\n", 0,
		 PICKUP_FILE_OK, "a@b.example", "c@d.example", "S: 1\r\n", 0},
		{"dot-stuffing", "X-Sender: a@b.example\nX-Receiver: c@d.example\nS: 1\n\n.\n..x\n.y", 0,
		 PICKUP_FILE_OK, "a@b.example", "c@d.example", "S: 1\r\n\r\n..\r\n...x\r\n..y\r\n", 0},
		{"no last newline", "X-Sender: a@b.example\r\nX-Receiver: c@d.example\r\nS: 1\r\n\r\nend", 0,
		 PICKUP_FILE_OK, "a@b.example", "c@d.example", "S: 1\r\n\r\nend\r\n", 0},
		{"8-bit", "X-Sender: a@b.example\nX-Receiver: c@d.example\nS: \xc3\xa9\n", 0,
		 PICKUP_FILE_OK, "a@b.example", "c@d.example", "S: \xc3\xa9\r\n", 0},
		{"no sender", "X-Receiver: <c@d.example>\nS: 1\n", 0, PICKUP_FILE_NO_SENDER, NULL, NULL,
		 NULL, 26},
		{"no receiver", "X-Sender: <a@b.example>\nS: 1\n", 0, PICKUP_FILE_NO_RECEIVER, NULL, NULL,
		 NULL, 24},
		{"nothing", "", 0, PICKUP_FILE_NO_SENDER, NULL, NULL, NULL, 0},
		{"sender after message", "Subject: x\nX-Sender: <a@b.example>\nX-Receiver: <c@d.example>\n", 0,
		 PICKUP_FILE_NO_SENDER, NULL, NULL, NULL, 0},
		{"two senders", "X-Sender: <a@b.example>\nX-Sender: <e@b.example>\nX-Receiver: <c@d.example>\nS: 1\n",
		 0, PICKUP_FILE_TWO_SENDERS, NULL, NULL, NULL, 24},
		{"bad sender", "X-Sender: <a@@b>\nX-Receiver: <c@d.example>\nS: 1\n", 0,
		 PICKUP_FILE_BAD_SENDER, NULL, NULL, NULL, 0},
		{"empty sender", "X-Sender:\nX-Receiver: <c@d.example>\nS: 1\n", 0, PICKUP_FILE_BAD_SENDER,
		 NULL, NULL, NULL, 0},
		{"bad receiver", "X-Sender: <a@b.example>\nX-Receiver: <c d@e>\nS: 1\n", 0,
		 PICKUP_FILE_BAD_RECEIVER, NULL, NULL, NULL, 24},
		{"null receiver", "X-Sender: <a@b.example>\nX-Receiver: <>\nS: 1\n", 0,
		 PICKUP_FILE_BAD_RECEIVER, NULL, NULL, NULL, 24},
		{"junk after address", "X-Sender: <a@b.example> x\nX-Receiver: <c@d.example>\nS: 1\n", 0,
		 PICKUP_FILE_BAD_SENDER, NULL, NULL, NULL, 0},
		{"too many", "X-Sender: a@b.example\nX-Receiver: c@d.example\nX-Receiver: e@d.example\nX-Receiver: f@d.example\nX-Receiver: g@d.example\nS: 1\n",
		 0, PICKUP_FILE_TOO_MANY_RECEIVERS, NULL, NULL, NULL, 94},
		{"NUL in message", "X-Sender: a@b.example\nX-Receiver: c@d.example\nS: 1\n\nx\0y\n", 57,
		 PICKUP_FILE_NUL, NULL, NULL, NULL, 53},
		{"NUL in envelope", "X-Sender: a@b\0.example\nX-Receiver: c@d.example\nS: 1\n", 52,
		 PICKUP_FILE_NUL, NULL, NULL, NULL, 0},
		{"bare CR", "X-Sender: a@b.example\nX-Receiver: c@d.example\nS: 1\rx\n", 0,
		 PICKUP_FILE_BARE_CR, NULL, NULL, NULL, 50},
		{"CR at end", "X-Sender: a@b.example\nX-Receiver: c@d.example\nS: 1\r", 0,
		 PICKUP_FILE_BARE_CR, NULL, NULL, NULL, 50},
		{"no message", "X-Sender: a@b.example\nX-Receiver: c@d.example\n", 0,
		 PICKUP_FILE_NO_MESSAGE, NULL, NULL, NULL, 46},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_span r[3];
		struct pickup_file f = {.rcpt = r, .max_rcpt = 3};
		const char *in = cases[i].in;
		size_t len = cases[i].len ? cases[i].len : strlen(in);
		enum pickup_file_error e = pickup_file_parse(in, len, &f);
		CHECK_STR(cases[i].name, pickup_file_error_name(e),
			  pickup_file_error_name(cases[i].want));
		if (e != PICKUP_FILE_OK) {
			CHECK_INT(cases[i].name, f.err_at, cases[i].err_at);
			continue;
		}
		char got[512];
		snprintf(got, sizeof(got), "%.*s", (int)f.sender.len, f.sender.p);
		CHECK_STR(cases[i].name, got, cases[i].sender);
		size_t o = 0;
		for (unsigned k = 0; k < f.nrcpt; k++)
			o += (size_t)snprintf(got + o, sizeof(got) - o, "%s%.*s", k ? "," : "",
					      (int)r[k].len, r[k].p);
		CHECK_STR(cases[i].name, got, cases[i].rcpts);
		CHECK_INT(cases[i].name, f.wire_len, strlen(cases[i].wire));
		char *w = malloc(f.wire_len + 1);
		pickup_file_wire(in, len, &f, w);
		w[f.wire_len] = '\0';
		CHECK_STR(cases[i].name, w, cases[i].wire);
		free(w);
		CHECK_INT(cases[i].name, f.eightbit, strchr(cases[i].wire, '\xc3') != NULL);
	}
}

static void test_line_length(void **state)
{
	(void)state;
	static const char env[] = "X-Sender: a@b.example\nX-Receiver: c@d.example\n";
	char in[2200];
	for (int stuffed = 0; stuffed < 2; stuffed++) {
		for (size_t n = 997; n <= 999; n++) {
			size_t o = strlen(env);
			memcpy(in, env, o);
			memset(in + o, 'x', n);
			if (stuffed)
				in[o] = '.';
			o += n;
			in[o++] = '\n';
			struct smtp_span r[1];
			struct pickup_file f = {.rcpt = r, .max_rcpt = 1};
			enum pickup_file_error e = pickup_file_parse(in, o, &f);
			/* The stuffed dot counts: the wire line is what is limited. */
			size_t wire = n + (size_t)stuffed;
			char name[64];
			snprintf(name, sizeof(name), "line of %zu%s", n, stuffed ? " starting with ." : "");
			CHECK_INT(name, e, wire > 998 ? PICKUP_FILE_LINE_TOO_LONG : PICKUP_FILE_OK);
		}
	}
}

static void test_error_names(void **state)
{
	(void)state;
	CHECK_STR("ok", pickup_file_error_name(PICKUP_FILE_OK), "ok");
	CHECK_STR("nul", pickup_file_error_name(PICKUP_FILE_NUL), "nul");
	CHECK_STR("out of range", pickup_file_error_name((enum pickup_file_error)99), "unknown");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_line_length),
		cmocka_unit_test(test_error_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
