/* sequencer.c — the consumer's per-source decisions (contract in ac_sequencer.h).
 *
 * Notes: slot i of the ring holds the item whose sequence s has s & mask == i, and
 * slot_seq[i] == s marks it full (0 = empty; sequences start at 1). Every held sequence
 * lies in [next, next + window), so two held sequences never share a slot. */
#include "ac_sequencer.h"

#include <stdlib.h>
#include <string.h>

#define SEQ_MIN_WINDOW 16

struct ac_seq {
    void **items;         /* ring of window slots */
    uint64_t *slot_seq;   /* sequence held in each slot; 0 = empty */
    uint64_t mask;        /* window - 1 */
    size_t nheld;         /* full slots */
    uint64_t next;        /* next sequence to hand out */
    uint64_t latest;      /* highest sequence known to exist */
    uint64_t covered;     /* every sequence <= covered was delivered or filtered */
    int is_synced;        /* the initial replay ended (or was not needed) */
    int is_filtered;      /* topic filters: holes are expected, replay up to latest */
    int is_replaying;     /* a replay is running */
    int is_catchup;       /* ask for everything up to the latest next time */
    uint64_t replay_from; /* its range; replay_to 0 = up to the latest */
    uint64_t replay_to;
    uint64_t replay_dropped_min; /* lowest sequence of its range dropped meanwhile; 0 none */
    ac_seq_free_fn free_item;
    ac_seq_stats_t stats;
};

ac_seq_t *ac_seq_new(size_t window, ac_seq_free_fn free_item)
{
    ac_seq_t *self = calloc(1, sizeof(*self));
    size_t n = SEQ_MIN_WINDOW;
    if (!self)
        return NULL;
    while (n < window && n < ((size_t)1 << 30))
        n <<= 1;
    self->items = calloc(n, sizeof(*self->items));
    self->slot_seq = calloc(n, sizeof(*self->slot_seq));
    if (!self->items || !self->slot_seq) {
        free(self->items);
        free(self->slot_seq);
        free(self);
        return NULL;
    }
    self->mask = n - 1;
    self->next = 1;
    self->free_item = free_item;
    return self;
}

static int is_held(const ac_seq_t *self, uint64_t seq)
{
    return self->slot_seq[seq & self->mask] == seq;
}

static void *take(ac_seq_t *self, uint64_t seq)
{
    uint64_t i = seq & self->mask;
    void *item = self->items[i];
    self->items[i] = NULL;
    self->slot_seq[i] = 0;
    self->nheld--;
    return item;
}

static void drop_held(ac_seq_t *self, uint64_t seq)
{
    void *item = take(self, seq);
    if (self->free_item)
        self->free_item(item);
}

void ac_seq_destroy(ac_seq_t **self_p)
{
    ac_seq_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    for (uint64_t i = 0; i <= self->mask && self->nheld > 0; i++)
        if (self->slot_seq[i] != 0)
            drop_held(self, self->slot_seq[i]);
    free(self->items);
    free(self->slot_seq);
    free(self);
    *self_p = NULL;
}

static void move_to(ac_seq_t *self, uint64_t next, int is_rewind);

void ac_seq_reset(ac_seq_t *self, uint64_t next)
{
    move_to(self, next, 0);
}

void ac_seq_rewind(ac_seq_t *self, uint64_t next)
{
    move_to(self, next, 1);
}

static void move_to(ac_seq_t *self, uint64_t next, int is_rewind)
{
    uint64_t window = self->mask + 1;
    if (next == 0)
        next = 1;
    if (next > self->next) {
        /* forward: what lies below the new next is no longer wanted */
        uint64_t end = next - self->next >= window ? self->next + window : next;
        for (uint64_t s = self->next; s < end && self->nheld > 0; s++)
            if (is_held(self, s))
                drop_held(self, s);
    } else if (next < self->next) {
        /* back: what was handed out below the old next is not held any more, and only a
         * rewind gets it offered again; what no longer fits the window goes (a replay
         * fetches it again) */
        if (!is_rewind && self->covered >= next)
            self->covered = next - 1;
        uint64_t from = next + window > self->next ? next + window : self->next;
        for (uint64_t s = from; s < self->next + window && self->nheld > 0; s++) {
            if (is_held(self, s)) {
                drop_held(self, s);
                self->stats.evicted++;
                if (self->covered >= s)
                    self->covered = s - 1;
                if (self->is_replaying && s >= self->replay_from &&
                    (self->replay_dropped_min == 0 || s < self->replay_dropped_min))
                    self->replay_dropped_min = s;
            }
        }
    }
    self->next = next;
}

void ac_seq_mark_synced(ac_seq_t *self)
{
    self->is_synced = 1;
    if (self->covered < self->next - 1)
        self->covered = self->next - 1;
}

void ac_seq_note_latest(ac_seq_t *self, uint64_t sequence)
{
    if (sequence > self->latest)
        self->latest = sequence;
}

ac_seq_offer_t ac_seq_offer(ac_seq_t *self, uint64_t sequence, void *item)
{
    ac_seq_note_latest(self, sequence);
    if (sequence < self->next || is_held(self, sequence)) {
        self->stats.duplicates++;
        return AC_SEQ_DUPLICATE;
    }
    if (sequence - self->next > self->mask) {
        self->stats.dropped++;
        /* refused: it must never be passed over as filtered, so it is fetched again */
        if (self->covered >= sequence)
            self->covered = sequence - 1;
        if (self->is_replaying && sequence >= self->replay_from &&
            (self->replay_to == 0 || sequence <= self->replay_to) &&
            (self->replay_dropped_min == 0 || sequence < self->replay_dropped_min))
            self->replay_dropped_min = sequence;
        return AC_SEQ_DROPPED;
    }
    self->items[sequence & self->mask] = item;
    self->slot_seq[sequence & self->mask] = sequence;
    self->nheld++;
    return AC_SEQ_BUFFERED;
}

