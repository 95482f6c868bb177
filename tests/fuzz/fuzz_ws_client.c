/* libFuzzer target: the client's frame parser on server bytes (unmasked),
 * whole versus chunked, plus writer round trips. See ws_fuzz.h. */
#include "ws_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return wf_main(false, data, size);
}
