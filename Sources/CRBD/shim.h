// librados and librbd's C interfaces (Debian: librbd-dev).
#include <rados/librados.h>
#include <rbd/librbd.h>
