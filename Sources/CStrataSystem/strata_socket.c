#define _GNU_SOURCE
#include "strata_socket.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

int strata_peer_credentials(int fd, uint32_t *uid, uint32_t *gid, int32_t *pid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *uid = credentials.uid;
    *gid = credentials.gid;
    *pid = credentials.pid;
    return 0;
}

int strata_peer_in_group(int fd, uint32_t gid) {
    uint32_t uid, primary;
    int32_t pid;
    if (strata_peer_credentials(fd, &uid, &primary, &pid) != 0) return -1;
    if (primary == gid) return 1;
    // The kernel says how many groups there are when the buffer is too small (ERANGE);
    // a process has at most NGROUPS_MAX (65536) of them.
    socklen_t length = 64 * sizeof(gid_t);
    for (int attempt = 0; attempt < 2; attempt++) {
        gid_t *groups = malloc(length ? length : sizeof(gid_t));
        if (groups == NULL) return -1;
        socklen_t got = length;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &got) == 0) {
            int found = 0;
            for (size_t index = 0; index < got / sizeof(gid_t); index++) {
                if (groups[index] == gid) found = 1;
            }
            free(groups);
            return found;
        }
        int error = errno;
        free(groups);
        if (error != ERANGE) {
            errno = error;
            return -1;
        }
        length = got;
    }
    errno = ERANGE;
    return -1;
}

/// Fills `address` for `path`; returns its length, or 0 (errno ENAMETOOLONG) when the
/// path does not fit. With `abstract`, a leading '@' names an abstract socket (the
/// service manager's convention): a 0 byte instead, and the length counts no more.
static socklen_t unix_address(const char *path, struct sockaddr_un *address, int abstract) {
    size_t length = strlen(path);
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    if (length == 0 || length >= sizeof address->sun_path) {
        errno = ENAMETOOLONG;
        return 0;
    }
    memcpy(address->sun_path, path, length);
    if (abstract && path[0] == '@') {
        address->sun_path[0] = 0;
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length);
    }
    return (socklen_t)sizeof *address;
}

int strata_unix_probe(const char *path) {
    struct sockaddr_un address;
    socklen_t length = unix_address(path, &address, 0);
    if (length == 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int result = connect(fd, (struct sockaddr *)&address, length);
    int error = errno;
    close(fd);
    // A full queue (EAGAIN) means a process listens and has not caught up.
    if (result == 0 || error == EAGAIN || error == EINPROGRESS) return 0;
    errno = error;
    return -1;
}

int strata_listening_family(int fd) {
    int type = 0, listening = 0, family = 0;
    socklen_t length = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) != 0) return -1;
    length = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0) return -1;
    length = sizeof family;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &length) != 0) return -1;
    if (type != SOCK_STREAM || !listening) {
        errno = EINVAL;
        return -1;
    }
    return family;
}

int strata_notify(const char *path, const char *message) {
    struct sockaddr_un address;
    socklen_t length = unix_address(path, &address, 1);
    if (length == 0) return -1;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    ssize_t sent = sendto(fd, message, strlen(message), MSG_NOSIGNAL, (struct sockaddr *)&address, length);
    int error = errno;
    close(fd);
    if (sent < 0) {
        errno = error;
        return -1;
    }
    return 0;
}
