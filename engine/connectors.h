/* Connector selection: for each binding, the LPM table that maps a client
 * address to the receive connector whose range matches it most specifically.
 * Built once per configuration; read-only afterwards. */
#ifndef POSTERN_CONNECTORS_H
#define POSTERN_CONNECTORS_H

#include <stddef.h>

#include "config.h"

/* Checks that connectors sharing a binding have nested-or-disjoint ranges
 * and builds one table per binding. On error returns -1 with why and the
 * configuration line of the offending connector. */
int connectors_build(struct conf *c, char *why, size_t whylen, int *line);
void connectors_free(struct conf *c);

/* Bytes used by all tables, and their prefix and interval counts. */
void connectors_stats(const struct conf *c, size_t *bytes, size_t *prefixes,
		      size_t *intervals);

#endif
