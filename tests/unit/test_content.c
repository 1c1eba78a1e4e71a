/* Unit tests for engine/content.c: which rules a message hits for each
 * kind of where (fed whole and in small pieces, which must agree), the
 * verdict's precedence, compile errors naming the rule, and one scratch
 * serving two databases (a reload while sessions use the old one). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "content.h"
#include "smtp_server.h"

struct rule_in {
	const char *name;
	enum content_where where;
	const char *field, *pattern;
	enum content_action action;
};

static void build(struct content_rules *cr, const struct rule_in *in, unsigned n)
{
	memset(cr, 0, sizeof(*cr));
	cr->rule = calloc(n, sizeof(*cr->rule));
	cr->n = n;
	for (unsigned i = 0; i < n; i++) {
		cr->rule[i].name = strdup(in[i].name);
		cr->rule[i].where = in[i].where;
		cr->rule[i].field = in[i].field ? strdup(in[i].field) : NULL;
		cr->rule[i].pattern = strdup(in[i].pattern);
		cr->rule[i].action = in[i].action;
	}
}

static const struct rule_in rules[] = {
	{"exe", CONTENT_BODY, NULL, "TVqQAAMAAAAEAAAA", CONTENT_REJECT},
	{"mz", CONTENT_BODY, NULL, "^MZ\\x90\\x00", CONTENT_HOLD},
	{"card", CONTENT_BODY, NULL, "\\b4[0-9]{15}\\b", CONTENT_HOLD},
	{"subject", CONTENT_HEADER, "Subject", "(?i)confidential", CONTENT_ADD_HEADER},
	{"to", CONTENT_HEADER, "to", "@legal\\.example$", CONTENT_ROUTE},
	{"hdrs", CONTENT_HEADERS, NULL, "^X-Mailer: ", CONTENT_ADD_HEADER},
	{"from", CONTENT_SENDER, NULL, "^bad@", CONTENT_REJECT},
	{"rcpt", CONTENT_RECIPIENT, NULL, "^audit@", CONTENT_HOLD},
};

/* The rules above, compiled as a first generation. */
static void build_rules(struct content_rules *cr)
{
	build(cr, rules, N_ELEMS(rules));
	unsigned bad;
	char msg[256];
	assert_true(content_compile(cr, &bad, msg, sizeof(msg)));
	cr->gen = 1;
}

static char hits[256];

static void on_hit(void *ctx, const struct content_rule *r, enum content_where w)
{
	size_t n = strlen(hits);
	snprintf(hits + n, sizeof(hits) - n, "%s%s", n ? "," : "", r->name);
}

static const struct {
	const char *name, *msg, *from, *rcpt, *want;
	bool stuffed;
	const char *reject, *hold, *route;
} cases[] = {
	{"nothing", "Subject: hi\r\n\r\nhello\r\n", "a@b", "c@d", "", true, NULL, NULL, NULL},
	{"raw base64 and decoded",
	 "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n", "a@b", "c@d", "exe,mz", true,
	 "exe", "mz", NULL},
	{"card split by qp soft break",
	 "Content-Transfer-Encoding: quoted-printable\r\n\r\nno 41111111=\r\n11111111 x\r\n", "a@b",
	 "c@d", "card", true, NULL, "card", NULL},
	{"card in subject is not body", "Subject: 4111111111111111\r\n\r\nx\r\n", "a@b", "c@d", "",
	 true, NULL, NULL, NULL},
	{"header field, folded, other case name",
	 "SUBJECT: top\r\n CONFIDENTIAL\r\nTO: x@legal.example\r\nX-Mailer: m\r\n\r\n", "a@b",
	 "c@d", "subject,to,hdrs", true, NULL, NULL, "to"},
	{"field end anchors at field end", "To: x@legal.example, y@other\r\n\r\n", "a@b", "c@d", "",
	 true, NULL, NULL, NULL},
	{"Subject rule does not see To", "To: confidential\r\n\r\n", "a@b", "c@d", "", true, NULL,
	 NULL, NULL},
	{"sender and recipient", "S: x\r\n\r\n", "bad@corp", "audit@corp", "from,rcpt", true,
	 "from", "rcpt", NULL},
	{"recipient anchored per address", "S: x\r\n\r\n", "a@b", "x-audit@corp", "", true, NULL,
	 NULL, NULL},
	{"bdat raw: no unstuffing", "S: x\r\n\r\n.TVqQAAMAAAAEAAAA\r\n", "a@b", "c@d", "exe", false,
	 "exe", NULL, NULL},
};

