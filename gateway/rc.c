/* The outcomes of the gateway's internals (gw_rc, gateway.h) and the one
 * mapping from an outcome to the HTTP status a client is answered with. */
#include "config.h"

#include "gateway.h"

int gw_rc_status(gw_rc rc)
{
    static const struct {
        gw_rc rc;
        int status;
    } map[] = {
        {GW_OK, 200},          {GW_REFUSED, 400},  {GW_UNAVAILABLE, 503},
        {GW_NOMEM, 500},       {GW_INTERNAL, 500}, {GW_TIMEOUT, 504},
        {GW_BAD_GATEWAY, 502},
    };

    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (map[i].rc == rc)
            return map[i].status;
    return 500;
}
