/* A slow disk for tests and bench/flush_stall.py, without device-mapper:
 * LD_PRELOAD this into a process and every fsync/fdatasync sleeps
 * SLOW_SYNC_MS milliseconds before doing the real sync. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void nap(void) {
    const char *e = getenv("SLOW_SYNC_MS");
    long ms = e ? atol(e) : 0;
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, 0);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    nap();
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    nap();
    return real(fd);
}
