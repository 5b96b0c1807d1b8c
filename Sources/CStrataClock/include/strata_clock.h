// The I/O path's clock: nanoseconds on the monotonic clock, read from the CPU's
// time-stamp counter where the kernel keeps its own time by that counter.
//
// Every request is timed in and out of the providers it passes. clock_gettime costs
// about 33 ns on the machines Strata is measured on (the vDSO's sequence lock and an
// ordered counter read), a seventh of a request through three layers; reading the
// counter and scaling it costs a fraction of that. The scale is measured against
// CLOCK_MONOTONIC when the process starts, so readings are on the monotonic clock's
// time line to within parts per million; only differences between readings of this
// clock are used (latencies, busy time, rates), never comparisons with another clock.
#ifndef STRATA_CLOCK_H
#define STRATA_CLOCK_H

#include <stdint.h>
#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

struct strata_clock_scale {
    /// 1 when readings come from the time-stamp counter.
    int counter;
    /// A counter reading and the monotonic time it was taken at.
    uint64_t base_ticks;
    uint64_t base_nanoseconds;
    /// Nanoseconds per tick, times 2^32.
    uint64_t nanoseconds_per_tick_q32;
};

extern struct strata_clock_scale strata_clock_scale;

static inline uint64_t strata_clock_monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/// Nanoseconds on the monotonic clock.
static inline uint64_t strata_clock_nanoseconds(void) {
#if defined(__x86_64__)
    if (strata_clock_scale.counter) {
        uint64_t ticks = __rdtsc() - strata_clock_scale.base_ticks;
        unsigned __int128 scaled = (unsigned __int128)ticks * strata_clock_scale.nanoseconds_per_tick_q32;
        return strata_clock_scale.base_nanoseconds + (uint64_t)(scaled >> 32);
    }
#endif
    return strata_clock_monotonic();
}

#endif
