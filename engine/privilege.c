/* Privilege drop (see privilege.h). Raw capset(2) rather than libcap: one
 * capability to keep does not warrant a dependency. */
#include "privilege.h"

#define _XOPEN_SOURCE_EXTENDED 1
#include <errno.h>
#include <ftw.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int privilege_lookup(const char *user, uid_t *uid, gid_t *gid, char *err, size_t cap)
{
	errno = 0;
	struct passwd *pw = getpwnam(user);
	if (!pw) {
		snprintf(err, cap, "server.user: no such user \"%s\"%s%s", user,
			 errno ? ": " : "", errno ? strerror(errno) : "");
		return -1;
	}
	if (pw->pw_uid == 0) {
		snprintf(err, cap, "server.user: \"%s\" is root: name an unprivileged user", user);
		return -1;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return 0;
}

/* nftw has no argument for its callback: the owner travels here, set and
 * used on the main thread before any worker exists. */
static uid_t give_uid;
static gid_t give_gid;
static int give_errno;
static char give_path[256];

static int give_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	if (lchown(path, give_uid, give_gid) < 0) {
		give_errno = errno;
		snprintf(give_path, sizeof(give_path), "%s", path);
		return 1;
	}
	return 0;
}

int privilege_give(const char *path, uid_t uid, gid_t gid, char *err, size_t cap)
{
	give_uid = uid;
	give_gid = gid;
	give_errno = 0;
	/* Depth first: a directory changes hands after what is in it, while
	 * root can still look inside without CAP_DAC_OVERRIDE. */
	int r = nftw(path, give_one, 16, FTW_PHYS | FTW_MOUNT | FTW_DEPTH);
	if (r == 0)
		return 0;
	snprintf(err, cap, "cannot give %s to uid %u: %s", give_errno ? give_path : path,
		 (unsigned)uid, strerror(give_errno ? give_errno : errno));
	return -1;
}

static int capset_to(__u32 keep)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	d[0].effective = d[0].permitted = keep;
	return (int)syscall(SYS_capset, &h, d);
}

int privilege_drop(uid_t uid, gid_t gid, bool keep_bind, char *err, size_t cap)
{
	__u32 keep = keep_bind ? (1u << CAP_NET_BIND_SERVICE) : 0;
	/* The bounding set first (that needs CAP_SETPCAP, which goes with the
	 * uid): nothing dropped here can be regained by any exec. */
	for (int c = 0; c <= 63; c++) {
		if (keep_bind && c == CAP_NET_BIND_SERVICE)
			continue;
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno == EINVAL)
			break; /* past the kernel's last capability */
	}
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	if (setgroups(0, NULL) < 0) {
		snprintf(err, cap, "setgroups: %s", strerror(errno));
		return -1;
	}
	if (setresgid(gid, gid, gid) < 0) {
		snprintf(err, cap, "setresgid(%u): %s", (unsigned)gid, strerror(errno));
		return -1;
	}
	if (keep && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) {
		snprintf(err, cap, "prctl(PR_SET_KEEPCAPS): %s", strerror(errno));
		return -1;
	}
	/* glibc applies it to every thread of the process. */
	if (setresuid(uid, uid, uid) < 0) {
		snprintf(err, cap, "setresuid(%u): %s", (unsigned)uid, strerror(errno));
		return -1;
	}
	prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
	if (capset_to(keep) < 0) {
		snprintf(err, cap, "capset: %s", strerror(errno));
		return -1;
	}
	/* Whatever the bounding set kept (dropping from it needs CAP_SETPCAP,
	 * which a hardened unit does not give), no exec can raise us again. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		snprintf(err, cap, "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(errno));
		return -1;
	}
	/* Proof rather than trust: root must be out of reach now. */
	if (setuid(0) == 0 || seteuid(0) == 0 || getuid() != uid || geteuid() != uid ||
	    getgid() != gid || getegid() != gid) {
		snprintf(err, cap, "privileges could not be dropped to uid %u gid %u", (unsigned)uid,
			 (unsigned)gid);
		return -1;
	}
	return 0;
}
