/* Quoted-printable decoding (see qp.h). */
#include "qp.h"

#include "smtp_path.h"


size_t qp_decode_line(const char *in, size_t n, char *out, bool *soft)
{
	while (n && (in[n - 1] == ' ' || in[n - 1] == '\t' || in[n - 1] == '\r'))
		n--;
	*soft = n && in[n - 1] == '=';
	if (*soft)
		n--;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (in[i] == '=') {
			int h = i + 1 < n ? smtp_hexval((unsigned char)in[i + 1]) : -1;
			int l = i + 2 < n ? smtp_hexval((unsigned char)in[i + 2]) : -1;
			if (h >= 0 && l >= 0) {
				out[o++] = (char)(h << 4 | l);
				i += 2;
				continue;
			}
		}
		out[o++] = in[i];
	}
	return o;
}
