/* track (see track.h): one pass over the log files a query's time range
 * needs, oldest first. A line with an id= either belongs to a message
 * already matched or is tried against the filters; a match starts a
 * message, whose later lines then all belong to it. Lines of other
 * messages are dropped at once, so memory follows the answer, not the log. */
#include "track.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "log.h"
#include "logfmt.h"

/* Workers stamp their lines when they make them and write them a loop
 * turn later: a file's lines are in time order only to within this. */
#define SKEW_MS 2000
#define FIELDS_MAX 48
#define LINES_PER_MESSAGE 256
#define STORED_BYTES_MAX (16u << 20)
#define SEEK_STEP (64 * 1024)

struct tline {
	int64_t ts;
	char *text;               /* the line, from its ts= on */
};

struct tmsg {
	char id[32];
	struct tline *lines;
	unsigned n, cap;
	unsigned dropped;         /* lines past LINES_PER_MESSAGE */
};

struct track {
	const struct track_query *q;
	struct tmsg *msgs;
	unsigned n;
	int *slots;               /* open addressing on id: index into msgs, -1 */
	unsigned nslots;
	size_t stored;
	const char *truncated;    /* NULL, "limit", "deadline", "size" */
	uint64_t deadline_ms;
	unsigned long lines_read;
	bool stop;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the query ------------------------------------------------------------- */

/* s without one pair of <> around it. */
static void strip_angles(char *dst, size_t cap, const char *s, size_t n)
{
	if (n >= 2 && s[0] == '<' && s[n - 1] == '>') {
		s++;
		n -= 2;
	}
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, s, n);
	dst[n] = '\0';
}

bool track_parse(const char *args, int64_t now_ms, struct track_query *q, char *err,
		 size_t cap)
{
	memset(q, 0, sizeof(*q));
	q->since_ms = INT64_MIN;
	q->until_ms = INT64_MAX;
	q->limit = TRACK_LIMIT_DEFAULT;
	const char *p = args;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *end = strchr(p, ' ');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', n);
		if (n == 4 && memcmp(p, "json", 4) == 0) {
			q->json = true;
		} else if (!eq) {
			snprintf(err, cap, "track: \"%.*s\" is not key=value (id= sender= rcpt= message_id= since= until= limit=)",
				 (int)(n > 100 ? 100 : n), p);
			return false;
		} else {
			size_t kl = (size_t)(eq - p);
			const char *v = eq + 1;
			size_t vl = n - kl - 1;
			if (kl == 2 && memcmp(p, "id", 2) == 0 && vl && vl < sizeof(q->id)) {
				memcpy(q->id, v, vl);
				q->has_id = true;
			} else if (kl == 6 && memcmp(p, "sender", 6) == 0) {
				strip_angles(q->sender, sizeof(q->sender), v, vl);
				q->has_sender = true;
			} else if (kl == 4 && memcmp(p, "rcpt", 4) == 0 && vl) {
				strip_angles(q->rcpt, sizeof(q->rcpt), v, vl);
				q->has_rcpt = true;
			} else if (kl == 10 && memcmp(p, "message_id", 10) == 0 && vl) {
				strip_angles(q->message_id, sizeof(q->message_id), v, vl);
				q->has_message_id = true;
			} else if ((kl == 5 && memcmp(p, "since", 5) == 0) ||
				   (kl == 5 && memcmp(p, "until", 5) == 0)) {
				int64_t *t = p[0] == 's' ? &q->since_ms : &q->until_ms;
				if (!logfmt_time(v, vl, now_ms, t)) {
					snprintf(err, cap, "track: %.5s=%.*s: not a time (2026-12-02T13:54:19Z, 2026-12-02 13:54, 2026-12-02, or an age: 30s 15m 1h 2d 1w)",
						 p, (int)(vl > 60 ? 60 : vl), v);
					return false;
				}
			} else if (kl == 5 && memcmp(p, "limit", 5) == 0) {
				char num[16];
				snprintf(num, sizeof(num), "%.*s", (int)(vl < 15 ? vl : 15), v);
				char *e;
				long l = strtol(num, &e, 10);
				if (!vl || *e || l < 1 || l > TRACK_LIMIT_MAX) {
					snprintf(err, cap, "track: limit=%s: a number from 1 to %d", num,
						 TRACK_LIMIT_MAX);
					return false;
				}
				q->limit = (unsigned)l;
			} else {
				snprintf(err, cap, "track: unknown or empty filter \"%.*s\" (id= sender= rcpt= message_id= since= until= limit=)",
					 (int)(n > 100 ? 100 : n), p);
				return false;
			}
		}
		p += n;
	}
	if (q->since_ms > q->until_ms) {
		snprintf(err, cap, "track: since= is later than until=");
		return false;
	}
	return true;
}