static void scan_one(const struct content_rules *cr, struct content_worker *cw, size_t i,
		     size_t step, struct content_verdict *v)
{
	struct content_scan *s = content_scan_begin(cr, cw);
	assert_non_null(s);
	const char *m = cases[i].msg;
	size_t len = strlen(m);
	for (size_t o = 0; o < len; o += step)
		content_scan_data(s, m + o, len - o < step ? len - o : step, cases[i].stuffed);
	struct smtp_rcpt rc[1] = {{.addr = (char *)cases[i].rcpt}};
	hits[0] = '\0';
	content_scan_end(s, cases[i].from, rc, 1, v, on_hit, NULL);
	content_scan_free(s);
}

static void test_hits(void **state)
{
	struct content_rules cr;
	build_rules(&cr);
	struct content_worker cw = {0};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		for (size_t step = 1; step <= 64; step = step * 3 + 1) {
			char name[96];
			snprintf(name, sizeof(name), "%s (step %zu)", cases[i].name, step);
			struct content_verdict v;
			scan_one(&cr, &cw, i, step, &v);
			CHECK_STR(name, hits, cases[i].want);
			CHECK_INT(name, v.failed, 0);
			CHECK_STR(name, v.reject ? v.reject->name : "-", cases[i].reject ? cases[i].reject : "-");
			CHECK_STR(name, v.hold ? v.hold->name : "-", cases[i].hold ? cases[i].hold : "-");
			CHECK_STR(name, v.route ? v.route->name : "-", cases[i].route ? cases[i].route : "-");
		}
	}
	content_worker_free(&cw);
	content_rules_free(&cr);
}

static void test_compile_error(void **state)
{
	static const struct rule_in bad_rules[] = {
		{"ok", CONTENT_BODY, NULL, "fine", CONTENT_REJECT},
		{"broken", CONTENT_BODY, NULL, "a(b", CONTENT_REJECT},
	};
	struct content_rules cr;
	build(&cr, bad_rules, 2);
	unsigned bad = 99;
	char msg[256] = "";
	assert_false(content_compile(&cr, &bad, msg, sizeof(msg)));
	CHECK_INT("bad", bad, 1);
	assert_true(strlen(msg) > 0);
	assert_null(cr.db);
	content_rules_free(&cr);
	/* No rules: nothing to compile, no scan. */
	memset(&cr, 0, sizeof(cr));
	assert_true(content_compile(&cr, &bad, msg, sizeof(msg)));
	struct content_worker cw = {0};
	assert_null(content_scan_begin(&cr, &cw));
}

/* A reload: the worker's scratch grows for the new database and still
 * serves the old one, in either order. */
static void test_two_databases(void **state)
{
	struct content_rules a, b;
	static const struct rule_in ra[] = {{"a", CONTENT_BODY, NULL, "alpha", CONTENT_REJECT}};
	static const struct rule_in rb[] = {
		{"b1", CONTENT_BODY, NULL, "beta[0-9]{3,40}x", CONTENT_HOLD},
		{"b2", CONTENT_HEADER, "Subject", "(?i)gamma.*delta", CONTENT_HOLD},
		{"b3", CONTENT_BODY, NULL, "(?s)one.{0,200}two", CONTENT_HOLD}};
	build(&a, ra, 1);
	build(&b, rb, 3);
	unsigned bad;
	char msg[256];
	assert_true(content_compile(&a, &bad, msg, sizeof(msg)));
	assert_true(content_compile(&b, &bad, msg, sizeof(msg)));
	a.gen = 1;
	b.gen = 2;
	struct content_worker cw = {0};
	const char *m = "Subject: Gamma and delta\r\n\r\nalpha beta1234x one\r\nthen two\r\n";
	for (int round = 0; round < 3; round++) {
		const struct content_rules *cr = round == 1 ? &b : &a;
		struct content_scan *s = content_scan_begin(cr, &cw);
		assert_non_null(s);
		content_scan_data(s, m, strlen(m), true);
		struct content_verdict v;
		hits[0] = '\0';
		content_scan_end(s, "", NULL, 0, &v, on_hit, NULL);
		content_scan_free(s);
		assert_false(v.failed);
		CHECK_STR("hits", hits, round == 1 ? "b1,b2,b3" : "a");
	}
	/* A scan under way while another one grows the scratch (a new
	 * worker's first message on a reloaded, larger database). */
	struct content_worker fresh = {0};
	struct content_scan *old = content_scan_begin(&a, &fresh);
	content_scan_data(old, m, 20, true);
	struct content_scan *grow = content_scan_begin(&b, &fresh);
	content_scan_data(grow, m, strlen(m), true);
	content_scan_data(old, m + 20, strlen(m) - 20, true);
	struct content_verdict v;
	hits[0] = '\0';
	content_scan_end(old, "", NULL, 0, &v, on_hit, NULL);
	assert_false(v.failed);
	CHECK_STR("old scan", hits, "a");
	hits[0] = '\0';
	content_scan_end(grow, "", NULL, 0, &v, on_hit, NULL);
	CHECK_STR("new scan", hits, "b1,b2,b3");
	content_scan_free(old);
	content_scan_free(grow);
	content_worker_free(&fresh);
	/* A scan abandoned midway frees its streams. */
	struct content_scan *s = content_scan_begin(&b, &cw);
	content_scan_data(s, m, 10, true);
	content_scan_free(s);
	content_worker_free(&cw);
	content_rules_free(&a);
	content_rules_free(&b);
}

