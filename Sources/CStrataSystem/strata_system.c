#define _GNU_SOURCE
#include "strata_system.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <malloc.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <unistd.h>

int strata_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int strata_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int strata_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

int strata_zero_range(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
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
