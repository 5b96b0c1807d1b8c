// Linux calls that Swift's Glibc module leaves out, most because they need
// _GNU_SOURCE. Each returns what the call returns and leaves errno as the call set it.
#ifndef STRATA_SYSTEM_H
#define STRATA_SYSTEM_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "strata_socket.h"
#include "strata_uring.h"

/// Starts fetching the cache line at `address` (and the page walk to reach it) for a
/// read, without waiting for it.
static inline void strata_prefetch(const void *address) { __builtin_prefetch(address, 0, 3); }

/// accept4(SOCK_CLOEXEC) without the peer's address, and pipe2(O_CLOEXEC): descriptors
/// a program started meanwhile on another thread does not inherit.
int strata_accept_cloexec(int fd);
int strata_pipe_cloexec(int fds[2]);
/// fallocate(PUNCH_HOLE | KEEP_SIZE): deallocate a range; it then reads as zeros.
int strata_punch_hole(int fd, int64_t offset, int64_t length);
/// fallocate(ZERO_RANGE | KEEP_SIZE): zero a range and keep it allocated.
int strata_zero_range(int fd, int64_t offset, int64_t length);
/// lseek(SEEK_DATA) and lseek(SEEK_HOLE).
int64_t strata_seek_data(int fd, int64_t offset);
int64_t strata_seek_hole(int fd, int64_t offset);
/// pwritev2(RWF_DSYNC): a write that is durable when it returns (FUA).
ssize_t strata_pwritev_dsync(int fd, const struct iovec *iov, int count, int64_t offset);
/// Block devices: size in bytes, logical sector size, discard and zero-out.
int strata_block_size(int fd, uint64_t *bytes);
int strata_block_sector_size(int fd, int *bytes);
int strata_block_discard(int fd, uint64_t offset, uint64_t length);
int strata_block_zeroout(int fd, uint64_t offset, uint64_t length);

/// fcntl(F_OFD_SETLK) over the whole file: a write (exclusive) lock if `exclusive`, else a
/// read (shared) lock, held by the open file description until its last descriptor
/// closes. Fails with EAGAIN (or EACCES) when another open file description holds a
/// conflicting lock; never waits.
int strata_lock_whole_file(int fd, int exclusive);

/// Turns O_DIRECT on (or off) for an open descriptor (fcntl F_SETFL), so its reads and
/// writes bypass the page cache. Fails with EINVAL where the file system cannot.
int strata_set_direct(int fd, int on);
/// statx(STATX_DIOALIGN): the alignment direct I/O needs of a buffer's address
/// (`memory`) and of a file offset and length (`offset`). Returns 1 when the kernel
/// reported them (both 0: the file does not support direct I/O), 0 when it did not
/// (an older kernel or a file system that does not say), -1 with errno on failure.
int strata_direct_alignment(int fd, uint32_t *memory, uint32_t *offset);
/// Finds the offset alignment by trying reads on a descriptor opened O_DIRECT, where
/// statx does not say: the smallest power-of-two length at offset 0 the kernel takes.
/// The memory alignment is given as the same (a read of a hole checks no address, so it
/// cannot be found by reading). Returns 0, or -1 with errno when no read up to 64 KiB
/// works.
int strata_probe_direct_alignment(int fd, uint32_t *memory, uint32_t *offset);

/// fstatfs(fd).f_type: the file system's magic number (TMPFS_MAGIC, ...), or -1.
int64_t strata_file_system_type(int fd);

/// mallopt(M_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD): fixed thresholds, so that
/// allocations below `mmap_threshold` come from the heap and freed memory below
/// `trim_threshold` at its top stays there. Returns 0 if either call failed.
int strata_malloc_thresholds(int mmap_threshold, int trim_threshold);

/// memcpy with streaming (non-temporal) stores where the processor has them (x86-64),
/// memcpy elsewhere: the copy goes to memory without first reading each destination
/// line into the cache, for large copies whose destination is not read again soon.
/// Ordered before the caller's later stores, like memcpy.
void strata_copy_streaming(void *destination, const void *source, size_t count);

/// Sleeps for `nanoseconds` on the monotonic clock. The first call on a thread sets its
/// timer slack to 1 ns (PR_SET_TIMERSLACK): with the default 50 µs, a sleep of a few
/// tens of microseconds lasts up to 50 µs longer. The slack stays for the thread's
/// other timers too, such as its epoll_wait time-outs.
void strata_nap(uint64_t nanoseconds);

#endif
