// Unix-socket calls for the listeners, the control socket's access check and the
// service manager's protocol: struct ucred, SO_PEERGROUPS and abstract socket names
// are out of reach of Swift's Glibc module, or awkward in it.
#ifndef STRATA_SOCKET_H
#define STRATA_SOCKET_H

#include <stdint.h>

/// The user, group and process at the other end of a connected Unix socket, as they
/// were when it connected (SO_PEERCRED). Returns 0, or -1 with errno.
int strata_peer_credentials(int fd, uint32_t *uid, uint32_t *gid, int32_t *pid);

/// Whether the process at the other end of a connected Unix socket had `gid` as its
/// group or one of its supplementary groups when it connected (SO_PEERCRED,
/// SO_PEERGROUPS). Returns 1 or 0, or -1 with errno.
int strata_peer_in_group(int fd, uint32_t gid);

/// Connects to the Unix socket at `path` without blocking, and closes the connection
/// at once. Returns 0 when a process listens there (the connection was made, or its
/// queue is full), else -1 with errno: ECONNREFUSED when the file is a socket nobody
/// listens on, ENOENT, EACCES, ...
int strata_unix_probe(const char *path);

/// A listening stream socket's address family (AF_UNIX, AF_INET, AF_INET6), for a
/// socket handed over by a service manager. Returns -1 with errno ENOTSOCK for a
/// descriptor that is not a socket, EINVAL for one that is not a listening stream
/// socket, EBADF for one that is not open.
int strata_listening_family(int fd);

/// Sends `message` as one datagram to the service manager's notification socket
/// (`NOTIFY_SOCKET`): a file's path, or an abstract name when `path` starts with '@'.
/// Returns 0, or -1 with errno.
int strata_notify(const char *path, const char *message);

#endif
