/* systemd's readiness protocol (sd_notify(3)) without libsystemd: one
 * datagram to $NOTIFY_SOCKET. Does nothing when postern was not started by
 * a service manager that asked for it. */
#ifndef POSTERN_NOTIFY_H
#define POSTERN_NOTIFY_H

/* state: "READY=1", "RELOADING=1", "STOPPING=1", "STATUS=...", or several
 * separated by newlines. */
void notify_manager(const char *state);

#endif