uint64_t ac_seq_skip_filtered(ac_seq_t *self)
{
    uint64_t from = self->next;
    uint64_t to = self->covered + 1; /* where the skip ends when nothing is held on the way */
    if (is_held(self, from) || self->covered < from)
        return 0;
    if (self->nheld > 0) {
        /* held sequences lie in [next, next + window): only those slots can stop the skip */
        uint64_t limit = from + self->mask + 1;
        for (uint64_t s = from + 1; s < limit && s < to; s++) {
            if (is_held(self, s)) {
                to = s;
                break;
            }
        }
    }
    self->next = to;
    self->stats.skipped += to - from;
    return to - from;
}

void *ac_seq_pop(ac_seq_t *self, uint64_t *sequence_out)
{
    uint64_t seq;
    ac_seq_skip_filtered(self); /* covered by a replay and never delivered: not for us */
    seq = self->next;
    if (!is_held(self, seq))
        return NULL;
    self->next++;
    if (sequence_out)
        *sequence_out = seq;
    return take(self, seq);
}

/* The first sequence from next on that is neither held nor covered; next + window when
 * every slot of the window is in use. */
static uint64_t first_missing(const ac_seq_t *self)
{
    uint64_t limit = self->next + self->mask + 1;
    uint64_t s = self->covered >= self->next ? self->covered + 1 : self->next;
    while (s < limit && is_held(self, s))
        s++;
    return s < limit ? s : limit;
}

ac_seq_replay_t ac_seq_want_replay(const ac_seq_t *self, uint64_t *from_out, uint64_t *to_out)
{
    uint64_t limit = self->next + self->mask + 1;
    uint64_t hole;
    if (self->is_replaying)
        return AC_SEQ_REPLAY_NONE;
    if (!self->is_synced) {
        *from_out = self->next;
        *to_out = 0;
        return AC_SEQ_REPLAY_INITIAL;
    }
    hole = first_missing(self);
    if (hole >= limit)
        return AC_SEQ_REPLAY_NONE; /* no room to take more now */
    if (self->latest < hole) {
        if (!self->is_catchup)
            return AC_SEQ_REPLAY_NONE; /* nothing known is missing */
        *from_out = hole;
        *to_out = 0;
        return AC_SEQ_REPLAY_CATCHUP;
    }
    *from_out = hole;
    *to_out = self->latest;
    if (!self->is_filtered) {
        for (uint64_t s = hole + 1; s < limit && s <= self->latest; s++) {
            if (is_held(self, s)) {
                *to_out = s - 1;
                break;
            }
        }
    }
    return AC_SEQ_REPLAY_GAP;
}

void ac_seq_request_catchup(ac_seq_t *self)
{
    self->is_catchup = 1;
}

void ac_seq_replay_begin(ac_seq_t *self, uint64_t from, uint64_t to)
{
    self->is_replaying = 1;
    self->is_catchup = 0;
    self->replay_from = from;
    self->replay_to = to;
    self->replay_dropped_min = 0;
}

void ac_seq_replay_end(ac_seq_t *self, uint64_t last)
{
    uint64_t claim = last;
    uint64_t start = self->covered >= self->next ? self->covered + 1 : self->next;
    int is_contiguous = 1;
    if (!self->is_replaying)
        return;
    if (self->replay_dropped_min != 0 && self->replay_dropped_min - 1 < claim)
        claim = self->replay_dropped_min - 1;
    /* The replay started at the first missing sequence: what lies between the covered
     * mark and its start was held then. Still held (or handed out), the claim joins up. */
    for (uint64_t s = start; s < self->replay_from; s++) {
        if (!is_held(self, s)) {
            is_contiguous = 0;
            break;
        }
    }
    if (is_contiguous && claim > self->covered)
        self->covered = claim;
    ac_seq_note_latest(self, last);
    self->is_replaying = 0;
    self->is_synced = 1;
}

void ac_seq_replay_abort(ac_seq_t *self)
{
    self->is_replaying = 0;
}

void ac_seq_lower_latest(ac_seq_t *self, uint64_t latest)
{
    if (latest < self->latest)
        self->latest = latest;
}

uint64_t ac_seq_covered(const ac_seq_t *self)
{
    return self->covered;
}

uint64_t ac_seq_next(const ac_seq_t *self)
{
    return self->next;
}

uint64_t ac_seq_latest(const ac_seq_t *self)
{
    return self->latest;
}

size_t ac_seq_held(const ac_seq_t *self)
{
    return self->nheld;
}

size_t ac_seq_window(const ac_seq_t *self)
{
    return (size_t)self->mask + 1;
}

size_t ac_seq_ready(const ac_seq_t *self, size_t limit)
{
    size_t n = 0;
    uint64_t end = self->next + self->mask + 1; /* nothing is held beyond */
    if (limit > self->nheld)
        limit = self->nheld;
    for (uint64_t s = self->next; n < limit && s < end; s++) {
        if (is_held(self, s))
            n++;
        else if (s > self->covered)
            break;
    }
    return n;
}

int ac_seq_is_replaying(const ac_seq_t *self)
{
    return self->is_replaying;
}

int ac_seq_is_synced(const ac_seq_t *self)
{
    return self->is_synced;
}

void ac_seq_set_filtered(ac_seq_t *self, int is_filtered)
{
    self->is_filtered = is_filtered != 0;
}

void ac_seq_stats(const ac_seq_t *self, ac_seq_stats_t *out)
{
    *out = self->stats;
}
