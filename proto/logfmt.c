/* logfmt lines and times read back (see logfmt.h). The writer is
 * engine/log.c: a value is bare when it is printable ASCII without
 * '"', '\\', '=' or space, else quoted with those escapes. */
#include "logfmt.h"

#include <string.h>

#include "smtp_path.h"

static bool key_byte(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-' || c == '.';
}

int logfmt_parse(const char *line, size_t len, struct logfmt_field *f, unsigned max,
		 size_t *err_at)
{
	size_t i = 0;
	int n = 0;
	for (;;) {
		while (i < len && line[i] == ' ')
			i++;
		if (i >= len)
			return n;
		size_t k = i;
		while (i < len && key_byte((unsigned char)line[i]))
			i++;
		if (i == k || i >= len || line[i] != '=') {
			*err_at = i;
			return -1;
		}
		struct logfmt_field fl = {.key = line + k, .klen = i - k};
		i++; /* '=' */
		if (i < len && line[i] == '"') {
			size_t v = ++i;
			while (i < len && line[i] != '"') {
				if (line[i] == '\\') {
					if (i + 1 >= len) {
						*err_at = i;
						return -1;
					}
					i++;
				}
				i++;
			}
			if (i >= len) {
				*err_at = len;
				return -1;
			}
			fl.val = line + v;
			fl.vlen = i - v;
			fl.quoted = true;
			i++; /* closing quote */
			if (i < len && line[i] != ' ') {
				*err_at = i;
				return -1;
			}
		} else {
			size_t v = i;
			while (i < len && line[i] != ' ') {
				unsigned char c = (unsigned char)line[i];
				if (c == '"' || c == '=' || c == '\\' || c < ' ' || c >= 127) {
					*err_at = i;
					return -1;
				}
				i++;
			}
			fl.val = line + v;
			fl.vlen = i - v;
		}
		if ((unsigned)n < max)
			f[n++] = fl;
	}
}


size_t logfmt_value(const struct logfmt_field *f, char *dst, size_t cap)
{
	size_t o = 0;
	if (!cap)
		return 0;
	for (size_t i = 0; i < f->vlen && o + 1 < cap; i++) {
		char c = f->val[i];
		if (f->quoted && c == '\\' && i + 1 < f->vlen) {
			char e = f->val[++i];
			if (e == 'x' && i + 2 < f->vlen && smtp_hexval((unsigned char)f->val[i + 1]) >= 0 &&
			    smtp_hexval((unsigned char)f->val[i + 2]) >= 0) {
				c = (char)(smtp_hexval((unsigned char)f->val[i + 1]) * 16 +
					   smtp_hexval((unsigned char)f->val[i + 2]));
				i += 2;
			} else {
				c = e;
			}
		}
		dst[o++] = c;
	}
	dst[o] = '\0';
	return o;
}

const struct logfmt_field *logfmt_find(const struct logfmt_field *f, int n, const char *key)
{
	size_t kl = strlen(key);
	for (int i = 0; i < n; i++)
		if (f[i].klen == kl && memcmp(f[i].key, key, kl) == 0)
			return &f[i];
	return NULL;
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

/* n digits at s[*i] as a number; false when they are not all there. */
static bool digits(const char *s, size_t len, size_t *i, unsigned n, unsigned *out)
{
	unsigned v = 0;
	for (unsigned k = 0; k < n; k++) {
		if (*i >= len || s[*i] < '0' || s[*i] > '9')
			return false;
		v = v * 10 + (unsigned)(s[(*i)++] - '0');
	}
	*out = v;
	return true;
}

static bool absolute_time(const char *s, size_t len, int64_t *out_ms)
{
	size_t i = 0;
	unsigned y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
	if (!digits(s, len, &i, 4, &y) || i >= len || s[i++] != '-' ||
	    !digits(s, len, &i, 2, &mo) || i >= len || s[i++] != '-' ||
	    !digits(s, len, &i, 2, &d))
		return false;
	if (mo < 1 || mo > 12 || d < 1 || d > 31)
		return false;
	int64_t offset_s = 0;
	if (i < len) {
		if (s[i] != 'T' && s[i] != ' ')
			return false;
		i++;
		if (!digits(s, len, &i, 2, &h) || i >= len || s[i++] != ':' ||
		    !digits(s, len, &i, 2, &mi))
			return false;
		if (i < len && s[i] == ':') {
			i++;
			if (!digits(s, len, &i, 2, &sec))
				return false;
			if (i < len && (s[i] == '.' || s[i] == ',')) {
				i++;
				unsigned scale = 100, k = 0;
				while (i < len && s[i] >= '0' && s[i] <= '9') {
					if (k++ < 3) {
						ms += (unsigned)(s[i] - '0') * scale;
						scale /= 10;
					}
					i++;
				}
				if (!k)
					return false;
			}
		}
		if (h > 23 || mi > 59 || sec > 60)
			return false;
		if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
			i++;
		} else if (i < len && (s[i] == '+' || s[i] == '-')) {
			int sign = s[i++] == '-' ? -1 : 1;
			unsigned oh, om = 0;
			if (!digits(s, len, &i, 2, &oh))
				return false;
			if (i < len && s[i] == ':')
				i++;
			if (i < len && !digits(s, len, &i, 2, &om))
				return false;
			if (oh > 23 || om > 59)
				return false;
			offset_s = sign * (int64_t)(oh * 3600 + om * 60);
		}
		if (i != len)
			return false;
	}
	int64_t days = days_from_civil(y, mo, d);
	int64_t t = days * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + sec - offset_s;
	*out_ms = t * 1000 + ms;
	return true;
}

bool logfmt_time(const char *s, size_t len, int64_t now_ms, int64_t *out_ms)
{
	if (len == 3 && memcmp(s, "now", 3) == 0) {
		*out_ms = now_ms;
		return true;
	}
	if (absolute_time(s, len, out_ms))
		return true;
	/* An age: digits, then one unit. */
	size_t i = 0;
	uint64_t v = 0;
	while (i < len && s[i] >= '0' && s[i] <= '9' && v < 100000000)
		v = v * 10 + (uint64_t)(s[i++] - '0');
	if (i == 0 || i + 1 != len)
		return false;
	static const struct {
		char unit;
		int64_t ms;
	} units[] = {{'s', 1000}, {'m', 60000}, {'h', 3600000}, {'d', 86400000}, {'w', 604800000}};
	for (size_t k = 0; k < sizeof(units) / sizeof(units[0]); k++)
		if (s[i] == units[k].unit) {
			*out_ms = now_ms - (int64_t)v * units[k].ms;
			return true;
		}
	return false;
}

bool logfmt_line_time(const char *line, size_t len, int64_t *out_ms)
{
	if (len < 4 || memcmp(line, "ts=", 3) != 0)
		return false;
	const char *sp = memchr(line + 3, ' ', len - 3);
	size_t n = sp ? (size_t)(sp - line) - 3 : len - 3;
	return absolute_time(line + 3, n, out_ms);
}
