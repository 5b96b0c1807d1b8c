// A minimal io_uring: one submission and one completion ring, set up and driven by
// the raw system calls (no liburing, so the disks need the kernel's headers only).
//
// The caller serializes submissions (strata_uring_queue_* and strata_uring_submit)
// among themselves, and completions (strata_uring_reap) among themselves; the two
// sides may run at the same time on different threads.
#ifndef STRATA_URING_H
#define STRATA_URING_H

#include <stdint.h>

struct strata_uring {
    int fd;
    unsigned submission_entries;
    // Submission ring: the kernel consumes from head; we produce at tail.
    unsigned *submission_head;
    unsigned *submission_tail;
    unsigned submission_mask;
    unsigned *submission_array;
    void *submission_entries_memory;  // struct io_uring_sqe[submission_entries]
    // Entries queued since the last strata_uring_submit, not yet visible to the kernel.
    unsigned queued;
    // Completion ring: the kernel produces at tail; we consume from head.
    unsigned *completion_head;
    unsigned *completion_tail;
    unsigned completion_mask;
    void *completions;                // struct io_uring_cqe[], completion_mask + 1 of them
    // The mappings, for strata_uring_close.
    void *ring_memory;
    uint64_t ring_bytes;
    void *completion_memory;          // NULL when the kernel maps both rings at once
    uint64_t completion_bytes;
    uint64_t submission_entries_bytes;
};

/// One completion: the user data given when queueing, and the result (bytes moved,
/// or a negative errno).
struct strata_uring_completion {
    uint64_t user_data;
    int32_t result;
};

/// Sets up a ring of at least `entries` submission entries. Returns 0, or a negative
/// errno: -ENOSYS where the kernel has no io_uring, -EPERM where it is forbidden.
int strata_uring_open(struct strata_uring *ring, unsigned entries);
void strata_uring_close(struct strata_uring *ring);

/// Queues a read (`write` = 0) or write of `length` bytes at `offset` into/from
/// `buffer`; `dsync` makes a write durable when it completes (RWF_DSYNC).
/// Returns 0, or -EBUSY when the submission ring is full.
int strata_uring_queue_rw(struct strata_uring *ring, int write, int fd, void *buffer, uint32_t length,
                          uint64_t offset, int dsync, uint64_t user_data);
/// Queues an fdatasync of `fd`. Returns 0 or -EBUSY.
int strata_uring_queue_fdatasync(struct strata_uring *ring, int fd, uint64_t user_data);
/// Queues a no-op that completes with result 0 (to wake a waiting reaper).
int strata_uring_queue_nop(struct strata_uring *ring, uint64_t user_data);

/// Hands the queued entries to the kernel. Returns how many it took, or a negative errno.
int strata_uring_submit(struct strata_uring *ring);

/// Sleeps until at least one completion is ready, without taking it. Returns 0 or a
/// negative errno (-EINTR: call again).
int strata_uring_wait(struct strata_uring *ring);

/// Copies up to `capacity` ready completions into `into` and frees their ring slots.
/// Returns how many were copied; never waits.
unsigned strata_uring_reap(struct strata_uring *ring, struct strata_uring_completion *into, unsigned capacity);

#endif
