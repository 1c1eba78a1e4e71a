/* Micro-benchmark of content rules: Hyperscan block mode against streaming
 * mode on the same bytes, and the whole per-message path of engine/content.c
 * (MIME walk, unstuffing, decoding, four streams) as session.c drives it:
 * 16 KiB pieces, as receive buffers arrive. Block mode needs the message in
 * one buffer, so its figure includes gathering the pieces (a copy), which
 * is what it would cost in the relay. Prints one JSON line per case. */
#include <hs/hs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "content.h"
#include "smtp_server.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *const patterns[] = {
	"TVqQAAMAAAAEAAAA", "\\b4[0-9]{12}(?:[0-9]{3})?\\b", "(?i)confidential",
	"@legal\\.corp\\.example", "(?i)project nightjar", "\\b[0-9]{3}-[0-9]{2}-[0-9]{4}\\b",
	"(?i)password\\s*[:=]", "BEGIN (?:RSA |EC )?PRIVATE KEY",
};
#define NPAT (sizeof(patterns) / sizeof(patterns[0]))
#define PIECE 16384

static int on_match(unsigned id, unsigned long long from, unsigned long long to,
		    unsigned flags, void *ctx)
{
	(*(unsigned *)ctx)++;
	return 0;
}

/* A text message of about size bytes, or one with a base64 attachment of
 * that size; wire form (CRLF, dot-stuffed). */
static char *make_message(size_t size, int attach, size_t *len)
{
	char *m = malloc(size * 2 + 4096);
	size_t n = (size_t)sprintf(m, "Subject: quarterly report\r\nFrom: <app@corp.example>\r\n"
				      "To: <ops@corp.example>\r\nMIME-Version: 1.0\r\n");
	static const char words[] = "the quick brown fox jumps over the lazy dog 0123 ";
	if (!attach) {
		n += (size_t)sprintf(m + n, "\r\n");
		while (n < size) {
			for (size_t k = 0; k < 72; k++, n++)
				m[n] = words[(n * 7 + k) % (sizeof(words) - 1)];
			m[n++] = '\r';
			m[n++] = '\n';
		}
	} else {
		n += (size_t)sprintf(m + n, "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
					    "--b\r\n\r\nsee attached\r\n--b\r\n"
					    "Content-Transfer-Encoding: base64\r\n\r\n");
		static const char b64[] =
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
		unsigned x = 12345;
		while (n < size) {
			for (int k = 0; k < 76; k++) {
				x = x * 1103515245 + 12345;
				m[n++] = b64[(x >> 16) & 63];
			}
			m[n++] = '\r';
			m[n++] = '\n';
		}
		n += (size_t)sprintf(m + n, "--b--\r\n");
	}
	*len = n;
	return m;
}

