#define _GNU_SOURCE
#include "strata_uring.h"

#include <errno.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

// The rings are shared with the kernel: the side that produces publishes its tail with
// release order after filling entries; the side that consumes reads that tail with
// acquire order before reading entries, and publishes its head with release order after.
static unsigned load_acquire(const unsigned *where) { return __atomic_load_n(where, __ATOMIC_ACQUIRE); }
static void store_release(unsigned *where, unsigned value) { __atomic_store_n(where, value, __ATOMIC_RELEASE); }

static int enter(int fd, unsigned submit, unsigned wait_for, unsigned flags) {
    long result = syscall(__NR_io_uring_enter, fd, submit, wait_for, flags, NULL, 0);
    return result < 0 ? -errno : (int)result;
}

int strata_uring_open(struct strata_uring *ring, unsigned entries) {
    memset(ring, 0, sizeof *ring);
    ring->fd = -1;
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    long fd = syscall(__NR_io_uring_setup, entries, &params);
    if (fd < 0) return -errno;
    ring->fd = (int)fd;
    // Without NODROP (before 5.5) a full completion ring loses completions: a request
    // would never finish. Refuse such a kernel; the caller falls back to threads.
    if (!(params.features & IORING_FEAT_NODROP)) {
        close(ring->fd);
        return -ENOSYS;
    }
    ring->submission_entries = params.sq_entries;

    uint64_t submission_bytes = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    uint64_t completion_bytes = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
    int single = (params.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && completion_bytes > submission_bytes) submission_bytes = completion_bytes;

    void *submission = mmap(NULL, submission_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                            ring->fd, IORING_OFF_SQ_RING);
    if (submission == MAP_FAILED) goto failed;
    ring->ring_memory = submission;
    ring->ring_bytes = submission_bytes;
    void *completion = submission;
    if (!single) {
        completion = mmap(NULL, completion_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                          ring->fd, IORING_OFF_CQ_RING);
        if (completion == MAP_FAILED) goto failed;
        ring->completion_memory = completion;
        ring->completion_bytes = completion_bytes;
    }
    ring->submission_entries_bytes = params.sq_entries * sizeof(struct io_uring_sqe);
    void *sqes = mmap(NULL, ring->submission_entries_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      ring->fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) goto failed;
    ring->submission_entries_memory = sqes;

    char *sq = submission;
    ring->submission_head = (unsigned *)(sq + params.sq_off.head);
    ring->submission_tail = (unsigned *)(sq + params.sq_off.tail);
    ring->submission_mask = *(unsigned *)(sq + params.sq_off.ring_mask);
    ring->submission_array = (unsigned *)(sq + params.sq_off.array);
    char *cq = completion;
    ring->completion_head = (unsigned *)(cq + params.cq_off.head);
    ring->completion_tail = (unsigned *)(cq + params.cq_off.tail);
    ring->completion_mask = *(unsigned *)(cq + params.cq_off.ring_mask);
    ring->completions = cq + params.cq_off.cqes;
    return 0;

failed:;
    int error = -errno;
    strata_uring_close(ring);
    return error;
}

void strata_uring_close(struct strata_uring *ring) {
    if (ring->submission_entries_memory) munmap(ring->submission_entries_memory, ring->submission_entries_bytes);
    if (ring->completion_memory) munmap(ring->completion_memory, ring->completion_bytes);
    if (ring->ring_memory) munmap(ring->ring_memory, ring->ring_bytes);
    if (ring->fd >= 0) close(ring->fd);
    memset(ring, 0, sizeof *ring);
    ring->fd = -1;
}

/// The next free submission entry, zeroed, or NULL when the ring is full.
static struct io_uring_sqe *next_entry(struct strata_uring *ring) {
    unsigned tail = *ring->submission_tail + ring->queued;
    if (tail - load_acquire(ring->submission_head) >= ring->submission_entries) return NULL;
    unsigned index = tail & ring->submission_mask;
    struct io_uring_sqe *entry = (struct io_uring_sqe *)ring->submission_entries_memory + index;
    memset(entry, 0, sizeof *entry);
    ring->submission_array[index] = index;
    ring->queued += 1;
    return entry;
}

int strata_uring_queue_rw(struct strata_uring *ring, int write, int fd, void *buffer, uint32_t length,
                          uint64_t offset, int dsync, uint64_t user_data) {
    struct io_uring_sqe *entry = next_entry(ring);
    if (!entry) return -EBUSY;
    entry->opcode = write ? IORING_OP_WRITE : IORING_OP_READ;
    entry->fd = fd;
    entry->addr = (uint64_t)(uintptr_t)buffer;
    entry->len = length;
    entry->off = offset;
    entry->rw_flags = dsync ? RWF_DSYNC : 0;
    entry->user_data = user_data;
    return 0;
}

int strata_uring_queue_fdatasync(struct strata_uring *ring, int fd, uint64_t user_data) {
    struct io_uring_sqe *entry = next_entry(ring);
    if (!entry) return -EBUSY;
    entry->opcode = IORING_OP_FSYNC;
    entry->fd = fd;
    entry->fsync_flags = IORING_FSYNC_DATASYNC;
    entry->user_data = user_data;
    return 0;
}

int strata_uring_queue_nop(struct strata_uring *ring, uint64_t user_data) {
    struct io_uring_sqe *entry = next_entry(ring);
    if (!entry) return -EBUSY;
    entry->opcode = IORING_OP_NOP;
    entry->user_data = user_data;
    return 0;
}

int strata_uring_submit(struct strata_uring *ring) {
    unsigned tail = *ring->submission_tail + ring->queued;
    store_release(ring->submission_tail, tail);
    ring->queued = 0;
    // The kernel may take fewer than offered (it stops after an entry it cannot even
    // prepare, which still completes with its error): offer the rest until none is left.
    int taken = 0;
    unsigned pending;
    while ((pending = tail - load_acquire(ring->submission_head)) > 0) {
        int result = enter(ring->fd, pending, 0, 0);
        if (result == -EINTR) continue;
        if (result == -EAGAIN) {
            // Short of memory for a moment: let others run, then offer again.
            sched_yield();
            continue;
        }
        if (result < 0) return result;
        if (result == 0) break;
        taken += result;
    }
    return taken;
}

int strata_uring_wait(struct strata_uring *ring) {
    if (load_acquire(ring->completion_head) != load_acquire(ring->completion_tail)) return 0;
    int result = enter(ring->fd, 0, 1, IORING_ENTER_GETEVENTS);
    return result < 0 ? result : 0;
}

unsigned strata_uring_reap(struct strata_uring *ring, struct strata_uring_completion *into, unsigned capacity) {
    unsigned head = *ring->completion_head;
    unsigned tail = load_acquire(ring->completion_tail);
    unsigned copied = 0;
    const struct io_uring_cqe *completions = ring->completions;
    while (head != tail && copied < capacity) {
        const struct io_uring_cqe *completion = &completions[head & ring->completion_mask];
        into[copied].user_data = completion->user_data;
        into[copied].result = completion->res;
        copied += 1;
        head += 1;
    }
    store_release(ring->completion_head, head);
    return copied;
}
