/* Connection slots (conn.h): a free list of slot numbers, low ones first so
 * the tick's scan stays short, and a generation per slot. */
#include "conn.h"

#include <stdlib.h>

int conn_table_init(struct conn_table *t, uint32_t nslots)
{
	t->nslots = nslots;
	t->slots = calloc(nslots, sizeof(*t->slots));
	t->gens = calloc(nslots, sizeof(*t->gens));
	t->free_slots = calloc(nslots, sizeof(*t->free_slots));
	if (!t->slots || !t->gens || !t->free_slots) {
		conn_table_free(t);
		return -1;
	}
	for (uint32_t i = 0; i < nslots; i++)
		t->free_slots[i] = nslots - 1 - i;
	t->nfree = nslots;
	t->high_water = 0;
	t->nconns = 0;
	return 0;
}

void conn_table_free(struct conn_table *t)
{
	free(t->slots);
	free(t->gens);
	free(t->free_slots);
	t->slots = NULL;
	t->gens = t->free_slots = NULL;
	t->nfree = t->nslots = 0;
}

struct conn *conn_alloc(struct conn_table *t)
{
	if (t->nfree == 0)
		return NULL;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	uint32_t slot = t->free_slots[--t->nfree];
	if (slot + 1 > t->high_water)
		t->high_water = slot + 1;
	c->slot = slot;
	c->gen = ++t->gens[slot];
	c->fd = -1;
	t->slots[slot] = c;
	t->nconns++;
	return c;
}

void conn_release(struct conn_table *t, struct conn *c)
{
	t->slots[c->slot] = NULL;
	t->free_slots[t->nfree++] = c->slot;
	t->nconns--;
	free(c);
}

struct conn *conn_lookup(const struct conn_table *t, uint32_t slot, uint32_t gen)
{
	if (slot >= t->nslots)
		return NULL;
	struct conn *c = t->slots[slot];
	return c && c->gen == gen ? c : NULL;
}
