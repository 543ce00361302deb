/* deadlines.c — see deadlines.h. Notes:
 * - Heap entries carry the index of their hash slot, so moving an entry during a sift
 *   updates its slot in O(1) (no re-probe), and a backward shift in the hash updates the
 *   moved entry's back-reference. Slots hold heap position + 1 (0 = empty).
 * - Sifts use the "hole" technique: the moving entry is held aside and written once.
 * - Order is (due_at_us, id), a strict total order since ids are unique, so pops are
 *   deterministic and equal due times fire in id order. */
#include "deadlines.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "ac_log.h"

#define DL_ARITY     4
#define DL_MAX_COUNT ((size_t)1 << 30) /* positions and slots fit in uint32 with room */
#define DL_MIN_SLOTS 64
#define DL_MIN_HEAP  16
#define DL_NOT_ARMED INT64_MIN
#define DL_HASH_MULT UINT64_C(0x9E3779B97F4A7C15) /* 2^64 / golden ratio */

typedef struct dl_entry {
    dispatch_deadline_t d; /* 24 bytes */
    uint32_t slot;         /* index of this entry's hash slot */
} dl_entry_t;

struct dispatch_deadlines {
    dl_entry_t *heap;    /* owned; heap_cap entries, count used */
    size_t count;        /* armed deadlines */
    size_t heap_cap;     /* entries allocated */
    uint32_t *slots;     /* owned; slot_cap entries: heap position + 1, 0 = empty */
    size_t slot_cap;     /* power of two, >= 2 * count */
    unsigned slot_shift; /* 64 - log2(slot_cap) */
    bool is_dirty;       /* appends pending: heap order not established */
    /* libev glue */
    struct ev_loop *loop; /* borrowed; NULL when detached */
    ev_periodic timer;    /* armed for the earliest deadline while loop != NULL */
    int64_t armed_at_us;  /* due time the timer is set for, DL_NOT_ARMED if stopped */
    dispatch_deadlines_due_fn on_due;
    void *on_due_arg;
    dispatch_deadline_t *batch; /* owned; batch_max entries handed to on_due */
    size_t batch_max;
    bool is_firing; /* inside on_due: timer updates deferred to its end */
};

static void timer_sync(dispatch_deadlines_t *self);

static inline bool version_older(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) < 0;
}

static inline bool entry_less(const dl_entry_t *a, const dl_entry_t *b)
{
    if (a->d.due_at_us != b->d.due_at_us)
        return a->d.due_at_us < b->d.due_at_us;
    return a->d.id < b->d.id;
}

static inline size_t slot_home(const dispatch_deadlines_t *self, uint64_t id)
{
    return (size_t)((id * DL_HASH_MULT) >> self->slot_shift);
}

/* The slot holding `id`, or the empty slot where it would go (*found false). */
static size_t slot_find(const dispatch_deadlines_t *self, uint64_t id, bool *found)
{
    size_t mask = self->slot_cap - 1;
    for (size_t i = slot_home(self, id);; i = (i + 1) & mask) {
        uint32_t v = self->slots[i];
        if (v == 0) {
            *found = false;
            return i;
        }
        if (self->heap[v - 1].d.id == id) {
            *found = true;
            return i;
        }
    }
}

/* Empty slot i, shifting later members of its probe run back (no tombstones). */
static void slot_delete(dispatch_deadlines_t *self, size_t i)
{
    size_t mask = self->slot_cap - 1;
    size_t j = i;
    self->slots[i] = 0;
    for (;;) {
        j = (j + 1) & mask;
        uint32_t v = self->slots[j];
        if (v == 0)
            return;
        size_t home = slot_home(self, self->heap[v - 1].d.id);
        /* v may move back to i unless its home lies cyclically in (i, j]. */
        bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            self->slots[i] = v;
            self->heap[v - 1].slot = (uint32_t)i;
            self->slots[j] = 0;
            i = j;
        }
    }
}