/* ---- matching ---------------------------------------------------------------- */

static bool field_is(const struct logfmt_field *f, const char *want)
{
	char v[600], s[600];
	logfmt_value(f, v, sizeof(v));
	strip_angles(s, sizeof(s), v, strlen(v));
	return strcasecmp(s, want) == 0;
}

static bool address_matches(const char *addr, const char *want)
{
	if (want[0] == '@') {
		const char *at = strrchr(addr, '@');
		return at && strcasecmp(at, want) == 0;
	}
	return strcasecmp(addr, want) == 0;
}

/* to= is one address, or the receive line's "<a>,<b>" list. */
static bool rcpt_matches(const struct logfmt_field *f, const char *want)
{
	char v[1500];
	logfmt_value(f, v, sizeof(v));
	for (char *save = NULL, *t = strtok_r(v, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		char a[600];
		strip_angles(a, sizeof(a), t, strlen(t));
		if (address_matches(a, want))
			return true;
	}
	return false;
}

/* Lines whose from= and to= are the message's own envelope: a dsn line's
 * to= is the notice's recipient, an admin line has neither. */
static bool envelope_event(const struct logfmt_field *f, int n)
{
	static const char *const events[] = {"receive", "deliver", "defer", "bounce", "expire"};
	const struct logfmt_field *e = logfmt_find(f, n, "event");
	for (size_t i = 0; e && i < sizeof(events) / sizeof(events[0]); i++)
		if (e->vlen == strlen(events[i]) && memcmp(e->val, events[i], e->vlen) == 0)
			return true;
	return false;
}

static bool line_matches(const struct track_query *q, const struct logfmt_field *f, int n)
{
	const struct logfmt_field *x;
	if ((q->has_sender || q->has_rcpt || q->has_message_id) && !envelope_event(f, n))
		return false;
	if (q->has_sender && (!(x = logfmt_find(f, n, "from")) || !field_is(x, q->sender)))
		return false;
	if (q->has_rcpt && (!(x = logfmt_find(f, n, "to")) || !rcpt_matches(x, q->rcpt)))
		return false;
	if (q->has_message_id &&
	    (!(x = logfmt_find(f, n, "message_id")) || !field_is(x, q->message_id)))
		return false;
	return true;
}

static unsigned id_hash(const char *id)
{
	unsigned h = 2166136261u;
	for (; *id; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return h;
}

static int msg_find(struct track *t, const char *id)
{
	for (unsigned i = id_hash(id) & (t->nslots - 1);; i = (i + 1) & (t->nslots - 1)) {
		if (t->slots[i] < 0)
			return -1 - (int)i; /* where it would go */
		if (strcmp(t->msgs[t->slots[i]].id, id) == 0)
			return t->slots[i];
	}
}

static void msg_add_line(struct track *t, struct tmsg *m, int64_t ts, const char *line,
			 size_t len)
{
	if (m->n >= LINES_PER_MESSAGE) {
		m->dropped++;
		return;
	}
	if (t->stored + len > STORED_BYTES_MAX) {
		m->dropped++;
		t->truncated = "size";
		return;
	}
	if (m->n == m->cap) {
		unsigned cap = m->cap ? m->cap * 2 : 8;
		struct tline *l = realloc(m->lines, cap * sizeof(*l));
		if (!l) {
			m->dropped++;
			return;
		}
		m->lines = l;
		m->cap = cap;
	}
	char *s = strndup(line, len);
	if (!s) {
		m->dropped++;
		return;
	}
	m->lines[m->n++] = (struct tline){.ts = ts, .text = s};
	t->stored += len;
}

static void take_line(struct track *t, const char *line, size_t len)
{
	const struct track_query *q = t->q;
	/* Most lines are about connections: no id, nothing to parse. */
	if (!memmem(line, len, " id=", 4))
		return;
	int64_t ts;
	if (!logfmt_line_time(line, len, &ts) || ts < q->since_ms || ts > q->until_ms)
		return;
	struct logfmt_field f[FIELDS_MAX];
	size_t at;
	int n = logfmt_parse(line, len, f, FIELDS_MAX, &at);
	if (n < 0)
		return;
	const struct logfmt_field *idf = logfmt_find(f, n, "id");
	if (!idf || !logfmt_find(f, n, "event") || idf->vlen == 0 || idf->vlen >= 32)
		return;
	char id[32];
	logfmt_value(idf, id, sizeof(id));
	int k = msg_find(t, id);
	if (k < 0) {
		if (q->has_id && strcasecmp(id, q->id) != 0)
			return;
		if (!line_matches(q, f, n))
			return;
		if (t->n >= q->limit) {
			t->truncated = "limit";
			return;
		}
		unsigned slot = (unsigned)(-1 - k);
		struct tmsg *m = &t->msgs[t->n];
		memset(m, 0, sizeof(*m));
		snprintf(m->id, sizeof(m->id), "%s", id);
		t->slots[slot] = (int)t->n;
		k = (int)t->n++;
	}
	msg_add_line(t, &t->msgs[k], ts, line, len);
}

/* ---- files ------------------------------------------------------------------ */

/* The ts= of the first line at or after off (off inside a line: the next
 * one). false when there is none to read. */
static bool time_at(FILE *f, long off, char **buf, size_t *cap, int64_t *ts)
{
	if (fseek(f, off, SEEK_SET) != 0)
		return false;
	ssize_t n;
	if (off > 0 && getline(buf, cap, f) < 0) /* the rest of a line cut in two */
		return false;
	while ((n = getline(buf, cap, f)) > 0)
		if (logfmt_line_time(*buf, (size_t)n, ts))
			return true;
	return false;
}

/* Where to start reading for since_ms: a binary search over offsets, by
 * the first whole line's time, to within SEEK_STEP bytes. */
static long start_offset(FILE *f, long size, int64_t since_ms, char **buf, size_t *cap)
{
	long lo = 0, hi = size;
	while (hi - lo > SEEK_STEP) {
		long mid = lo + (hi - lo) / 2;
		int64_t ts;
		if (time_at(f, mid, buf, cap, &ts) && ts < since_ms - SKEW_MS)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

struct tfile {
	char path[4200];
	bool compressed;
	bool missing;
	bool read;
	const char *why;          /* why it was not read */
};

static void read_file(struct track *t, struct tfile *tf, char **buf, size_t *cap)
{
	const struct track_query *q = t->q;
	FILE *f = fopen(tf->path, "re");
	if (!f) {
		tf->why = errno == EACCES ? "permission denied" : "cannot open";
		return;
	}
	struct stat sb;
	if (fstat(fileno(f), &sb) != 0) {
		fclose(f);
		tf->why = "cannot stat";
		return;
	}
	int64_t last_ms = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
	int64_t first_ms;
	if (!time_at(f, 0, buf, cap, &first_ms)) {
		fclose(f);
		tf->why = "no log lines";
		return;
	}
	bool before = q->since_ms != INT64_MIN && last_ms < q->since_ms - SKEW_MS;
	bool after = q->until_ms != INT64_MAX && first_ms > q->until_ms + SKEW_MS;
	if (before || after) {
		fclose(f);
		tf->why = "outside the time range";
		return;
	}
	long start = q->since_ms == INT64_MIN ? 0
		: start_offset(f, (long)sb.st_size, q->since_ms, buf, cap);
	if (fseek(f, start, SEEK_SET) != 0) {
		fclose(f);
		tf->why = "cannot seek";
		return;
	}
	tf->read = true;
	ssize_t n;
	if (start > 0 && getline(buf, cap, f) < 0) {
		fclose(f);
		return;
	}
	while (!t->stop && (n = getline(buf, cap, f)) > 0) {
		if ((*buf)[n - 1] == '\n')
			n--;
		if ((++t->lines_read & 1023) == 0 && mono_ms() >= t->deadline_ms) {
			t->truncated = "deadline";
			t->stop = true;
			break;
		}
		if (q->until_ms != INT64_MAX) {
			int64_t ts;
			if (logfmt_line_time(*buf, (size_t)n, &ts) && ts > q->until_ms + SKEW_MS)
				break; /* the rest of the file is later still */
		}
		take_line(t, *buf, (size_t)n);
	}
	fclose(f);
}

/* ---- the answer ---------------------------------------------------------------- */

enum rstate { R_NONE, R_DEFERRED, R_DELIVERED, R_BOUNCED };

struct summary {
	char received[40];
	char from[600], to[1500], connector[200], client[80], size[24], message_id[300];
	char tls[40], cipher[80], auth[300];
	const char *status;
	unsigned attempts;
};

static void value_of(const struct logfmt_field *f, int n, const char *key, char *dst,
		     size_t cap)
{
	const struct logfmt_field *x = logfmt_find(f, n, key);
	if (x)
		logfmt_value(x, dst, cap);
	else
		dst[0] = '\0';
}

/* The receive line's facts and, from every later line, the outcome. */
static void summarize(const struct tmsg *m, struct summary *s)
{
	memset(s, 0, sizeof(*s));
	struct {
		char addr[520];
		enum rstate st;
	} r[64];
	unsigned nr = 0;
	bool held = false, deleted = false, admin_bounced = false;
	for (unsigned i = 0; i < m->n; i++) {
		struct logfmt_field f[FIELDS_MAX];
		size_t at;
		int n = logfmt_parse(m->lines[i].text, strlen(m->lines[i].text), f, FIELDS_MAX, &at);
		if (n < 0)
			continue;
		char ev[32], to[600], action[32];
		value_of(f, n, "event", ev, sizeof(ev));
		if (strcmp(ev, "receive") == 0) {
			value_of(f, n, "ts", s->received, sizeof(s->received));
			value_of(f, n, "from", s->from, sizeof(s->from));
			value_of(f, n, "to", s->to, sizeof(s->to));
			value_of(f, n, "connector", s->connector, sizeof(s->connector));
			value_of(f, n, "client", s->client, sizeof(s->client));
			value_of(f, n, "size", s->size, sizeof(s->size));
			value_of(f, n, "message_id", s->message_id, sizeof(s->message_id));
			value_of(f, n, "tls", s->tls, sizeof(s->tls));
			value_of(f, n, "cipher", s->cipher, sizeof(s->cipher));
			value_of(f, n, "auth", s->auth, sizeof(s->auth));
			continue;
		}
		if (strcmp(ev, "admin") == 0) {
			value_of(f, n, "action", action, sizeof(action));
			if (strcmp(action, "hold") == 0)
				held = true;
			else if (strcmp(action, "release") == 0 || strcmp(action, "retry") == 0)
				held = false;
			else if (strcmp(action, "delete") == 0)
				deleted = true;
			else if (strcmp(action, "bounce") == 0)
				admin_bounced = true;
			continue;
		}
		enum rstate st = strcmp(ev, "deliver") == 0 ? R_DELIVERED
			: strcmp(ev, "defer") == 0 ? R_DEFERRED
			: strcmp(ev, "bounce") == 0 || strcmp(ev, "expire") == 0 ? R_BOUNCED
			: R_NONE;
		if (st == R_NONE)
			continue;
		char att[16];
		value_of(f, n, "attempts", att, sizeof(att));
		unsigned a = (unsigned)strtoul(att, NULL, 10);
		if (a > s->attempts && strcmp(ev, "expire") != 0)
			s->attempts = a;
		value_of(f, n, "to", to, sizeof(to));
		unsigned k = 0;
		while (k < nr && strcasecmp(r[k].addr, to) != 0)
			k++;
		if (k == nr && nr < 64)
			snprintf(r[nr++].addr, sizeof(r[0].addr), "%.519s", to);
		if (k < nr)
			r[k].st = st;
	}
	unsigned delivered = 0, bounced = 0, deferred = 0;
	for (unsigned k = 0; k < nr; k++) {
		delivered += r[k].st == R_DELIVERED;
		bounced += r[k].st == R_BOUNCED;
		deferred += r[k].st == R_DEFERRED;
	}
	s->status = deleted ? "deleted"
		: held ? "held"
		: admin_bounced ? "bounced"
		: deferred ? "deferred"
		: nr == 0 ? "received"
		: bounced == 0 ? "delivered"
		: delivered == 0 ? "bounced"
		: "partially delivered";
}

/* The length of the valid UTF-8 sequence at s, 0 when there is none. */
static size_t utf8_len(const unsigned char *s)
{
	unsigned char c = s[0];
	size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
		 : (c & 0xf8) == 0xf0 ? 4 : 0;
	if (n == 2 && c < 0xc2)
		return 0; /* overlong */
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if (n == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0)))
		return 0; /* overlong, or a surrogate */
	if (n == 4 && ((c == 0xf0 && s[1] < 0x90) || c > 0xf4 || (c == 0xf4 && s[1] >= 0x90)))
		return 0;
	return n;
}

/* A JSON string of a value from the log: what was 8-bit there and is not
 * UTF-8 becomes U+FFFD, so the answer is always valid JSON text. */
static void json_value(FILE *out, const char *v)
{
	fputc('"', out);
	for (const unsigned char *s = (const unsigned char *)v; *s;) {
		size_t n = utf8_len(s);
		if (n == 0) {
			fputs("\\ufffd", out);
			s++;
		} else if (n > 1) {
			fwrite(s, 1, n, out);
			s += n;
		} else {
			if (*s == '"' || *s == '\\')
				fprintf(out, "\\%c", *s);
			else if (*s < 0x20 || *s == 0x7f)
				fprintf(out, "\\u%04x", *s);
			else
				fputc(*s, out);
			s++;
		}
	}
	fputc('"', out);
}

static void json_kv(FILE *out, bool *first, const char *k, const char *v)
{
	if (!*v)
		return;
	fprintf(out, "%s\"%s\":", *first ? "" : ",", k);
	json_value(out, v);
	*first = false;
}

static void print_json_message(FILE *out, const struct tmsg *m)
{
	struct summary s;
	summarize(m, &s);
	bool first = true;
	fputc('{', out);
	json_kv(out, &first, "id", m->id);
	json_kv(out, &first, "status", s.status);
	json_kv(out, &first, "received", s.received);
	json_kv(out, &first, "from", s.from);
	if (s.received[0]) {
		/* to= of the receive line: "<a>,<b>" */
		fprintf(out, ",\"to\":[");
		char to[sizeof(s.to)];
		snprintf(to, sizeof(to), "%s", s.to);
		unsigned k = 0;
		for (char *save = NULL, *t = strtok_r(to, ",", &save); t;
		     t = strtok_r(NULL, ",", &save)) {
			char a[600];
			strip_angles(a, sizeof(a), t, strlen(t));
			fprintf(out, "%s", k++ ? "," : "");
			json_value(out, a);
		}
		fputc(']', out);
	}
	json_kv(out, &first, "connector", s.connector);
	json_kv(out, &first, "client", s.client);
	json_kv(out, &first, "message_id", s.message_id);
	json_kv(out, &first, "tls", s.tls);
	json_kv(out, &first, "cipher", s.cipher);
	json_kv(out, &first, "auth", s.auth);
	if (s.size[0])
		fprintf(out, ",\"size\":%llu", strtoull(s.size, NULL, 10));
	fprintf(out, ",\"attempts\":%u,\"events\":[", s.attempts);
	for (unsigned i = 0; i < m->n; i++) {
		struct logfmt_field f[FIELDS_MAX];
		size_t at;
		int n = logfmt_parse(m->lines[i].text, strlen(m->lines[i].text), f, FIELDS_MAX, &at);
		fprintf(out, "%s{", i ? "," : "");
		bool ef = true;
		for (int k = 0; k < n; k++) {
			char key[64], v[4096];
			snprintf(key, sizeof(key), "%.*s", (int)f[k].klen, f[k].key);
			if (strcmp(key, "level") == 0)
				continue;
			logfmt_value(&f[k], v, sizeof(v));
			fprintf(out, "%s", ef ? "" : ",");
			json_value(out, key);
			fputc(':', out);
			json_value(out, v);
			ef = false;
		}
		fputc('}', out);
	}
	fprintf(out, "]");
	if (m->dropped)
		fprintf(out, ",\"events_not_shown\":%u", m->dropped);
	fputc('}', out);
}

static void print_text_message(FILE *out, const struct tmsg *m)
{
	struct summary s;
	summarize(m, &s);
	fprintf(out, "message %s status=%s", m->id, s.status);
	if (s.message_id[0]) {
		char q[LOG_QUOTE_CAP(300)];
		fprintf(out, " message_id=%s", log_quote(q, sizeof(q), s.message_id));
	}
	fprintf(out, " attempts=%u\n", s.attempts);
	for (unsigned i = 0; i < m->n; i++) {
		const char *l = m->lines[i].text;
		/* ts, then the rest without level= */
		const char *sp = strchr(l, ' ');
		size_t tsl = sp ? (size_t)(sp - l) : strlen(l);
		const char *rest = sp ? sp + 1 : "";
		if (strncmp(rest, "level=", 6) == 0) {
			const char *sp2 = strchr(rest, ' ');
			rest = sp2 ? sp2 + 1 : "";
		}
		fprintf(out, "  %.*s %s\n", (int)(tsl > 3 ? tsl - 3 : 0), l + 3, rest);
	}
	if (m->dropped)
		fprintf(out, "  (%u more events not shown)\n", m->dropped);
}

int track_run(const char *log_path, const struct track_query *q, uint64_t budget_ms,
	      FILE *out)
{
	if (!log_path) {
		fprintf(out, "error: track reads the message log from server.log_file, and none is set: the log goes to stderr (set server.log_file)\n");
		return -1;
	}
	struct tfile *files = calloc(TRACK_ROTATIONS_MAX + 1, sizeof(*files));
	struct track t = {.q = q, .deadline_ms = mono_ms() + budget_ms};
	t.nslots = 1;
	while (t.nslots < 2 * q->limit + 2)
		t.nslots *= 2;
	t.slots = malloc(t.nslots * sizeof(*t.slots));
	t.msgs = calloc(q->limit, sizeof(*t.msgs));
	if (!files || !t.slots || !t.msgs) {
		free(files);
		free(t.slots);
		free(t.msgs);
		fprintf(out, "error: track: out of memory\n");
		return -1;
	}
	for (unsigned i = 0; i < t.nslots; i++)
		t.slots[i] = -1;
	/* The rotations: file.1 is the newest of them; the first gap ends
	 * the list. */
	unsigned nf = 0;
	snprintf(files[nf++].path, sizeof(files[0].path), "%s", log_path);
	for (unsigned k = 1; k <= TRACK_ROTATIONS_MAX; k++) {
		struct tfile *tf = &files[nf];
		struct stat sb;
		snprintf(tf->path, sizeof(tf->path), "%s.%u", log_path, k);
		if (stat(tf->path, &sb) != 0) {
			snprintf(tf->path, sizeof(tf->path), "%s.%u.gz", log_path, k);
			if (stat(tf->path, &sb) != 0)
				break;
			tf->compressed = true;
			tf->why = "compressed (not read: use logrotate's delaycompress or nocompress)";
		}
		nf++;
	}
	struct stat sb;
	if (stat(log_path, &sb) != 0) {
		files[0].missing = true;
		files[0].why = "missing";
	}
	char *buf = NULL;
	size_t cap = 0;
	for (unsigned k = nf; k-- > 0 && !t.stop;)
		if (!files[k].compressed && !files[k].missing)
			read_file(&t, &files[k], &buf, &cap);
	free(buf);
	if (q->json) {
		fprintf(out, "{\"messages\":[");
		for (unsigned i = 0; i < t.n; i++) {
			fprintf(out, "%s", i ? "," : "");
			print_json_message(out, &t.msgs[i]);
		}
		fprintf(out, "],\"count\":%u,\"truncated\":", t.n);
		if (t.truncated)
			json_write_string(out, t.truncated);
		else
			fprintf(out, "null");
		fprintf(out, ",\"lines_read\":%lu,\"files\":[", t.lines_read);
		for (unsigned k = nf; k-- > 0;) {
			fprintf(out, "{\"path\":");
			json_value(out, files[k].path);
			fprintf(out, ",\"read\":%s", files[k].read ? "true" : "false");
			if (!files[k].read && files[k].why) {
				fprintf(out, ",\"skipped\":");
				json_write_string(out, files[k].why);
			}
			fprintf(out, "}%s", k ? "," : "");
		}
		fprintf(out, "]}\n");
	} else {
		for (unsigned i = 0; i < t.n; i++)
			print_text_message(out, &t.msgs[i]);
		fprintf(out, "%u message%s", t.n, t.n == 1 ? "" : "s");
		if (t.truncated)
			fprintf(out, " (truncated: %s)", t.truncated);
		fprintf(out, "; files:");
		for (unsigned k = nf; k-- > 0;)
			fprintf(out, " %s%s%s%s", files[k].path, files[k].read ? "" : " (skipped: ",
				files[k].read ? "" : files[k].why ? files[k].why : "?",
				files[k].read ? "" : ")");
		fprintf(out, "\n");
	}
	for (unsigned i = 0; i < t.n; i++) {
		for (unsigned k = 0; k < t.msgs[i].n; k++)
			free(t.msgs[i].lines[k].text);
		free(t.msgs[i].lines);
	}
	free(t.msgs);
	free(t.slots);
	free(files);
	return 0;
}