/* Each piece Hyperscan is given ends right at an unreadable page. The
 * AVX512VBMI build of Hyperscan 5.4.0 (Debian's) loads 32 bytes where
 * fewer are left (vectorscan issue 322): a piece that ends at the end of
 * a mapping must not reach Hyperscan as it lies. Where the CPU lacks
 * AVX512VBMI this passes either way. */
static char *guard_base;
static size_t guard_page;

static const char *at_guard(const char *p, size_t n)
{
	char *end = guard_base + guard_page;
	memcpy(end - n, p, n);
	return end - n;
}

static void test_piece_at_unmapped_page(void **state)
{
	guard_page = (size_t)sysconf(_SC_PAGESIZE);
	guard_base = mmap(NULL, 2 * guard_page, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(guard_base != MAP_FAILED);
	assert_int_equal(mprotect(guard_base + guard_page, guard_page, PROT_NONE), 0);
	struct content_rules cr;
	build_rules(&cr);
	struct content_worker cw = {0};
	static const char text[] =
		"Content-Type: multipart/mixed; boundary=a TVqQAAMAAAAEAAAA and 4111111111111111 "
		"VAt hat pat sat fat rat mat ca, more words in a long line of a plain body that "
		"goes on past the width of one vector load, twice over, and then a little more";
	unsigned cards = 0;
	/* A body of one line of each length, each line its own piece (whole
	 * lines reach Hyperscan in place). */
	for (size_t len = 1; len + 2 <= sizeof(text); len++) {
		struct content_scan *s = content_scan_begin(&cr, &cw);
		assert_non_null(s);
		static const char head[] = "Subject: x\r\nX-Mailer: z\r\n\r\n";
		content_scan_data(s, at_guard(head, sizeof(head) - 1), sizeof(head) - 1, true);
		char line[sizeof(text) + 2];
		memcpy(line, text, len);
		memcpy(line + len, "\r\n", 2);
		content_scan_data(s, at_guard(line, len + 2), len + 2, true);
		/* The sender or the recipient at the page's end, in turn. */
		const char *from = len % 2 ? at_guard("bad@corp", 9) : "bad@corp";
		struct smtp_rcpt rc[1] = {
			{.addr = (char *)(len % 2 ? "audit@corp" : at_guard("audit@corp", 11))}};
		struct content_verdict v;
		hits[0] = '\0';
		content_scan_end(s, from, rc, 1, &v, on_hit, NULL);
		CHECK_INT("failed", v.failed, 0);
		/* The card ends at offset 79: a line shorter has none. */
		CHECK_INT("card", content_scan_hit(s, 2), len >= 79);
		cards += content_scan_hit(s, 2);
		CHECK_INT("hdrs", content_scan_hit(s, 5), 1);
		CHECK_INT("from", content_scan_hit(s, 6), 1);
		CHECK_INT("rcpt", content_scan_hit(s, 7), 1);
		content_scan_free(s);
	}
	assert_true(cards > 0);
	content_worker_free(&cw);
	content_rules_free(&cr);
	munmap(guard_base, 2 * guard_page);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hits),
		cmocka_unit_test(test_compile_error),
		cmocka_unit_test(test_two_databases),
		cmocka_unit_test(test_piece_at_unmapped_page),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