static int slots_resize(dispatch_deadlines_t *self, size_t cap)
{
    uint32_t *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL) {
        ac_error("deadlines: out of memory for %zu hash slots", cap);
        return AC_ERR_NOMEM;
    }
    unsigned bits = 0;
    while (((size_t)1 << bits) < cap)
        bits++;
    free(self->slots);
    self->slots = slots;
    self->slot_cap = cap;
    self->slot_shift = 64 - bits;
    for (size_t pos = 0; pos < self->count; pos++) {
        bool found = false;
        size_t s = slot_find(self, self->heap[pos].d.id, &found);
        assert(!found);
        slots[s] = (uint32_t)pos + 1;
        self->heap[pos].slot = (uint32_t)s;
    }
    return AC_OK;
}

static int heap_resize(dispatch_deadlines_t *self, size_t cap)
{
    dl_entry_t *heap = realloc(self->heap, cap * sizeof(*heap));
    if (heap == NULL) {
        ac_error("deadlines: out of memory for %zu entries", cap);
        return AC_ERR_NOMEM;
    }
    self->heap = heap;
    self->heap_cap = cap;
    return AC_OK;
}

/* Room for `n` deadlines in all: heap_cap >= n (exactly n when `exact`, else doubling)
 * and slot_cap >= 2n. */
static int ensure_room(dispatch_deadlines_t *self, size_t n, bool exact)
{
    if (n > DL_MAX_COUNT)
        return AC_ERR_TOOBIG;
    if (n > self->heap_cap) {
        size_t cap = exact ? n : self->heap_cap * 2;
        if (cap < n)
            cap = n;
        if (cap < DL_MIN_HEAP)
            cap = DL_MIN_HEAP;
        if (cap > DL_MAX_COUNT)
            cap = DL_MAX_COUNT;
        int rc = heap_resize(self, cap);
        if (rc != AC_OK)
            return rc;
    }
    if (2 * n > self->slot_cap) {
        size_t cap = self->slot_cap;
        while (cap < 2 * n)
            cap *= 2;
        return slots_resize(self, cap);
    }
    return AC_OK;
}

static inline void place(dispatch_deadlines_t *self, size_t pos, const dl_entry_t *e)
{
    self->heap[pos] = *e;
    self->slots[e->slot] = (uint32_t)pos + 1;
}

static void sift_up(dispatch_deadlines_t *self, size_t pos)
{
    dl_entry_t e = self->heap[pos];
    while (pos > 0) {
        size_t parent = (pos - 1) / DL_ARITY;
        if (!entry_less(&e, &self->heap[parent]))
            break;
        place(self, pos, &self->heap[parent]);
        pos = parent;
    }
    place(self, pos, &e);
}

static void sift_down(dispatch_deadlines_t *self, size_t pos)
{
    dl_entry_t e = self->heap[pos];
    size_t n = self->count;
    for (;;) {
        size_t first = pos * DL_ARITY + 1;
        if (first >= n)
            break;
        size_t last = first + DL_ARITY < n ? first + DL_ARITY : n;
        size_t best = first;
        for (size_t c = first + 1; c < last; c++)
            if (entry_less(&self->heap[c], &self->heap[best]))
                best = c;
        if (!entry_less(&self->heap[best], &e))
            break;
        place(self, pos, &self->heap[best]);
        pos = best;
    }
    place(self, pos, &e);
}

/* Restore order around pos after its key changed (either direction). */
static void sift(dispatch_deadlines_t *self, size_t pos)
{
    if (pos > 0 && entry_less(&self->heap[pos], &self->heap[(pos - 1) / DL_ARITY]))
        sift_up(self, pos);
    else
        sift_down(self, pos);
}

static void remove_at(dispatch_deadlines_t *self, size_t pos)
{
    slot_delete(self, self->heap[pos].slot);
    size_t last = --self->count;
    if (pos == last)
        return;
    place(self, pos, &self->heap[last]);
    if (!self->is_dirty)
        sift(self, pos);
}

