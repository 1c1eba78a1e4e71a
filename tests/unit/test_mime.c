/* Unit tests for proto/mime.c: header fields unfolded, dot-stuffing
 * undone, base64 and quoted-printable parts decoded, nested multiparts,
 * boundaries in force only; every case is fed in every two-piece split
 * and byte by byte, which must not change what comes out. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "mime.h"

struct got {
	char fields[2048];  /* "Name=value|" per field */
	size_t fl;
	char headers[2048]; /* header lines as handed on */
	size_t hl;
	char body[4096];
	size_t bl;
	char raw[1024];     /* encoded lines as they are */
	size_t rl;
	int open;           /* a field is open */
	bool bad;           /* events out of order */
};

static void add(char *buf, size_t *len, size_t cap, const char *p, size_t n)
{
	if (*len + n >= cap)
		n = cap - 1 - *len;
	memcpy(buf + *len, p, n);
	*len += n;
	buf[*len] = '\0';
}

static void sink(void *ctx, enum mime_event ev, const char *p, size_t n)
{
	struct got *g = ctx;
	switch (ev) {
	case MIME_HEADER_LINE:
		add(g->headers, &g->hl, sizeof(g->headers), p, n);
		break;
	case MIME_FIELD_NAME:
		g->bad |= g->open;
		g->open = 1;
		add(g->fields, &g->fl, sizeof(g->fields), p, n);
		add(g->fields, &g->fl, sizeof(g->fields), "=", 1);
		break;
	case MIME_FIELD_VALUE:
		g->bad |= !g->open;
		add(g->fields, &g->fl, sizeof(g->fields), p, n);
		break;
	case MIME_FIELD_END:
		g->bad |= !g->open;
		g->open = 0;
		add(g->fields, &g->fl, sizeof(g->fields), "|", 1);
		break;
	case MIME_BODY:
		add(g->body, &g->bl, sizeof(g->body), p, n);
		break;
	case MIME_BODY_RAW:
		add(g->raw, &g->rl, sizeof(g->raw), p, n);
		break;
	}
}

static void run(const char *in, size_t len, bool stuffed, size_t cut, bool bytewise,
		struct got *g)
{
	static struct mime_walker m;
	memset(g, 0, sizeof(*g));
	mime_init(&m, sink, g);
	if (bytewise) {
		for (size_t i = 0; i < len; i++)
			mime_feed(&m, in + i, 1, stuffed);
	} else {
		mime_feed(&m, in, cut, stuffed);
		mime_feed(&m, in + cut, len - cut, stuffed);
	}
	mime_finish(&m);
}

static const struct {
	const char *name, *in;
	bool stuffed;
	const char *fields, *body;
} cases[] = {
	{"simple", "Subject: Hello\r\nTo: <a@b>\r\n\r\nbody line\r\n", true,
	 "Subject=Hello|To=<a@b>|", "body line\r\n"},
	{"folded", "Subject: one\r\n two\r\n\tthree\r\nX: y\r\n\r\n", true,
	 "Subject=one two\tthree|X=y|", ""},
	{"dot stuffing", "S: x\r\n\r\n..hidden\r\n.\r\nend\r\n", true, "S=x|",
	 ".hidden\r\n\r\nend\r\n"},
	{"bdat raw keeps dots", "S: x\r\n\r\n..kept\r\n", false, "S=x|", "..kept\r\n"},
	{"no body", "Subject: only\r\n", true, "Subject=only|", ""},
	{"header without newline at end", "Subject: cut", true, "Subject=cut|", ""},
	{"top-level base64",
	 "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMA\r\nc2VjcmV0\r\n", true,
	 "Content-Transfer-Encoding=base64|", "MZ\x90" "\x00\x03\x00" "secret"},
	{"top-level qp", "Content-Transfer-Encoding: Quoted-Printable\r\n\r\n4111=\r\n1111=\r\n\r\nnext=3D\r\n",
	 true, "Content-Transfer-Encoding=Quoted-Printable|", "41111111\r\nnext=\r\n"},
	{"multipart",
	 "Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
	 "preamble\r\n"
	 "--XX\r\n"
	 "Content-Type: text/plain\r\n\r\n"
	 "hello\r\n"
	 "--XX\r\n"
	 "Content-Type: application/octet-stream; name=a.exe\r\n"
	 "Content-Transfer-Encoding: base64\r\n\r\n"
	 "c2VjcmV0\r\n"
	 "--XX--\r\n"
	 "epilogue\r\n",
	 true, "Content-Type=multipart/mixed; boundary=\"XX\"|",
	 "preamble\r\n\r\nContent-Type: text/plain\r\n\r\nhello\r\n\r\n"
	 "Content-Type: application/octet-stream; name=a.exe\r\n"
	 "Content-Transfer-Encoding: base64\r\n\r\nsecret\r\nepilogue\r\n"},
	{"nested and unquoted boundary",
	 "Content-Type: multipart/mixed;\r\n boundary=outer\r\n\r\n"
	 "--outer\r\n"
	 "Content-Type: multipart/alternative; boundary=\"in\"\r\n\r\n"
	 "--in\r\n"
	 "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
	 "caf=C3=A9\r\n"
	 "--in--\r\n"
	 "--outer\r\n\r\n"
	 "--not-a-boundary\r\n"
	 "--outer--\r\n",
	 true, "Content-Type=multipart/mixed; boundary=outer|",
	 "\r\nContent-Type: multipart/alternative; boundary=\"in\"\r\n\r\n"
	 "\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf\xc3\xa9\r\n\r\n"
	 "\r\n\r\n--not-a-boundary\r\n\r\n"},
	{"outer boundary closes inner",
	 "Content-Type: multipart/mixed; boundary=a\r\n\r\n"
	 "--a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
	 "--b\r\nContent-Transfer-Encoding: base64\r\n\r\nWFla\r\n"
	 "--a\r\n\r\nplain\r\n--a--\r\n",
	 true, "Content-Type=multipart/mixed; boundary=a|",
	 "\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
	 "\r\nContent-Transfer-Encoding: base64\r\n\r\nXYZ\r\n\r\nplain\r\n\r\n"},
	{"boundary with stuffed dot",
	 "Content-Type: multipart/mixed; boundary=\".z\"\r\n\r\n--.z\r\n\r\n..dot\r\n--.z--\r\n", true,
	 "Content-Type=multipart/mixed; boundary=\".z\"|", "\r\n\r\n.dot\r\n\r\n"},
	{"not a field line", "garbage line\r\nSubject: s\r\n\r\n", true, "Subject=s|", ""},
};

