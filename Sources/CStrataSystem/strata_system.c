#define _GNU_SOURCE
#include "strata_system.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <malloc.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <errno.h>
#include <sys/prctl.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

int strata_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int strata_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int strata_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int strata_zero_range(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int strata_lock_whole_file(int fd, int exclusive) {
    struct flock lock = {0};
    lock.l_type = exclusive ? F_WRLCK : F_RDLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = 0;
    lock.l_len = 0;
    return fcntl(fd, F_OFD_SETLK, &lock);
}

int strata_set_direct(int fd, int on) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, on ? (flags | O_DIRECT) : (flags & ~O_DIRECT));
}

int strata_direct_alignment(int fd, uint32_t *memory, uint32_t *offset) {
    struct statx status;
    memset(&status, 0, sizeof status);
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &status) != 0) return -1;
    if (!(status.stx_mask & STATX_DIOALIGN)) return 0;
    *memory = status.stx_dio_mem_align;
    *offset = status.stx_dio_offset_align;
    return 1;
}

int strata_probe_direct_alignment(int fd, uint32_t *memory, uint32_t *offset) {
    enum { largest = 65536 };
    // Twice the largest, so that the buffer can start at any alignment up to it.
    char *buffer = aligned_alloc(largest, 2 * largest);
    if (!buffer) return -1;
    uint32_t length = 0;
    for (uint32_t tried = 512; tried <= largest; tried *= 2) {
        ssize_t count = pread(fd, buffer, tried, 0);
        if (count >= 0) {
            length = tried;
            break;
        }
        if (errno != EINVAL) break;
    }
    if (length == 0) {
        if (errno == 0) errno = EINVAL;
        int saved = errno;
        free(buffer);
        errno = saved;
        return -1;
    }
    free(buffer);
    // A read of a hole checks no buffer's address, so the memory's alignment cannot be
    // found by reading a file that may have holes: take the offset's, which every
    // kernel accepts (before 6.0 it required exactly that).
    *memory = length;
    *offset = length;
    return 0;
}

int64_t strata_seek_data(int fd, int64_t offset) { return lseek(fd, offset, SEEK_DATA); }
int64_t strata_seek_hole(int fd, int64_t offset) { return lseek(fd, offset, SEEK_HOLE); }

ssize_t strata_pwritev_dsync(int fd, const struct iovec *iov, int count, int64_t offset) {
    return pwritev2(fd, iov, count, offset, RWF_DSYNC);
}

int strata_block_size(int fd, uint64_t *bytes) { return ioctl(fd, BLKGETSIZE64, bytes); }
int strata_block_sector_size(int fd, int *bytes) { return ioctl(fd, BLKSSZGET, bytes); }

int strata_block_discard(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = { offset, length };
    return ioctl(fd, BLKDISCARD, range);
}

int strata_block_zeroout(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = { offset, length };
    return ioctl(fd, BLKZEROOUT, range);
}

int strata_malloc_thresholds(int mmap_threshold, int trim_threshold) {
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) && mallopt(M_TRIM_THRESHOLD, trim_threshold);
}

int64_t strata_file_system_type(int fd) {
    struct statfs status;
    return fstatfs(fd, &status) == 0 ? (int64_t)status.f_type : -1;
}

void strata_copy_streaming(void *destination, const void *source, size_t count) {
#if defined(__x86_64__)
    // SSE2 is part of x86-64, so no processor check is needed.
    char *to = destination;
    const char *from = source;
    size_t head = (16 - ((uintptr_t)to & 15)) & 15;
    if (head > count) head = count;
    memcpy(to, from, head);
    to += head;
    from += head;
    count -= head;
    for (; count >= 64; count -= 64, to += 64, from += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)from);
        __m128i b = _mm_loadu_si128((const __m128i *)(from + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(from + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(from + 48));
        _mm_stream_si128((__m128i *)to, a);
        _mm_stream_si128((__m128i *)(to + 16), b);
        _mm_stream_si128((__m128i *)(to + 32), c);
        _mm_stream_si128((__m128i *)(to + 48), d);
    }
    memcpy(to, from, count);
    // Streaming stores are weakly ordered: fence them before whatever the caller
    // stores next (the request's completion), so that a reader told of it sees them.
    _mm_sfence();
#else
    memcpy(destination, source, count);
#endif
}

void strata_nap(uint64_t nanoseconds) {
    static __thread int slack_set;
    if (!slack_set) {
        prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
        slack_set = 1;
    }
    struct timespec duration = {.tv_sec = (time_t)(nanoseconds / 1000000000u), .tv_nsec = (long)(nanoseconds % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &duration, &duration) == EINTR) {}
}
