import Glibc
import StrataFuzz

// The NBD client fuzz target (NBDFuzzTarget.client): a libFuzzer binary when built with
// the fuzzer flags, an input replayer otherwise (FuzzMain).
exit(FuzzMain.main(.client))