void dispatch_deadlines_heapify(dispatch_deadlines_t *self)
{
    if (!self->is_dirty)
        return;
    self->is_dirty = false;
    if (self->count > 1)
        for (size_t pos = (self->count - 2) / DL_ARITY + 1; pos-- > 0;)
            sift_down(self, pos);
    timer_sync(self);
}

/* Shared by arm and append: insert or update in place; *pos_out is the entry's position. */
static int upsert(dispatch_deadlines_t *self, const dispatch_deadline_t *d, size_t *pos_out)
{
    bool found = false;
    size_t s = slot_find(self, d->id, &found);
    if (found) {
        size_t pos = self->slots[s] - 1;
        if (version_older(d->version, self->heap[pos].d.version))
            return AC_ERR_CONFLICT;
        self->heap[pos].d = *d;
        *pos_out = pos;
        return AC_OK;
    }
    if (self->count + 1 > self->heap_cap || 2 * (self->count + 1) > self->slot_cap) {
        int rc = ensure_room(self, self->count + 1, false);
        if (rc != AC_OK)
            return rc;
        s = slot_find(self, d->id, &found); /* the table may have been rebuilt */
    }
    size_t pos = self->count++;
    self->heap[pos].d = *d;
    self->heap[pos].slot = (uint32_t)s;
    self->slots[s] = (uint32_t)pos + 1;
    *pos_out = pos;
    return AC_OK;
}

dispatch_deadlines_t *dispatch_deadlines_new(void)
{
    dispatch_deadlines_t *self = calloc(1, sizeof(*self));
    if (self == NULL) {
        ac_error("deadlines: out of memory");
        return NULL;
    }
    self->armed_at_us = DL_NOT_ARMED;
    if (heap_resize(self, DL_MIN_HEAP) != AC_OK || slots_resize(self, DL_MIN_SLOTS) != AC_OK) {
        dispatch_deadlines_destroy(&self);
        return NULL;
    }
    return self;
}

void dispatch_deadlines_destroy(dispatch_deadlines_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    dispatch_deadlines_t *self = *self_p;
    dispatch_deadlines_detach(self);
    free(self->heap);
    free(self->slots);
    free(self->batch);
    free(self);
    *self_p = NULL;
}

int dispatch_deadlines_arm(dispatch_deadlines_t *self, const dispatch_deadline_t *d)
{
    dispatch_deadlines_heapify(self);
    size_t pos = 0;
    int rc = upsert(self, d, &pos);
    if (rc != AC_OK)
        return rc;
    sift(self, pos);
    timer_sync(self);
    return AC_OK;
}

int dispatch_deadlines_cancel(dispatch_deadlines_t *self, uint64_t id, uint32_t version)
{
    dispatch_deadlines_heapify(self);
    bool found = false;
    size_t s = slot_find(self, id, &found);
    if (!found)
        return AC_ERR_NOTFOUND;
    size_t pos = self->slots[s] - 1;
    if (version_older(version, self->heap[pos].d.version))
        return AC_ERR_CONFLICT;
    remove_at(self, pos);
    timer_sync(self);
    return AC_OK;
}

const dispatch_deadline_t *dispatch_deadlines_peek(dispatch_deadlines_t *self)
{
    dispatch_deadlines_heapify(self);
    return self->count > 0 ? &self->heap[0].d : NULL;
}

const dispatch_deadline_t *dispatch_deadlines_find(const dispatch_deadlines_t *self, uint64_t id)
{
    bool found = false;
    size_t s = slot_find(self, id, &found);
    return found ? &self->heap[self->slots[s] - 1].d : NULL;
}

static size_t pop_due(dispatch_deadlines_t *self, int64_t now_us, dispatch_deadline_t *out,
                      size_t max)
{
    size_t n = 0;
    while (n < max && self->count > 0 && self->heap[0].d.due_at_us <= now_us) {
        out[n++] = self->heap[0].d;
        remove_at(self, 0);
    }
    return n;
}

