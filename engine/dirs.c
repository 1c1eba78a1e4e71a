/* Directory creation (see dirs.h). */
#include "dirs.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

int dirs_make(const char *dir)
{
	char path[4096];
	size_t n = strlen(dir);
	if (n == 0 || n >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, n + 1);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0750) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}
