/* ac_sequencer.h — the decisions of the consumer pattern for one source's stream, without
 * sockets, clocks or a database: which event comes next, which is a duplicate, which
 * must wait, and when (and which range) to replay. common/consumer.c drives one per
 * source; the unit test drives it directly.
 *
 * Sequences are per source, gap-free from 1. The sequencer holds the events that arrived
 * ahead of `next` in a window of `window` slots (a ring indexed by sequence): an event
 * beyond next + window - 1 is dropped (it is fetched again by a later replay: a refused
 * sequence is never passed over as filtered, the covered mark goes below it), an event
 * below next or already held is a duplicate. Events leave in sequence order through
 * ac_seq_pop().
 *
 * A replay covers a range: ReplayEnd says every sequence up to its last_sequence was sent
 * or left out by a topic filter. So after a replay ended, an empty slot at or below that
 * mark (`covered`) is a filtered event and is skipped, never waited for. A drop inside
 * the replay's range while it runs lowers what its end may claim.
 *
 * Replays, in order: the first one (after a position is set and before ac_seq_mark_synced)
 * asks for [next, latest-at-the-bus] (to 0); afterwards one is wanted when an event is
 * known to exist (a live event, a heartbeat's last_sequence) that is not held: from the
 * first missing sequence up to the one before the next held event (or up to the latest
 * known, when the stream is filtered by topic and holes are expected). A catch-up (asked
 * for when the bus has been silent, heartbeats included) replays from the first missing
 * sequence up to whatever the bus has. At most one replay runs at a time.
 *
 * Owns: the window and the items in it (freed with free_item). */
#ifndef AC_SEQUENCER_H
#define AC_SEQUENCER_H

#include <stddef.h>
#include <stdint.h>

#include "ac_err.h"

typedef struct ac_seq ac_seq_t;
typedef void (*ac_seq_free_fn)(void *item);

typedef enum {
    AC_SEQ_BUFFERED,  /* taken: it comes out of ac_seq_pop() in its turn */
    AC_SEQ_DUPLICATE, /* below next or already held: not taken */
    AC_SEQ_DROPPED,   /* beyond the window: not taken; a later replay fetches it */
} ac_seq_offer_t;

typedef struct ac_seq_stats {
    uint64_t duplicates; /* offers refused as duplicates */
    uint64_t dropped;    /* offers refused for want of room */
    uint64_t skipped;    /* sequences passed over as filtered (covered, never delivered) */
    uint64_t evicted;    /* held items thrown away by ac_seq_reset() */
} ac_seq_stats_t;

/* window is rounded up to a power of two (at least 16). next starts at 1. NULL on OOM. */
ac_seq_t *ac_seq_new(size_t window, ac_seq_free_fn free_item);
void ac_seq_destroy(ac_seq_t **self_p);

/* Sets the next sequence to hand out (a checkpoint + 1, a start position, the oldest
 * sequence after PRUNED). Held items below it are freed; moving back frees the items that
 * no longer fit the window, and what lies between is fetched again by replay. */
void ac_seq_reset(ac_seq_t *self, uint64_t next);
/* Moves back to next to offer again the items handed out since (a failed transaction):
 * unlike ac_seq_reset(), what replays said was filtered stays known as filtered. */
void ac_seq_rewind(ac_seq_t *self, uint64_t next);
/* The initial replay is not needed (a position taken from the live stream). */
void ac_seq_mark_synced(ac_seq_t *self);

/* Offers the event `sequence` (>= 1); the item is taken only on AC_SEQ_BUFFERED. */
ac_seq_offer_t ac_seq_offer(ac_seq_t *self, uint64_t sequence, void *item);
/* A heartbeat (or anything else) says `sequence` exists at the bus. */
void ac_seq_note_latest(ac_seq_t *self, uint64_t sequence);
/* The next event in order (the caller owns it), or NULL when it has not arrived. Filtered
 * sequences below the covered mark are passed over on the way. */
void *ac_seq_pop(ac_seq_t *self, uint64_t *sequence_out);
/* Passes over the filtered sequences from next on (covered, not held) up to the first
 * held one or covered + 1, at a cost bounded by the window (O(1) when nothing is held).
 * Returns how many were passed over. ac_seq_pop() does this first. */
uint64_t ac_seq_skip_filtered(ac_seq_t *self);

typedef enum {
    AC_SEQ_REPLAY_NONE = 0, /* nothing to ask for now (or a replay is running) */
    AC_SEQ_REPLAY_INITIAL,  /* the first one, from the position on */
    AC_SEQ_REPLAY_GAP,      /* events known to exist are missing */
    AC_SEQ_REPLAY_CATCHUP,  /* ac_seq_request_catchup() */
} ac_seq_replay_t;

/* Whether a replay should start now, and the range to ask for (to 0 = up to the latest). */
ac_seq_replay_t ac_seq_want_replay(const ac_seq_t *self, uint64_t *from_out, uint64_t *to_out);
/* Nothing was heard for a while (not even a heartbeat): the next replay wanted asks the bus
 * for everything after what is held, up to its latest. Cleared by ac_seq_replay_begin(). */
void ac_seq_request_catchup(ac_seq_t *self);
void ac_seq_replay_begin(ac_seq_t *self, uint64_t from, uint64_t to);
/* ReplayEnd: every sequence up to last was sent (and offered) or filtered. */
void ac_seq_replay_end(ac_seq_t *self, uint64_t last);
/* The replay failed or timed out (or brought something unusable): nothing is claimed;
 * another may start. */
void ac_seq_replay_abort(ac_seq_t *self);
/* The bus does not have what was thought to exist beyond `latest` (replays end there):
 * stop asking for it until something (a heartbeat, an event) says it exists again. */
void ac_seq_lower_latest(ac_seq_t *self, uint64_t latest);

/* Readers. */
uint64_t ac_seq_next(const ac_seq_t *self);
uint64_t ac_seq_latest(const ac_seq_t *self);  /* highest sequence known to exist; 0 none */
uint64_t ac_seq_covered(const ac_seq_t *self); /* every sequence <= it delivered or filtered */
size_t ac_seq_held(const ac_seq_t *self);      /* items in the window */
size_t ac_seq_window(const ac_seq_t *self);
/* Items ready to pop in a row from next (up to limit): what a consumer can apply now. */
size_t ac_seq_ready(const ac_seq_t *self, size_t limit);
int ac_seq_is_replaying(const ac_seq_t *self);
int ac_seq_is_synced(const ac_seq_t *self);
void ac_seq_set_filtered(ac_seq_t *self, int is_filtered);
void ac_seq_stats(const ac_seq_t *self, ac_seq_stats_t *out);

#endif
