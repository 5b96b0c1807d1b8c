// The calling thread's I/O-path state (Strata's ThreadState) in a C thread-local.
// Reading it is one load relative to the thread pointer, where pthread_getspecific is
// a call; the I/O path looks it up several times per request and layer.
#ifndef STRATA_THREAD_STATE_H
#define STRATA_THREAD_STATE_H

extern __thread void *strata_thread_state_pointer;

/// The calling thread's state, or NULL before its first use.
static inline void *strata_thread_state(void) { return strata_thread_state_pointer; }

/// Sets the calling thread's state (NULL when the thread exits).
static inline void strata_set_thread_state(void *state) { strata_thread_state_pointer = state; }

#endif
