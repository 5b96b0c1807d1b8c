#include "strata_thread_state.h"

__thread void *strata_thread_state_pointer = 0;
