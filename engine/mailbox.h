/* A mailbox: other threads post items, the worker takes them all at once,
 * oldest first (after a wake-up). Items embed a struct mailbox_node as
 * their first member. Owns no item and wakes nobody itself. */
#ifndef POSTERN_MAILBOX_H
#define POSTERN_MAILBOX_H

#include <pthread.h>
#include <stddef.h>

struct mailbox_node {
	struct mailbox_node *next;
};

struct mailbox {
	pthread_mutex_t lock;
	struct mailbox_node *newest;   /* newest first */
};

static inline void mailbox_init(struct mailbox *mb)
{
	pthread_mutex_init(&mb->lock, NULL);
	mb->newest = NULL;
}

static inline void mailbox_destroy(struct mailbox *mb)
{
	pthread_mutex_destroy(&mb->lock);
}

/* Any thread. */
static inline void mailbox_post(struct mailbox *mb, struct mailbox_node *n)
{
	pthread_mutex_lock(&mb->lock);
	n->next = mb->newest;
	mb->newest = n;
	pthread_mutex_unlock(&mb->lock);
}

/* Everything posted so far, oldest first (NULL when empty). */
static inline struct mailbox_node *mailbox_take(struct mailbox *mb)
{
	pthread_mutex_lock(&mb->lock);
	struct mailbox_node *it = mb->newest;
	mb->newest = NULL;
	pthread_mutex_unlock(&mb->lock);
	struct mailbox_node *oldest = NULL;
	while (it) {
		struct mailbox_node *n = it->next;
		it->next = oldest;
		oldest = it;
		it = n;
	}
	return oldest;
}

#endif