static void bench_modes(const char *name, const char *msg, size_t len, int rounds)
{
	const char *pat[NPAT];
	unsigned flags[NPAT], ids[NPAT];
	for (unsigned i = 0; i < NPAT; i++) {
		pat[i] = patterns[i];
		flags[i] = HS_FLAG_SINGLEMATCH | HS_FLAG_MULTILINE;
		ids[i] = i;
	}
	hs_database_t *bdb, *sdb;
	hs_compile_error_t *ce;
	if (hs_compile_multi(pat, flags, ids, NPAT, HS_MODE_BLOCK, NULL, &bdb, &ce) ||
	    hs_compile_multi(pat, flags, ids, NPAT, HS_MODE_STREAM, NULL, &sdb, &ce)) {
		fprintf(stderr, "compile: %s\n", ce->message);
		exit(1);
	}
	hs_scratch_t *scr = NULL;
	hs_alloc_scratch(bdb, &scr);
	hs_alloc_scratch(sdb, &scr);
	size_t stream_size = 0;
	hs_stream_size(sdb, &stream_size);
	/* Room behind the end: Hyperscan 5.4.0 with AVX512VBMI reads past it
	 * (see scan() in engine/content.c). */
	char *gather = malloc(len + 64);
	unsigned hits = 0;
	double t0 = now();
	for (int r = 0; r < rounds; r++) {
		/* Block: the pieces gathered into one buffer, then one scan. */
		for (size_t o = 0; o < len; o += PIECE)
			memcpy(gather + o, msg + o, len - o < PIECE ? len - o : PIECE);
		hs_scan(bdb, gather, (unsigned)len, 0, scr, on_match, &hits);
	}
	double tb = now() - t0;
	t0 = now();
	for (int r = 0; r < rounds; r++) {
		hs_stream_t *st;
		hs_open_stream(sdb, 0, &st);
		for (size_t o = 0; o < len; o += PIECE)
			hs_scan_stream(st, msg + o, (unsigned)(len - o < PIECE ? len - o : PIECE), 0, scr,
				       on_match, &hits);
		hs_close_stream(st, scr, on_match, &hits);
	}
	double ts = now() - t0;
	double mb = (double)len * rounds / 1e6;
	printf("{\"case\": \"%s\", \"bytes\": %zu, \"rules\": %zu, \"block_MBps\": %.0f, "
	       "\"stream_MBps\": %.0f, \"block_us_per_msg\": %.1f, \"stream_us_per_msg\": %.1f, "
	       "\"stream_state_bytes\": %zu}\n",
	       name, len, NPAT, mb / tb, mb / ts, tb * 1e6 / rounds, ts * 1e6 / rounds, stream_size);
	free(gather);
	hs_free_scratch(scr);
	hs_free_database(bdb);
	hs_free_database(sdb);
}

static void bench_engine(const char *name, const char *msg, size_t len, int rounds)
{
	struct content_rules cr = {0};
	cr.n = NPAT;
	cr.rule = calloc(NPAT, sizeof(*cr.rule));
	for (unsigned i = 0; i < NPAT; i++) {
		cr.rule[i].name = strdup("r");
		cr.rule[i].pattern = strdup(patterns[i]);
		cr.rule[i].where = i == 2 ? CONTENT_HEADER : i == 3 ? CONTENT_RECIPIENT : CONTENT_BODY;
		cr.rule[i].field = i == 2 ? strdup("Subject") : NULL;
		cr.rule[i].action = CONTENT_HOLD;
	}
	unsigned bad;
	char err[256];
	if (!content_compile(&cr, &bad, err, sizeof(err))) {
		fprintf(stderr, "compile: %s\n", err);
		exit(1);
	}
	cr.gen = 1;
	struct content_worker cw = {0};
	struct smtp_rcpt rc[1] = {{.addr = (char *)"ops@corp.example"}};
	double t0 = now();
	for (int r = 0; r < rounds; r++) {
		struct content_scan *s = content_scan_begin(&cr, &cw);
		for (size_t o = 0; o < len; o += PIECE)
			content_scan_data(s, msg + o, len - o < PIECE ? len - o : PIECE, true);
		struct content_verdict v;
		content_scan_end(s, "app@corp.example", rc, 1, &v, NULL, NULL);
		content_scan_free(s);
	}
	double t = now() - t0;
	printf("{\"case\": \"%s (engine: MIME walk, decoding, all streams)\", \"bytes\": %zu, "
	       "\"MBps\": %.0f, \"us_per_msg\": %.1f}\n",
	       name, len, (double)len * rounds / 1e6 / t, t * 1e6 / rounds);
	content_worker_free(&cw);
	content_rules_free(&cr);
}

int main(int argc, char **argv)
{
	int scale = argc > 1 ? atoi(argv[1]) : 1;
	static const struct {
		const char *name;
		size_t size;
		int attach, rounds;
	} cases[] = {
		{"text 4 KiB", 4096, 0, 20000}, {"text 100 KiB", 102400, 0, 1000},
		{"base64 attachment 1 MiB", 1 << 20, 1, 100},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len;
		char *m = make_message(cases[i].size, cases[i].attach, &len);
		bench_modes(cases[i].name, m, len, cases[i].rounds * scale);
		bench_engine(cases[i].name, m, len, cases[i].rounds * scale);
		free(m);
	}
	return 0;
}
