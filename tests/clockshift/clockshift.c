/* clockshift: preloaded into a process (LD_PRELOAD), shifts its wall clock by the seconds written
 * in the file $CLOCKSHIFT_FILE ("+60", "-60"), read again at every call through a shared mapping,
 * so a test can step the clock of a running redis-server. Monotonic clocks are left alone.
 *
 * Why not libfaketime: it cannot start under jemalloc, which Debian's redis-server is linked with
 * (jemalloc's start-up calls clock_gettime, libfaketime's start-up allocates: libfaketime #130).
 * Here nothing allocates: the clocks come from the system calls, the offset from the mapping.
 * The test rewrites the file in place (never truncated: the mapping must keep a page behind it).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const volatile char *shift_map;

static long shift(void) {
    if (shift_map == NULL) {
        const char *path = getenv("CLOCKSHIFT_FILE");
        if (path == NULL) return 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return 0;
        void *map = mmap(NULL, 64, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (map == MAP_FAILED) return 0;
        shift_map = map;
    }
    char text[32];
    for (int i = 0; i < 31; i++) text[i] = shift_map[i];
    text[31] = '\0';
    return strtol(text, NULL, 10);
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int result = (int)syscall(SYS_clock_gettime, clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) ts->tv_sec += shift();
    return result;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int result = clock_gettime(CLOCK_REALTIME, &ts);
    if (result == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return result;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}
