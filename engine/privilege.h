/* Running as server.user (DESIGN B.6): started as root, postern binds and
 * opens what it needs, gives its spool, stats socket and log file to that
 * user, then becomes it. Nothing here knows about SMTP. */
#ifndef POSTERN_PRIVILEGE_H
#define POSTERN_PRIVILEGE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The user's uid and primary gid. -1 with err filled when there is none. */
int privilege_lookup(const char *user, uid_t *uid, gid_t *gid, char *err, size_t cap);

/* Makes path (and, when it is a directory, everything under it, without
 * following symbolic links) belong to uid:gid. -1 with err filled. */
int privilege_give(const char *path, uid_t uid, gid_t gid, char *err, size_t cap);

/* Becomes uid with gid as the only group. keep_bind: CAP_NET_BIND_SERVICE
 * stays (a reload may add a binding below 1024); no other capability is
 * kept in the effective, permitted, inheritable or ambient set, the
 * bounding set loses all the others when CAP_SETPCAP allows, and
 * no_new_privs makes sure none can come back. -1 with err filled; then
 * the process must not go on. */
int privilege_drop(uid_t uid, gid_t gid, bool keep_bind, char *err, size_t cap);

#endif