size_t dispatch_deadlines_pop_due(dispatch_deadlines_t *self, int64_t now_us,
                                  dispatch_deadline_t *out, size_t max)
{
    dispatch_deadlines_heapify(self);
    size_t n = pop_due(self, now_us, out, max);
    if (n > 0)
        timer_sync(self);
    return n;
}

size_t dispatch_deadlines_count(const dispatch_deadlines_t *self)
{
    return self->count;
}

size_t dispatch_deadlines_memory_bytes(const dispatch_deadlines_t *self)
{
    return sizeof(*self) + self->heap_cap * sizeof(*self->heap) +
           self->slot_cap * sizeof(*self->slots) + self->batch_max * sizeof(*self->batch);
}

int dispatch_deadlines_reserve(dispatch_deadlines_t *self, size_t n)
{
    return ensure_room(self, n, true);
}

int dispatch_deadlines_append(dispatch_deadlines_t *self, const dispatch_deadline_t *d)
{
    size_t pos = 0;
    int rc = upsert(self, d, &pos);
    if (rc == AC_OK)
        self->is_dirty = true;
    return rc;
}

/* ---- libev glue ---- */

static void on_next_deadline(struct ev_loop *loop, ev_periodic *w, int revents)
{
    dispatch_deadlines_t *self = ac_container_of(w, dispatch_deadlines_t, timer);
    /* A non-repeating periodic is stopped by libev before its callback runs. */
    self->armed_at_us = DL_NOT_ARMED;
    int64_t now_us = llround(ev_now(loop) * 1e6);
    size_t n = pop_due(self, now_us, self->batch, self->batch_max);
    if (n > 0) {
        self->is_firing = true;
        self->on_due(self->on_due_arg, self->batch, n, now_us);
        self->is_firing = false;
    }
    /* Earliest still due (batch full or rounding): its time is past, so this fires on the
     * next iteration, after I/O has been polled. */
    timer_sync(self);
}

static void timer_sync(dispatch_deadlines_t *self)
{
    if (self->loop == NULL || self->is_firing || self->is_dirty)
        return;
    if (self->count == 0) {
        ev_periodic_stop(self->loop, &self->timer);
        self->armed_at_us = DL_NOT_ARMED;
        return;
    }
    int64_t due_us = self->heap[0].d.due_at_us;
    if (ev_is_active(&self->timer) && due_us == self->armed_at_us)
        return;
    ev_periodic_stop(self->loop, &self->timer);
    ev_periodic_set(&self->timer, (double)due_us / 1e6, 0., NULL);
    ev_periodic_start(self->loop, &self->timer);
    self->armed_at_us = due_us;
}

int dispatch_deadlines_attach(dispatch_deadlines_t *self, struct ev_loop *loop, size_t batch_max,
                              dispatch_deadlines_due_fn on_due, void *arg)
{
    if (self->loop != NULL)
        return AC_ERR_CONFLICT;
    if (batch_max == 0)
        batch_max = DISPATCH_DEADLINES_BATCH_DEFAULT;
    if (batch_max != self->batch_max) {
        dispatch_deadline_t *batch = realloc(self->batch, batch_max * sizeof(*batch));
        if (batch == NULL) {
            ac_error("deadlines: out of memory for a batch of %zu", batch_max);
            return AC_ERR_NOMEM;
        }
        self->batch = batch;
        self->batch_max = batch_max;
    }
    self->on_due = on_due;
    self->on_due_arg = arg;
    self->loop = loop;
    ev_periodic_init(&self->timer, on_next_deadline, 0., 0., NULL);
    ev_set_priority(&self->timer, EV_MAXPRI); /* ahead of I/O pending in the same iteration */
    self->armed_at_us = DL_NOT_ARMED;
    dispatch_deadlines_heapify(self);
    timer_sync(self);
    return AC_OK;
}

void dispatch_deadlines_detach(dispatch_deadlines_t *self)
{
    if (self->loop == NULL)
        return;
    ev_periodic_stop(self->loop, &self->timer);
    self->loop = NULL;
    self->armed_at_us = DL_NOT_ARMED;
}
