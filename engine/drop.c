/* Drop directories (see drop.h). Writes the message as a .eml file:
 * X-Sender/X-Receiver lines carry the envelope (as Exchange's pickup and
 * replay files do), then the message with the SMTP dot-stuffing undone.
 * Atomic: a temporary name, fsync, rename, fsync of the directory. The
 * name is the message id and its first recipient's index, so a retry
 * after a crash replaces rather than duplicates. */
#include "drop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dirs.h"
#include "mailbox.h"
#include "spool.h"

struct drop_item {
	struct mailbox_node node;  /* first: the done mailbox */
	struct drop_item *next;    /* the todo queue */
	struct djob *job;
};

struct drop_writer {
	struct wctx *w;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct drop_item *todo, **todo_tail;  /* oldest first */
	struct mailbox done;                  /* written, back to the worker */
	unsigned pending;                     /* worker's count: queued or being written */
	bool stop;
	bool started;
	pthread_t thread;
};

static int drop_write(const struct djob *j, char *path, size_t pathcap)
{
	const struct qmsg *m = j->m;
	const char *dir = j->sc->drop_dir;
	int ret = dirs_make(dir);
	if (ret < 0)
		return ret;
	char tmp[4200];
	snprintf(path, pathcap, "%s/%s-%u.eml", dir, m->idtxt, j->idx[0]);
	snprintf(tmp, sizeof(tmp), "%s/.%s-%u.tmp", dir, m->idtxt, j->idx[0]);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	FILE *f = fdopen(fd, "w");
	if (!f) {
		ret = -errno;
		close(fd);
		unlink(tmp);
		return ret;
	}
	fprintf(f, "X-Sender: <%s>\r\n", m->from);
	for (unsigned k = 0; k < j->n; k++)
		fprintf(f, "X-Receiver: <%s>\r\n", m->r[j->idx[k]].addr);
	if (m->prefix_len)
		fwrite(m->prefix, 1, m->prefix_len, f); /* added by content rules */
	int seg = spool_seg_fd(m->seg);
	bool bol = true;
	char buf[65536], out[65536];
	for (uint32_t i = 0; i < m->nchunks && ret == 0; i++) {
		uint64_t off = m->off[i], left = m->len[i];
		while (left && ret == 0) {
			size_t want = left < sizeof(buf) ? (size_t)left : sizeof(buf);
			ssize_t n = pread(seg, buf, want, (off_t)off);
			if (n <= 0) {
				ret = n < 0 ? -errno : -EIO;
				break;
			}
			size_t o = 0;
			for (ssize_t k = 0; k < n; k++) {
				/* A line that starts with "." was stuffed by the
				 * client: drop that first dot. */
				if (!(bol && buf[k] == '.'))
					out[o++] = buf[k];
				bol = buf[k] == '\n';
			}
			if (fwrite(out, 1, o, f) != o)
				ret = -EIO;
			off += (uint64_t)n;
			left -= (uint64_t)n;
		}
	}
	if (ret == 0 && (fflush(f) != 0 || fsync(fd) != 0))
		ret = -errno;
	if (fclose(f) != 0 && ret == 0)
		ret = -errno;
	if (ret == 0 && rename(tmp, path) != 0)
		ret = -errno;
	if (ret != 0) {
		unlink(tmp);
		return ret;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		if (fsync(dfd) != 0)
			ret = -errno;
		close(dfd);
	}
	return ret;
}

static void write_one(struct djob *j)
{
	char path[4200], text[480];
	int ret = drop_write(j, path, sizeof(path));
	snprintf(j->remote, sizeof(j->remote), "%s", j->sc->drop_dir);
	if (ret == 0) {
		snprintf(text, sizeof(text), "250 2.0.0 Written to %.400s", path);
		djob_result_all(j, 250, "2.0.0", text);
	} else {
		snprintf(text, sizeof(text), "451 4.3.0 Drop directory %.300s: %s", j->sc->drop_dir,
			 strerror(-ret));
		djob_result_all(j, 451, "4.3.0", text);
	}
}

static void *drop_main(void *arg)
{
	struct drop_writer *d = arg;
	pthread_mutex_lock(&d->lock);
	for (;;) {
		while (!d->todo && !d->stop)
			pthread_cond_wait(&d->cond, &d->lock);
		if (d->stop)
			break;
		struct drop_item *it = d->todo;
		d->todo = it->next;
		if (!d->todo)
			d->todo_tail = &d->todo;
		pthread_mutex_unlock(&d->lock);
		write_one(it->job);
		mailbox_post(&d->done, &it->node);
		wctx_wake(d->w);
		pthread_mutex_lock(&d->lock);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

struct drop_writer *drop_new(struct wctx *w)
{
	struct drop_writer *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->w = w;
	pthread_mutex_init(&d->lock, NULL);
	mailbox_init(&d->done);
	pthread_cond_init(&d->cond, NULL);
	d->todo_tail = &d->todo;
	return d;
}

bool drop_submit(struct drop_writer *d, struct djob *j)
{
	struct drop_item *it = calloc(1, sizeof(*it));
	if (!it)
		return false;
	if (!d->started) {
		if (pthread_create(&d->thread, NULL, drop_main, d) != 0) {
			free(it);
			return false;
		}
		d->started = true;
	}
	it->job = j;
	d->pending++;
	pthread_mutex_lock(&d->lock);
	*d->todo_tail = it;
	d->todo_tail = &it->next;
	pthread_cond_signal(&d->cond);
	pthread_mutex_unlock(&d->lock);
	return true;
}

void drop_collect(struct drop_writer *d, void (*fn)(void *arg, struct djob *j), void *arg)
{
	for (struct mailbox_node *n = mailbox_take(&d->done), *next; n; n = next) {
		next = n->next;
		struct drop_item *it = (struct drop_item *)n;
		d->pending--;
		fn(arg, it->job);
		free(it);
	}
}

unsigned drop_pending(const struct drop_writer *d)
{
	return d->pending;
}

void drop_free(struct drop_writer *d)
{
	if (!d)
		return;
	if (d->started) {
		pthread_mutex_lock(&d->lock);
		d->stop = true;
		pthread_cond_signal(&d->cond);
		pthread_mutex_unlock(&d->lock);
		pthread_join(d->thread, NULL);
	}
	for (struct drop_item *it = d->todo, *n; it; it = n) {
		n = it->next;
		free(it);
	}
	for (struct mailbox_node *it = mailbox_take(&d->done), *n; it; it = n) {
		n = it->next;
		free(it);
	}
	mailbox_destroy(&d->done);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	free(d);
}
