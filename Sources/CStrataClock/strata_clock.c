#include "strata_clock.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

struct strata_clock_scale strata_clock_scale = {0, 0, 0, 0};

#if defined(__x86_64__)
/// The kernel's clock source: the counter is used only when the kernel itself keeps
/// time by it, having checked that it runs at a constant rate and agrees across CPUs.
static int kernel_keeps_time_by_counter(void) {
    int fd = open("/sys/devices/system/clocksource/clocksource0/current_clocksource", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char name[16] = {0};
    ssize_t count = read(fd, name, sizeof name - 1);
    close(fd);
    return count >= 3 && strncmp(name, "tsc", 3) == 0 && (count == 3 || name[3] == '\n');
}

/// A counter reading paired with the monotonic time, taken back to back; of a few
/// tries, the pair read in the shortest time, so the two are closest together.
static void paired_reading(uint64_t *ticks, uint64_t *nanoseconds) {
    uint64_t best = UINT64_MAX;
    for (int attempt = 0; attempt < 5; attempt++) {
        uint64_t before = __rdtsc();
        uint64_t now = strata_clock_monotonic();
        uint64_t after = __rdtsc();
        if (after - before < best) {
            best = after - before;
            *ticks = before + (after - before) / 2;
            *nanoseconds = now;
        }
    }
}

/// Measures the counter's rate against CLOCK_MONOTONIC over 2 ms when the process
/// starts (an error of a few parts per million).
__attribute__((constructor)) static void strata_clock_calibrate(void) {
    if (!kernel_keeps_time_by_counter()) return;
    uint64_t ticks0, nanoseconds0, ticks1, nanoseconds1;
    paired_reading(&ticks0, &nanoseconds0);
    struct timespec pause = {0, 2000000};
    while (nanosleep(&pause, &pause) != 0) {}
    paired_reading(&ticks1, &nanoseconds1);
    if (ticks1 <= ticks0 || nanoseconds1 <= nanoseconds0) return;
    unsigned __int128 scaled = (unsigned __int128)(nanoseconds1 - nanoseconds0) << 32;
    strata_clock_scale.nanoseconds_per_tick_q32 = (uint64_t)(scaled / (ticks1 - ticks0));
    strata_clock_scale.base_ticks = ticks1;
    strata_clock_scale.base_nanoseconds = nanoseconds1;
    strata_clock_scale.counter = 1;
}
#endif
