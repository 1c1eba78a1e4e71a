/* Listening sockets: one SO_REUSEPORT socket per worker per binding, so the
 * kernel spreads connections over workers and a connection stays on one. */
#ifndef POSTERN_LISTENER_H
#define POSTERN_LISTENER_H

#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

/* Opens a listening socket for b. Returns the fd, or -1 with err filled. */
int listener_open(const struct binding *b, char *err, size_t errlen);

/* The address of ss as text, without the port; an IPv4-mapped IPv6
 * address as plain IPv4. */
void peer_text(const struct sockaddr_storage *ss, char *buf, size_t cap);

#endif
