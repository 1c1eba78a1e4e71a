/* Directories the daemon creates for itself (the spool, drop directories).
 * Nothing else: no file I/O, no policy. */
#ifndef POSTERN_DIRS_H
#define POSTERN_DIRS_H

/* mkdir -p with mode 0750 for what it creates; 0 or -errno. */
int dirs_make(const char *dir);

#endif
