/* The PostgreSQL backend: being written (issue 14). Until it lands,
 * opening one is refused with a clear error. */
#include "services/store/mstore_backend.h"

#include "base/log.h"
#include "parley/parley.h"

int mstore_pg_open(const char *url, const mstore_open_opts *o, mstore **out)
{
    (void)o;
    *out = NULL;
    plog_error("store: %s: this build has no PostgreSQL backend yet", url);
    return PARLEY_EINVAL;
}