static void test_cases(void **state)
{
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		const char *in = cases[i].in;
		size_t len = strlen(in);
		size_t want_bl = strlen(cases[i].body);
		/* The base64 case decodes NULs: its expected body is 9 bytes. */
		if (strcmp(cases[i].name, "top-level base64") == 0)
			want_bl = 12;
		for (size_t cut = 0; cut <= len + 1; cut++) {
			struct got g;
			run(in, len, cases[i].stuffed, cut > len ? 0 : cut, cut > len, &g);
			char name[96];
			snprintf(name, sizeof(name), "%s (cut %zu)", cases[i].name, cut);
			CHECK_STR(name, g.fields, cases[i].fields);
			CHECK_INT(name, g.bl, want_bl);
			if (memcmp(g.body, cases[i].body, want_bl) != 0)
				fail_msg("%s: body\n  got  \"%s\"\n  want \"%s\"", name, g.body,
					 cases[i].body);
			CHECK_INT(name, g.bad, 0);
			CHECK_INT(name, g.open, 0);
		}
	}
}

/* The header lines are handed on raw (unstuffed), each whole. */
static void test_header_lines(void **state)
{
	const char *in = "Subject: a\r\n b\r\n.X: dot\r\n\r\nbody\r\n";
	struct got g;
	run(in, strlen(in), true, 7, false, &g);
	CHECK_STR("headers", g.headers, "Subject: a\r\n b\r\nX: dot\r\n");
	CHECK_STR("fields", g.fields, "Subject=a b|X=dot|");
}

/* Lines longer than the walker's buffer go on in pieces, none lost. */
static void test_long_line(void **state)
{
	static char in[5000], want[5000];
	size_t n = (size_t)snprintf(in, sizeof(in), "S: x\r\n\r\n");
	for (size_t i = 0; i < 3000; i++)
		in[n++] = (char)('a' + i % 26);
	memcpy(in + n, "\r\nend\r\n", 8);
	n += 7;
	size_t wl = n - 8;
	memcpy(want, in + 8, wl);
	struct got g;
	run(in, n, true, 100, false, &g);
	CHECK_INT("long", g.bl, wl);
	assert_memory_equal(g.body, want, wl);
}

/* Encoded parts also come as they are (BODY_RAW), identity ones do not. */
static void test_raw(void **state)
{
	const char *in = "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
			 "--b\r\n\r\nplain\r\n"
			 "--b\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMA\r\n..AAAA\r\n"
			 "--b--\r\n";
	struct got g;
	run(in, strlen(in), true, 50, false, &g);
	CHECK_STR("raw", g.raw, "TVqQAAMA\r\n.AAAA\r\n");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cases),
		cmocka_unit_test(test_header_lines),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_raw),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
